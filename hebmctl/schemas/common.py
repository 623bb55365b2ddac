"""Shared pydantic building blocks: the strict base model, stage configs, manifest parts.

This package imports nothing else of hebmctl (DESIGN §2), so other tools can load it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
"""Bumped whenever a manifest or config changes meaning; part of every stage's fingerprint."""

class StrictModel(BaseModel):
    """Frozen, no unknown keys: a typo in a config file is an error, not a silently ignored key."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def split_csv(value: Any) -> Any:
    """Accept "64,32,16" (the CLI's form) as well as a list for tuple-valued fields; "" is the empty tuple.

    An empty item ("8,,4", "8,4,") is an error, not silently dropped: it is usually a typo.
    """
    if isinstance(value, str):
        if not value.strip():
            return ()
        parts = [p.strip() for p in value.split(",")]
        if not all(parts):
            raise ValueError(f"has an empty item in {value!r}; write comma-separated values such as 64,32,16")
        return tuple(parts)
    return value


def absolute_data_spec(spec: Any) -> Any:
    """`kind:relative/path` -> `kind:/absolute/path`, so that later stages run from any folder find
    the data the manifest names (`builtin:` specs and non-strings pass through)."""
    if not isinstance(spec, str) or ":" not in spec or spec.startswith("builtin:"):
        return spec
    kind, path = spec.split(":", 1)
    if kind.strip().lower() == "pooled" and ":" in path:  # pooled:OPTIONS:BASE (hebmctl.data.protocols): the base's path
        options, base = path.split(":", 1)
        return f"{kind}:{options}:{absolute_data_spec(base)}"
    return f"{kind}:{Path(path).expanduser().absolute()}" if path else spec


def prior_folder(prior: str, run: Path, named_sources: tuple[str, ...] = ("gaussian",)) -> Path | None:
    """The folder a `--prior` value names, or None for a named source ('gaussian', ...): a path with a
    folder part (or absolute) is used as given, a bare name means RUN/priors/NAME."""
    if prior in named_sources:
        return None
    path = Path(prior)
    return path if (path.is_absolute() or len(path.parts) > 1) else run / "priors" / prior


class StageConfig(StrictModel):
    """Base of every stage config.

    `run_defaults` maps a path field to its location inside the run folder (`--run RUN`): a path
    left unset is filled from it when the config is built, so a resolved config always holds
    concrete paths. `unhashed` lists fields that do not change the result (paths, device) and are
    left out of the fingerprint that decides whether a stage is up to date. Non-finite numbers
    (nan, inf) are refused in every config.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # nan/inf settings are errors

    run_defaults: ClassVar[dict[str, str]] = {}
    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device"})
    hashed_when_set: ClassVar[frozenset[str]] = frozenset()
    """Optional fields added after artifacts were written: hashed only when not None, so that the
    fingerprints of earlier artifacts (which lack them) stay valid."""
    cli_flags: ClassVar[dict[str, str]] = {}
    """Field -> command-line flag where the flag is not the field's kebab-case name (e.g. `classes` -> `--class`)."""
    repeated_options: ClassVar[frozenset[str]] = frozenset()
    """Fields whose flag may be given several times, one value each."""
    hashed_as_default: ClassVar[frozenset[str]] = frozenset()
    """Fields that do not change the result but were once hashed: they enter the fingerprint at their
    default value, so that changing them neither re-runs the stage nor invalidates existing artifacts."""

    run: Path = Field(Path("runs/default"), description="Run folder that holds the default locations of all artifacts.")

    @model_validator(mode="before")
    @classmethod
    def _fill_run_paths(cls, data: Any) -> Any:
        """Derived defaults (`_derived_defaults`), then unset paths from `run_defaults`, whose
        entries may name other fields as `{field}` (string fields as paths: `{prior.name}`)."""
        if not isinstance(data, dict):
            return data
        data = cls._derived_defaults(dict(data))
        run = Path(data.get("run") or cls.model_fields["run"].default)
        context = {k: Path(v) if isinstance(v, str) else v for k, v in data.items()}
        for field, sub_path in cls.run_defaults.items():
            if data.get(field) is None:
                data[field] = run / sub_path.format(**context)
        return data

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Defaults that depend on other fields (e.g. K on the scheme); none by default."""
        return data

    def hashed_fields(self) -> dict[str, Any]:
        """The config values that determine the stage's result, as JSON-able data."""
        skip = set(self.unhashed) | set(self.run_defaults)
        values = self.model_dump(mode="json", exclude=skip)
        for name in self.hashed_as_default:
            values[name] = type(self).model_fields[name].default
        return {k: v for k, v in values.items() if not (k in self.hashed_when_set and v is None)}


class SubsetRecord(StrictModel):
    """Which rows of a split a limited input used: a seeded, class-stratified random subset (`hebmctl.data.subsets`)."""

    method: str = Field(description="Name of the drawing rule, e.g. 'stratified-random-v1'.")
    seed: int = Field(description="Seed of the draw.")
    n: int = Field(description="Number of rows chosen.")
    population: int = Field(description="Number of rows drawn from (the split after class exclusion).")
    class_counts: dict[str, int] = Field(description="Rows chosen per label id (-1: unknown label).")
    index_sha256: str = Field(description="sha256 of the chosen rows' positions in the split (little-endian int64, ascending).")


class InputRef(StrictModel):
    """A parent artifact or data set this artifact was made from."""

    role: str = Field(description="What the input is for this stage, e.g. 'backbone' or 'data:train'.")
    path: str = Field(description="Where it was read from (as given).")
    kind: str = Field(description="Artifact kind of the parent manifest, or 'data' for a data set.")
    sha256: str = Field(description="sha256 of the parent's manifest.json bytes, or the data set's content fingerprint.")
    subset: SubsetRecord | None = Field(None, description="For a data input limited to N rows: the subset drawn (None: every row, "
                                        "or an artifact written before subsets were recorded).")


class TensorInfo(StrictModel):
    shape: list[int] = Field(description="Tensor or dataset shape.")
    dtype: str = Field(description="Element type, e.g. 'float32'.")


class OutputFile(StrictModel):
    """One file the artifact consists of."""

    name: str = Field(description="Path relative to the artifact folder.")
    bytes: int = Field(description="File size in bytes.")
    sha256: str = Field(description="sha256 of the file's bytes.")
    tensors: dict[str, TensorInfo] = Field(default_factory=dict, description="Tensors (safetensors) or datasets (HDF5) inside the file.")


class ManifestBase(StrictModel):
    """Fields shared by every manifest. Subclasses fix `kind` and the type of `config`."""

    kind: str = Field(description="Artifact kind.")
    schema_version: int = Field(description="hebmctl schema version that wrote this manifest.")
    hebmctl_version: str = Field(description="hebmctl package version that wrote this manifest.")
    created_at: str = Field(description="UTC time the manifest was written, ISO 8601.")
    fingerprint: str = Field(description="sha256 of (hashed config values, input hashes, schema version): equal fingerprints mean an "
                                         "up-to-date artifact.")
    inputs: list[InputRef] = Field(description="Parent artifacts and data sets, with their hashes (lineage).")
    outputs: list[OutputFile] = Field(description="Files of this artifact, with sizes and hashes.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Measurements made by the stage.")
    status: Literal["complete"] = Field(description="Always 'complete': a manifest is written last, as the commit marker.")

    def input(self, role: str) -> InputRef:
        for ref in self.inputs:
            if ref.role == role:
                return ref
        raise KeyError(role)
