"""Stage `eval probe`: class information per latent layer (Hier-EBM Tab. 1, DESIGN §6).

For each layer z_i (and all layers together) a 2-layer MLP (hidden 256, ReLU) is trained on the
posterior-mean codes of the training split and tested on the test split. The hierarchy works as
intended when the top layer carries the most class information. Writes `eval/probe/`:
`result.json` (test accuracy per layer), `probe.png`, manifest.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hebmctl.data import to_unit_range
from hebmctl.errors import DataError
from hebmctl.io.console import console
from hebmctl.io.output import writes_artifact
from hebmctl.io.plots import save_bar_chart
from hebmctl.metrics.probe import train_probe
from hebmctl.runtime import resolve_device
from hebmctl.schemas.common import InputRef
from hebmctl.schemas.eval import EvalProbeConfig, EvalProbeManifest
from hebmctl.stages.artifacts import LoadedBackbone, load_backbone
from hebmctl.stages.eval_common import RunControl, finish, load_data, print_table, up_to_date


@writes_artifact
def run(config: EvalProbeConfig, control: RunControl = RunControl()) -> EvalProbeManifest:
    device = resolve_device(config.device)
    backbone = load_backbone(config.backbone, device)
    spec = config.data or backbone.manifest.config.data
    train_set, train_ref = load_data("data:train", spec, "train", config.limit)
    test_set, test_ref = load_data("data:test", spec, "test")
    if (train_set.labels < 0).any() or (test_set.labels < 0).any() or len(np.unique(train_set.labels)) < 2:
        raise DataError(f"{spec} has no class labels (or a single class): the probe needs labelled train and test splits.")
    inputs = [InputRef(role="backbone", path=str(config.backbone), kind="backbone", sha256=backbone.manifest_sha256), train_ref, test_ref]
    fingerprint, existing = up_to_date(config, inputs, EvalProbeManifest, control.force, "probe")
    if existing is not None:
        return existing
    config.out.mkdir(parents=True, exist_ok=True)
    train_codes, test_codes = _codes(backbone, train_set.images, device), _codes(backbone, test_set.images, device)
    y_train, y_test = torch.from_numpy(train_set.labels), torch.from_numpy(test_set.labels)
    names = [f"z{i + 1}" for i in range(backbone.model.num_layers)] + ["all"]
    accuracy: dict[str, float] = {}
    train_accuracy: dict[str, float] = {}
    for index, name in enumerate(names):
        pick = (lambda c: c) if name == "all" else (lambda c, i=index: backbone.model.split_groups(c)[i])
        probe = train_probe(pick(train_codes), y_train, pick(test_codes), y_test, config.hidden, config.epochs, config.lr, config.batch_size, config.seed)
        accuracy[name], train_accuracy[name] = probe.test_accuracy, probe.train_accuracy
        console().print(f"eval probe: {name} test accuracy {probe.test_accuracy:.4f}")
    majority = float(np.bincount(test_set.labels).max() / len(test_set))
    save_bar_chart(config.out / "probe.png", accuracy, "Probe test accuracy per latent layer (z1 = bottom)", "test accuracy")
    result = {"test_accuracy": accuracy, "train_accuracy": train_accuracy, "majority_class_accuracy": majority,
              "top_layer_is_best": max(accuracy[n] for n in names[:-1]) == accuracy[names[-2]], "group_dims": list(backbone.model.group_dims),
              "data": spec, "n_train": int(len(train_set)), "n_test": int(len(test_set)), "codes": "posterior mean z_i"}
    manifest = finish(config, EvalProbeManifest, fingerprint, inputs, result, ["probe.png"])
    print_table(f"Latent probes on {spec} (MLP {config.hidden} hidden, {config.epochs} epochs)", ["codes", "dims", "test accuracy"],
                [(n, sum(backbone.model.group_dims) if n == "all" else backbone.model.group_dims[i], accuracy[n]) for i, n in enumerate(names)])
    return manifest


@torch.no_grad()
def _codes(backbone: LoadedBackbone, images: np.ndarray, device: torch.device, batch_size: int = 1000) -> Tensor:
    """Posterior means z `[N, D]` (CPU) of uint8 images `[N, H, W, C]`."""
    model = backbone.model
    parts = [model.posterior(to_unit_range(images[s : s + batch_size]).to(device), None, sample=False)[0].cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(parts)
