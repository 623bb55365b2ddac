"""Pydantic models of every stage config and artifact manifest (imports nothing else of hebmctl)."""

from hebmctl.schemas.common import SCHEMA_VERSION, InputRef, ManifestBase, OutputFile, StageConfig, TensorInfo
from hebmctl.schemas.eval import (
    EvalAnomalyConfig,
    EvalAnomalyManifest,
    EvalDisentanglementConfig,
    EvalDisentanglementManifest,
    EvalFidConfig,
    EvalFidManifest,
    EvalOodConfig,
    EvalOodManifest,
    EvalProbeConfig,
    EvalProbeManifest,
    EvalReconConfig,
    EvalReconManifest,
    FidStatsManifest,
)
from hebmctl.schemas.latents import CacheLatentsConfig, LatentsManifest
from hebmctl.schemas.pretrain import BackboneManifest, PretrainConfig
from hebmctl.schemas.prior import PriorManifest, TrainPriorConfig
from hebmctl.schemas.report import ReportConfig
from hebmctl.schemas.sample import SampleConfig, SamplesManifest

MANIFEST_TYPES: dict[str, type[ManifestBase]] = {
    "backbone": BackboneManifest,
    "latents": LatentsManifest,
    "prior": PriorManifest,
    "samples": SamplesManifest,
    "fid-stats": FidStatsManifest,
    "eval-fid": EvalFidManifest,
    "eval-recon": EvalReconManifest,
    "eval-ood": EvalOodManifest,
    "eval-anomaly": EvalAnomalyManifest,
    "eval-probe": EvalProbeManifest,
    "eval-disentanglement": EvalDisentanglementManifest,
}
"""Artifact kind -> manifest model (used by `hebmctl inspect` and the JSON Schema export)."""

CONFIG_TYPES: dict[str, type[StageConfig]] = {
    "pretrain": PretrainConfig,
    "cache_latents": CacheLatentsConfig,
    "train_prior": TrainPriorConfig,
    "sample": SampleConfig,
    "eval_fid": EvalFidConfig,
    "eval_recon": EvalReconConfig,
    "eval_ood": EvalOodConfig,
    "eval_anomaly": EvalAnomalyConfig,
    "eval_probe": EvalProbeConfig,
    "eval_disentanglement": EvalDisentanglementConfig,
}
"""Config table name (pipeline / --config file) -> stage config model."""


def json_schemas() -> dict[str, dict]:
    """File name -> JSON Schema of every manifest and config, as written to the top-level `schemas/`."""
    out = {f"manifest.{kind}.schema.json": model.model_json_schema() for kind, model in MANIFEST_TYPES.items()}
    out |= {f"config.{name}.schema.json": model.model_json_schema() for name, model in CONFIG_TYPES.items()}
    out["config.report.schema.json"] = ReportConfig.model_json_schema()  # not a stage of the pipeline: no table, no artifact
    return out


__all__ = [
    "SCHEMA_VERSION", "InputRef", "ManifestBase", "OutputFile", "StageConfig", "TensorInfo",
    "CacheLatentsConfig", "LatentsManifest", "BackboneManifest", "PretrainConfig",
    "PriorManifest", "TrainPriorConfig", "ReportConfig", "SampleConfig", "SamplesManifest",
    "EvalFidConfig", "EvalReconConfig", "EvalOodConfig", "EvalAnomalyConfig", "EvalProbeConfig", "EvalDisentanglementConfig",
    "FidStatsManifest", "EvalFidManifest", "EvalReconManifest", "EvalOodManifest", "EvalAnomalyManifest", "EvalProbeManifest",
    "EvalDisentanglementManifest", "MANIFEST_TYPES", "CONFIG_TYPES", "json_schemas",
]
