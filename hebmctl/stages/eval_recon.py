"""Stage `eval recon`: reconstruction quality of a backbone on a data split (DESIGN §6).

Per-pixel MSE on [-1, 1] of the decoder mean at the posterior means, plus the test ELBO, KL per
layer and active units (`hebmctl.metrics.backbone`). Writes `eval/recon-<split>/`: `result.json`,
`recon_grid.png` (rows: originals / reconstructions), manifest.
"""

from __future__ import annotations

import numpy as np
import torch

from hebmctl.data import from_unit_range, to_unit_range
from hebmctl.io.images import save_grid
from hebmctl.io.output import writes_artifact
from hebmctl.metrics.backbone import evaluate_backbone
from hebmctl.runtime import resolve_device
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.eval import EvalReconConfig, EvalReconManifest
from hebmctl.stages.artifacts import load_backbone
from hebmctl.stages.eval_common import RunControl, finish, load_data, print_table, up_to_date

GRID_COLUMNS = 8


@writes_artifact
def run(config: EvalReconConfig, control: RunControl = RunControl()) -> EvalReconManifest:
    device = resolve_device(config.device)
    backbone = load_backbone(config.backbone, device)
    spec = config.data or backbone.manifest.config.data
    images, data_ref = load_data(f"data:{config.split}", spec, config.split, config.limit)
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256), data_ref]
    fingerprint, existing = up_to_date(config, inputs, EvalReconManifest, control.force, "recon")
    if existing is not None:
        return existing
    config.out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_backbone(backbone.model, images.images, device, config.batch_size, config.seed)
    _save_recon_grid(config, backbone.model, images.images[: 4 * GRID_COLUMNS], device)
    result = {"recon_mse": metrics["recon_mse"], "elbo_nats": metrics["elbo_nats"], "kl_per_layer_nats": metrics["kl_per_layer_nats"],
              "active_units": metrics["active_units"], "n": metrics["n_images"], "data": spec, "split": config.split}
    manifest = finish(config, EvalReconManifest, fingerprint, inputs, result, ["recon_grid.png"])
    print_table(f"Reconstruction: {spec} [{config.split}, {result['n']} images]", ["quantity", "value"],
                [("MSE per pixel ([-1, 1])", result["recon_mse"]), ("ELBO (nats / image)", result["elbo_nats"]),
                 ("KL per layer (nats)", " / ".join(f"{k:.1f}" for k in result["kl_per_layer_nats"])),
                 ("active units", " / ".join(map(str, result["active_units"])))])
    return manifest


@torch.no_grad()
def _save_recon_grid(config: EvalReconConfig, model, images: np.ndarray, device: torch.device) -> None:
    """Pairs of rows: 8 originals above their 8 reconstructions."""
    z, _ = model.posterior(to_unit_range(images).to(device), None, sample=False)
    recon = from_unit_range(model.decode(z).clamp(-1, 1))
    rows = [block for start in range(0, len(images), GRID_COLUMNS) for block in (images[start : start + GRID_COLUMNS], recon[start : start + GRID_COLUMNS])]
    save_grid(config.out / "recon_grid.png", np.concatenate(rows), GRID_COLUMNS)
