"""Config of `hebmctl sample` and the manifest of a samples artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hebmctl.schemas.common import ManifestBase, StageConfig, prior_folder, split_csv


class SampleConfig(StageConfig):
    """Generate images from the backbone with the Gaussian prior or a trained EBM prior."""

    run_defaults: ClassVar[dict[str, str]] = {"backbone": "backbone", "out": "samples/{prior.name}"}
    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device", "out", "prior"})  # the prior is an input (hashed by manifest)
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"traverse", "traverse_dims", "classes", "guidance"})
    """Added with latent traversals and class conditions: hashed only when set, so earlier samples keep their fingerprints."""
    cli_flags: ClassVar[dict[str, str]] = {"classes": "--class"}
    repeated_options: ClassVar[frozenset[str]] = frozenset({"classes"})

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
    classes: tuple[tuple[int, ...], ...] | None = Field(None, description="Class-conditional sampling from a prior trained with "
        "--labels: the coupled levels (t = 0; every level for --label-levels all) sample F(z, y) instead of the marginal. "
        "One class for every image (--class 3) or a comma list, one class "
        "per grid row, repeating (--class 0,1,2); given several times (--class A --class B), the classes are composed as a product "
        "of experts, the sum of their energies (CDRL sec. 4.5), row by row.")
    guidance: float | None = Field(None, ge=0, description="Classifier-free guidance weight w with --class: the coupled levels sample "
        "(1 + w) F(z, y) - w F(z, null) (CDRL sec. 3.5); needs a prior trained with --label-dropout (default: no guidance).")
    trajectory_steps: int = Field(2500, ge=1, description="Length of the long run for the energy profile (--trajectory).")
    batch_size: int = Field(500, ge=1, description="Images per sampling batch.")
    seed: int = Field(0, description="Seed of the sampling noise.")
    device: str = Field("auto", description="Torch device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ...")

    _csv = field_validator("traverse", mode="before")(lambda cls, v: split_csv(v))

    @field_validator("classes", mode="before")
    @classmethod
    def _class_lists(cls, value: Any) -> Any:
        """"3" / 3 / [3, "0,1"] / [[0, 1], [2]] -> one tuple of classes per --class; nothing given -> None."""
        if value is None or isinstance(value, (str, int)):
            value = None if value is None else [value]
        if value is not None and not value:
            return None
        return value if value is None else tuple(split_csv(v) if isinstance(v, str) else ((v,) if isinstance(v, int) else v) for v in value)

    @field_validator("classes")
    @classmethod
    def _classes_shape(cls, value: tuple[tuple[int, ...], ...] | None) -> tuple[tuple[int, ...], ...] | None:
        if value is None:
            return value
        if any(not v or min(v) < 0 for v in value):
            raise ValueError("takes class indices from 0, e.g. --class 3 or --class 0,1,2")
        lengths = {len(v) for v in value} - {1}
        if len(lengths) > 1:
            raise ValueError(f"composed per-row lists must have one length (or a single class each), got lengths {sorted(lengths)}")
        return value

    @model_validator(mode="after")
    def _guidance_needs_class(self) -> "SampleConfig":
        if self.guidance is not None and self.classes is None:
            raise ValueError("--guidance guides class-conditional samples: add --class")
        return self

    def class_rows(self) -> int:
        """R, the rows the class lists cycle through (1 for single classes)."""
        return max(len(v) for v in self.classes) if self.classes else 1

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
