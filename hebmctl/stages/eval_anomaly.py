"""Stage `eval anomaly`: the MNIST held-out-digit protocol (DESIGN §6).

The backbone (and prior) were trained with `--exclude-classes D`; the whole test split is scored
with `-L^{>0}` (higher = more anomalous) and the held-out digit is the positive class. Writes
`eval/anomaly-<prior>/`: `result.json` (AUPRC, also AUROC and the positive fraction = the AUPRC of
a random score), `scores.safetensors`, `pr_curve.png`, `histogram.png`, manifest.
"""

from __future__ import annotations

import torch

from hebmctl.errors import DataError, LineageError
from hebmctl.io.output import writes_artifact
from hebmctl.io.plots import save_curves, save_histogram_panels
from hebmctl.io.state import save_tensors
from hebmctl.metrics.detection import detection_metrics, pr_points
from hebmctl.runtime import resolve_device
from hebmctl.schemas.eval import EvalAnomalyConfig, EvalAnomalyManifest
from hebmctl.stages.eval_common import RunControl, finish, load_data, print_table, up_to_date
from hebmctl.stages.scoring import check_shape, make_scorer, score_images


@writes_artifact
def run(config: EvalAnomalyConfig, control: RunControl = RunControl()) -> EvalAnomalyManifest:
    device = resolve_device(config.device)
    scorer, inputs = make_scorer(config, device)
    heldout = _heldout_class(config, tuple(scorer.backbone.manifest.config.exclude_classes))
    spec = config.data or scorer.backbone.manifest.config.data
    test_set, test_ref = load_data(f"data:{config.split}", spec, config.split, config.limit)
    check_shape(scorer, test_set.images, spec)
    inputs.append(test_ref)
    fingerprint, existing = up_to_date(config, inputs, EvalAnomalyManifest, control.force, "anomaly")
    if existing is not None:
        return existing
    config.out.mkdir(parents=True, exist_ok=True)
    score = -score_images(scorer, test_set.images, (0,), config.draws, config.batch_size, config.seed, "test split", config.terms)[0]
    positive = test_set.labels == heldout
    if not positive.any() or positive.all():
        raise DataError(f"The {config.split} split of {spec} has {int(positive.sum())} images of class {heldout} among {len(positive)}; "
                           "the protocol needs both the held-out class and the others.")
    metrics = detection_metrics(score[~positive], score[positive])
    save_tensors(config.out / "scores.safetensors", {"neg_L>0": torch.from_numpy(score), "labels": torch.from_numpy(test_set.labels)})
    save_curves(config.out / "pr_curve.png", {f"held-out {heldout}": pr_points(score[~positive], score[positive])},
                f"PR curve, held-out class {heldout} (AUPRC {metrics['auprc']:.3f})", "recall", "precision")
    save_histogram_panels(config.out / "histogram.png", {"-L>0": {"normal": score[~positive], f"held-out {heldout}": score[positive]}},
                          "score (nats; higher = more anomalous)")
    result = metrics | {"heldout": heldout, "prior": config.prior, "prior_kind": scorer.prior_kind, "data": spec, "split": config.split,
                        "n": int(len(score)), "n_positive": int(positive.sum()), "draws": config.draws, "terms": config.terms, "score": "-L>0"}
    manifest = finish(config, EvalAnomalyManifest, fingerprint, inputs, result, ["scores.safetensors", "pr_curve.png", "histogram.png"])
    print_table(f"Anomaly: held-out class {heldout}, {spec} [{config.split}], {scorer.prior_kind} prior", ["quantity", "value"],
                [("AUPRC", metrics["auprc"]), ("AUROC", metrics["auroc"]), ("positive fraction (random AUPRC)", metrics["positive_fraction"])])
    return manifest


def _heldout_class(config: EvalAnomalyConfig, excluded: tuple[int, ...]) -> int:
    """The held-out class: --heldout, or the backbone's one excluded class; it must be excluded from training."""
    if config.heldout is None:
        if len(excluded) != 1:
            raise LineageError(f"The backbone {config.backbone} was trained without classes {list(excluded) or 'none'}; pass --heldout D "
                               "for a backbone trained with --exclude-classes D.")
        return excluded[0]
    if config.heldout not in excluded:
        raise LineageError(f"The backbone {config.backbone} saw class {config.heldout} in training (it excluded {list(excluded) or 'nothing'}). "
                           f"The anomaly protocol needs a backbone (and prior) trained with --exclude-classes {config.heldout}.")
    return config.heldout
