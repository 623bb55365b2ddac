"""Stage `eval disentanglement`: MIG and MIG-sup per latent layer, and which layer holds which factor.

Codes are the posterior means z `[N, D]` of the test split of a data set with known factors
(`builtin:shapes`), each group flattened to `[N, d_i]`. Mutual information uses 20 equal-width bins
per dimension and is normalised by the factor's entropy (`hebmctl.metrics.mig`). Reported for each
layer z_i (its dimensions only) and for all layers together (`all`):

- `mig` (Chen et al. 2018) over all the scope's dimensions;
- `mig_sup` (Li et al. 2020) over the active dimensions (posterior-mean variance > the threshold),
  as Li et al.'s released code computes it, and `mig_sup_all_dims` over every dimension;
- `factor_layer_nmi`: for each factor and layer, the largest normalised MI of one of the layer's
  dimensions with the factor (1 = some dimension of the layer determines the factor), and
  `layer_of_factor`, the layer where it is largest.

Writes `eval/disentanglement/`: `result.json`, `factor_layer_mi.png` (heat map factor x layer), manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hebmctl.data import ImageSet, to_unit_range
from hebmctl.errors import DataError
from hebmctl.io.console import console
from hebmctl.io.output import writes_artifact
from hebmctl.io.plots import save_heatmap
from hebmctl.metrics.mig import active_dims, entropy, mig, mig_per_factor, mig_sup, normalised_mi
from hebmctl.runtime import resolve_device
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.eval import EvalDisentanglementConfig, EvalDisentanglementManifest
from hebmctl.stages.artifacts import LoadedBackbone, load_backbone
from hebmctl.stages.eval_common import RunControl, finish, load_data, print_table, up_to_date

HEATMAP_NAME = "factor_layer_mi.png"


@writes_artifact
def run(config: EvalDisentanglementConfig, control: RunControl = RunControl()) -> EvalDisentanglementManifest:
    device = resolve_device(config.device)
    backbone = load_backbone(config.backbone, device)
    spec = config.data or backbone.manifest.config.data
    test_set, test_ref = load_data("data:test", spec, "test", config.limit)
    _check_data(test_set, spec, tuple(backbone.manifest.image_shape))
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256), test_ref]
    fingerprint, existing = up_to_date(config, inputs, EvalDisentanglementManifest, control.force, "disentanglement")
    if existing is not None:
        return existing
    config.out.mkdir(parents=True, exist_ok=True)
    layers = layer_codes(backbone, test_set.images, device, config.batch_size)
    result = disentanglement_result(layers, test_set, config.bins, config.active_threshold) | {"data": spec, "split": "test"}
    names = list(result["layers"])[:-1]
    matrix = np.array([[result["factor_layer_nmi"][f][n] for n in names] for f in test_set.factor_names])
    save_heatmap(config.out / HEATMAP_NAME, matrix, test_set.factor_names, names,
                 f"max_j I(v; z_j) / H(v) per layer (z1 = bottom), N = {len(test_set)}")
    manifest = finish(config, EvalDisentanglementManifest, fingerprint, inputs, result, [HEATMAP_NAME])
    _print(result, spec)
    return manifest


def _check_data(data: ImageSet, spec: str, image_shape: tuple[int, int, int]) -> None:
    if data.factors is None:
        raise DataError(
            f"{spec} has no known generative factors: eval disentanglement needs a data set with factor labels, "
            f"such as builtin:shapes. Evaluate a backbone trained on builtin:shapes (hebmctl pretrain --data builtin:shapes)."
        )
    if data.image_shape != image_shape:
        raise DataError(f"{spec} has images of shape {data.image_shape} but the backbone takes {image_shape}. Give data of the backbone's size.")
    constant = [name for name, column in zip(data.factor_names, data.factors.T) if len(np.unique(column)) < 2]
    if constant:
        raise DataError(f"The factor(s) {', '.join(constant)} take a single value in the {len(data)} images evaluated; raise --limit.")


@torch.no_grad()
def layer_codes(backbone: LoadedBackbone, images: np.ndarray, device: torch.device, batch_size: int) -> list[np.ndarray]:
    """Posterior means per layer, bottom to top: float64 `[N, d_i]` each (spatial groups flattened)."""
    model, parts = backbone.model, []
    for start in range(0, len(images), batch_size):
        z, _ = model.posterior(to_unit_range(images[start : start + batch_size]).to(device), None, sample=False)
        parts.append([group.reshape(group.shape[0], -1).double().cpu().numpy() for group in model.split_groups(z)])
    return [np.concatenate(layer) for layer in zip(*parts)]


def disentanglement_result(layers: list[np.ndarray], data: ImageSet, bins: int, threshold: float) -> dict[str, Any]:
    """The numbers of result.json from codes per layer (`[N, d_i]` each) and the data's factors `[N, K]`."""
    codes = np.concatenate(layers, axis=1)
    nmi, active = normalised_mi(codes, data.factors, bins), active_dims(codes, threshold)
    bounds = np.cumsum([0] + [layer.shape[1] for layer in layers])
    scopes = {f"z{i + 1}": np.arange(bounds[i], bounds[i + 1]) for i in range(len(layers))} | {"all": np.arange(codes.shape[1])}
    per_layer = {name: _scores(nmi, active, columns, data.factor_names) for name, columns in scopes.items()}
    table = {factor: {name: float(nmi[k, columns].max()) for name, columns in scopes.items() if name != "all"}
             for k, factor in enumerate(data.factor_names)}
    overall = per_layer["all"]
    return {
        "mig": overall["mig"], "mig_sup": overall["mig_sup"], "mig_sup_all_dims": overall["mig_sup_all_dims"],
        "layers": per_layer, "factor_layer_nmi": table, "layer_of_factor": {f: max(row, key=row.get) for f, row in table.items()},
        "factors": [{"name": n, "size": int(s), "entropy": entropy(data.factors[:, k])} for k, (n, s) in enumerate(zip(data.factor_names, data.factor_sizes))],
        "n": len(data), "bins": bins, "active_threshold": threshold, "group_dims": [layer.shape[1] for layer in layers],
        "codes": "posterior mean z_i, flattened; mig over all dims, mig_sup over active dims, mig_sup_all_dims over all dims",
    }


