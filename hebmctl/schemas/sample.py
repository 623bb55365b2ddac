"""Config of `hebmctl sample` and the manifest of a samples artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from hebmctl.schemas.common import ManifestBase, StageConfig, prior_folder, split_csv


class SampleConfig(StageConfig):
    """Generate images from the backbone with the Gaussian prior or a trained EBM prior."""

    run_defaults: ClassVar[dict[str, str]] = {"backbone": "backbone", "out": "samples/{prior.name}"}
    # the prior is an input (hashed by its manifest)
    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device", "compile", "out", "prior"})
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"traverse", "traverse_dims"})
    """Added with latent traversals: hashed only when set, so earlier samples keep their fingerprints."""

    backbone: Path = Field(None, description="Backbone folder (default: RUN/backbone).")
    prior: str = Field("gaussian", description="'gaussian' (the backbone alone), a prior folder, or a prior name under RUN/priors/.")
    out: Path = Field(None, description="Samples folder to write (default: RUN/samples/<prior name>).")
    n: int = Field(64, ge=1, description="Number of images.")
    temperature: float = Field(1.0, gt=0, description="tau: u_0 is scaled by tau before z = T(tau * u_0); 1 samples the prior itself, "
                                                      "below 1 trades diversity for quality.")
    langevin_steps: int | None = Field(None, ge=0, description="K per level (default: the prior's training K).")
    step_size: float | None = Field(None, gt=0, description="Joint scheme: the Langevin step size s (default: the prior's training value).")
    step_scale: float | None = Field(None, gt=0, description="Diffusion scheme: multiply every step s_t by this (default: sqrt(K_train / "
                                                             "K), CDRL's fewer-steps adjustment; 1 at the training K).")
    hierarchical: bool = Field(False, description="Also write one grid per layer: that layer resampled, the others fixed (Hier-EBM Fig. "
                                                  "4-6).")
    trajectory: bool = Field(False, description="Also write the images along the chain at every level and the energy profile of "
                                                "a long run.")
    traverse: tuple[int, ...] | None = Field(None, description="Also write traverse_zI.png for each listed layer I (1 = bottom, "
        "comma-separated): the first sample with one u-coordinate of layer I swept over -3..3 (its prior std units) per row, every "
        "other coordinate fixed (Hier-EBM Fig. 11). Rows: the layer's coordinates that change the image most.")
    traverse_dims: int | None = Field(None, ge=1, description="Rows per traversal grid: the coordinates of the layer with the largest "
                                                              "image change over the sweep (default 10).")
    trajectory_steps: int = Field(2500, ge=1, description="Length of the long run for the energy profile (--trajectory).")
    batch_size: int = Field(500, ge=1, description="Images per sampling batch.")
    seed: int = Field(0, description="Seed of the sampling noise.")
    device: str = Field("auto", description="Torch device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ...")
    compile: Literal["auto", "on", "off"] = Field("auto", description="Capture the Langevin step in a CUDA graph (replayed each "
        "step; the same numbers as the eager loop): 'auto' on CUDA only, 'on' (an error without CUDA), 'off' the eager loop.")

    _csv = field_validator("traverse", mode="before")(lambda cls, v: split_csv(v))

    @field_validator("traverse")
    @classmethod
    def _layers_from_one(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError("--traverse takes layer numbers from 1 (the bottom layer z1), comma-separated, e.g. 3 or 1,2,3")
        return value

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The samples folder is named after the prior: RUN/samples/gaussian, RUN/samples/<prior folder name>."""
        data["prior"] = str(data.get("prior") or "gaussian")
        return data

    def prior_dir(self) -> Path | None:
        """The prior folder, or None for the Gaussian prior. A bare name means RUN/priors/NAME."""
        return prior_folder(self.prior, self.run)


class SamplesManifest(ManifestBase):
    kind: Literal["samples"] = Field("samples", description="Artifact kind.")
    config: SampleConfig = Field(description="The resolved stage config.")
    prior_kind: Literal["gaussian", "joint", "diffusion", "cooperative"] = Field(description="Which prior generated the samples.")
    sampler: dict[str, Any] = Field(description="Every number the sampler used: K, step sizes, temperature, schedule, seed.")
