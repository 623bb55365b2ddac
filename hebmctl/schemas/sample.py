"""Config of `hebmctl sample` and the manifest of a samples artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hebmctl.schemas.common import ManifestBase, StageConfig, prior_folder, split_csv

INPAINT_FIELDS = ("inpaint", "mask", "inpaint_layers", "inpaint_fix", "inpaint_draws", "inpaint_guidance_steps", "inpaint_step_size")
EXCLUSIVE_WITH_INPAINT = ("hierarchical", "trajectory", "traverse")


ClassExperts = tuple[tuple[int | tuple[int, ...], ...], ...]
"""--class values: one tuple of experts per --class (a grid row each, repeating); an expert is a class or a '+' set of classes."""


def _class_set(item: Any) -> Any:
    """One expert of --class: "3" / 3 -> 3; "9+10+11" / [9, 10, 11] -> (9, 10, 11) (sorted, without repeats; a set of one
    class is that class). Anything else is left for pydantic to refuse."""
    if isinstance(item, str):
        parts = [p.strip() for p in item.split("+")]
        if not all(parts):
            raise ValueError(f"has an empty class in {item!r}; join classes with '+', e.g. --class 9+10+11")
        item = parts if len(parts) > 1 else parts[0]
    if isinstance(item, (list, tuple)):
        members = tuple(sorted({int(m) for m in item}))
        return members[0] if len(members) == 1 else members
    return item


def class_members(expert: int | tuple[int, ...]) -> tuple[int, ...]:
    """The classes one --class expert admits: (y,) for a class, the set itself for a '+' set."""
    return (expert,) if isinstance(expert, int) else tuple(expert)


class SampleConfig(StageConfig):
    """Generate images from the backbone with the Gaussian prior or a trained EBM prior."""

    run_defaults: ClassVar[dict[str, str]] = {"backbone": "backbone", "out": "samples/{prior.name}"}
    unhashed: ClassVar[frozenset[str]] = frozenset({"run", "device", "compile", "tf32", "out", "prior", "inpaint"})
    """The prior and the --inpaint images are inputs, hashed by content (the manifest's `inputs`)."""
    hashed_when_set: ClassVar[frozenset[str]] = frozenset({"traverse", "traverse_dims", "classes", "guidance", "compose",
                                                           *INPAINT_FIELDS[1:]})
    """Added with latent traversals, class conditions and inpainting: hashed only when set, so earlier samples keep their
    fingerprints."""
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
    inpaint: Path | None = Field(None, description="Inpaint instead of sampling: a PNG (one image) or an .npz with key 'images' "
        "(uint8 [N, H, W] or [N, H, W, C]) of the backbone's image size. The latents inferred from the visible pixels are kept "
        "where their footprint misses --mask and redrawn under the prior where it overlaps (replacement; docs/decisions.md "
        "'Latent inpainting'). Writes grid.png (rows: masked input, one inpainting per draw, original). Needs --mask.")
    mask: str | None = Field(None, description="With --inpaint: the pixels to fill, a PNG of the image size (white = fill) or a "
                                                "named mask: center, left-half, right-half, top-half, bottom-half.")
    inpaint_layers: tuple[int, ...] | None = Field(None, description="With --inpaint: the layers (1 = bottom, comma-separated) whose "
        "latents may be redrawn (default: all); the others keep the values inferred from the visible image.")
    inpaint_fix: Literal["u", "z"] | None = Field(None, description="With --inpaint: what the latents outside the mask keep, 'u' "
        "(default: their prior coordinates, what the prior's masked sampler holds fixed) or 'z' (the inferred latents themselves: "
        "in a conditional hierarchy (nvae, hvae) a fixed u under redrawn parents is another z, so 'z' re-anchors them after the draw).")
    inpaint_draws: int | None = Field(None, ge=1, description="With --inpaint: inpaintings per image, each from its own seed "
                                                              "(default 4). --n does not apply.")
    inpaint_guidance_steps: int | None = Field(None, ge=0, description="With --inpaint: K steps of data-consistency Langevin after "
        "the prior's draw, on the redrawn latents, of log p(x_visible | z) + F(z) - |u|^2/2 (default 0: replacement alone). "
        "Needed where no latent has a spatial footprint (hvae, vlae: every latent is redrawn).")
    inpaint_step_size: float | None = Field(None, gt=0, description="With --inpaint: the data-consistency Langevin step s (default "
                                                                    "0.03; the posterior anchor 0.1 bounces on the visible pixels).")
    classes: ClassExperts | None = Field(None, description="Class-conditional sampling from a "
        "prior trained with --labels: the coupled levels (t = 0; every level for --label-levels all) sample F(z, y) instead of the "
        "marginal. One class for every image (--class 3) or a comma list, one class per grid row, repeating (--class 0,1,2); "
        "a set of classes joined by '+' (--class 9+10+11) is one expert, y in the set, whose energy is the logsumexp of theirs "
        "(e.g. every class that shares one attribute); given several times (--class A --class B), the experts are composed as "
        "a product of experts, the sum of their energies (CDRL sec. 4.5), row by row.")
    guidance: float | None = Field(None, ge=0, description="Classifier-free guidance weight w with --class: the coupled levels sample "
        "(1 + w) F(z, y) - w F(z, null) (CDRL sec. 3.5); needs a prior trained with --label-dropout (default: no guidance).")
    compose: Literal["sum", "conjunction"] | None = Field(None, description="How several --class experts combine: 'sum' "
        "(default; CDRL sec. 4.5's product of experts, the sum of their energies, which counts the prior p(z) once per expert) "
        "or 'conjunction' (a variant after Liu et al. 2022's AND, in energies: the marginal U once, U + sum_j (E_j - U); the "
        "better of the two on the two-factor coloured MNIST, docs/results.md).")
    trajectory_steps: int = Field(2500, ge=1, description="Length of the long run for the energy profile (--trajectory).")
    batch_size: int = Field(500, ge=1, description="Images per sampling batch.")
    seed: int = Field(0, description="Seed of the sampling noise.")
    device: str = Field("auto", description="Torch device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ...")
    compile: Literal["auto", "on", "off"] = Field("auto", description="Capture the Langevin step in a CUDA graph (replayed each "
        "step; the same numbers as the eager loop): 'auto' on CUDA only, 'on' (an error without CUDA), 'off' the eager loop.")
    tf32: bool = Field(True, description="On CUDA, TF32 matmuls and convolutions (10-bit mantissa) throughout this stage: faster, "
        "and measured within the seed-to-seed spread (docs/scale.md). No effect on the CPU; --no-tf32 for full fp32.")

    _csv = field_validator("traverse", mode="before")(lambda cls, v: split_csv(v))

    @field_validator("classes", mode="before")
    @classmethod
    def _class_lists(cls, value: Any) -> Any:
        """"3" / 3 / [3, "0,1"] / [[0, 1], [2]] / "0+1,2" -> one tuple of experts per --class (a class, or a '+' set of
        classes as a tuple); nothing given -> None."""
        if isinstance(value, (str, int)):
            value = [value]
        if not value:
            return None
        lists = (split_csv(v) if isinstance(v, str) else ((v,) if isinstance(v, int) else v) for v in value)
        return tuple(tuple(_class_set(item) for item in items) for items in lists)

    @field_validator("classes")
    @classmethod
    def _classes_shape(cls, value: ClassExperts | None) -> ClassExperts | None:
        if value is None:
            return value
        if any(not v or min(min(class_members(e)) for e in v) < 0 for v in value):
            raise ValueError("takes class indices from 0, e.g. --class 3, --class 0,1,2 or --class 9+10+11")
        lengths = {len(v) for v in value} - {1}
        if len(lengths) > 1:
            raise ValueError(f"composed per-row lists must have one length (or a single class each), got lengths {sorted(lengths)}")
        return value

    @model_validator(mode="after")
    def _guidance_needs_class(self) -> "SampleConfig":
        if self.guidance is not None and self.classes is None:
            raise ValueError("--guidance guides class-conditional samples: add --class")
        if self.compose is not None and (self.classes is None or len(self.classes) < 2):
            raise ValueError("--compose says how several --class experts combine: give --class at least twice")
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

    _csv_layers = field_validator("inpaint_layers", mode="before")(lambda cls, v: split_csv(v))

    @field_validator("inpaint_layers")
    @classmethod
    def _inpaint_layers_from_one(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError("--inpaint-layers takes layer numbers from 1 (the bottom layer z1), comma-separated, e.g. 1 or 1,2")
        return value

    @model_validator(mode="after")
    def _inpaint_options_together(self) -> SampleConfig:
        """--inpaint and --mask go together; the other inpainting options need them; the figure options do not combine."""
        if (self.inpaint is None) != (self.mask is None):
            raise ValueError("--inpaint IMAGE and --mask MASK go together: give both (or neither)")
        if self.inpaint is None:
            stray = [f"--{name.replace('_', '-')}" for name in INPAINT_FIELDS[2:] if getattr(self, name) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply with --inpaint IMAGE --mask MASK")
            return self
        clash = [f"--{name}" for name in EXCLUSIVE_WITH_INPAINT if getattr(self, name)]
        if clash:
            raise ValueError(f"{', '.join(clash)} do not combine with --inpaint (it writes its own grid); run them separately")
        return self

    @classmethod
    def _derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The samples folder is named after the prior: RUN/samples/gaussian, RUN/samples/<prior folder name>
        (RUN/samples/inpaint-<prior folder name> with --inpaint)."""
        data["prior"] = str(data.get("prior") or "gaussian")
        if data.get("inpaint") is not None and data.get("out") is None:  # --inpaint: RUN/samples/inpaint-<prior name>
            data["out"] = Path(data.get("run") or cls.model_fields["run"].default) / "samples" / f"inpaint-{Path(data['prior']).name}"
        return data

    def prior_dir(self) -> Path | None:
        """The prior folder, or None for the Gaussian prior. A bare name means RUN/priors/NAME."""
        return prior_folder(self.prior, self.run)


class SamplesManifest(ManifestBase):
    kind: Literal["samples"] = Field("samples", description="Artifact kind.")
    config: SampleConfig = Field(description="The resolved stage config.")
    prior_kind: Literal["gaussian", "joint", "diffusion", "cooperative"] = Field(description="Which prior generated the samples.")
    sampler: dict[str, Any] = Field(description="Every number the sampler used: K, step sizes, temperature, schedule, seed.")