def _scores(nmi: np.ndarray, active: np.ndarray, columns: np.ndarray, factor_names: tuple[str, ...]) -> dict[str, Any]:
    """MIG, MIG-sup (active / all dims) and MIG per factor of the dimensions `columns` of normalised MI `[K, J]`."""
    sub, chosen = nmi[:, columns], active[columns]
    return {"dims": int(len(columns)), "active_dims": int(chosen.sum()), "mig": mig(sub), "mig_sup": mig_sup(sub, chosen),
            "mig_sup_all_dims": mig_sup(sub), "mig_per_factor": dict(zip(factor_names, map(float, mig_per_factor(sub))))}


def _print(result: dict[str, Any], spec: str) -> None:
    layers = result["layers"]
    print_table(f"Disentanglement on {spec} (test, N = {result['n']}, {result['bins']} bins)", ["codes", "dims", "active", "MIG", "MIG-sup", "MIG-sup (all dims)"],
                [(n, s["dims"], s["active_dims"], s["mig"], "-" if s["mig_sup"] is None else s["mig_sup"], s["mig_sup_all_dims"]) for n, s in layers.items()])
    names = list(layers)[:-1]
    print_table("max_j I(v; z_j) / H(v) per layer", ["factor", *names],
                [(f, *(row[n] for n in names)) for f, row in result["factor_layer_nmi"].items()])
    console().print(f"eval disentanglement: MIG {result['mig']:.4f}, MIG-sup {result['mig_sup']} (active dims), layer of each factor {result['layer_of_factor']}")
