"""Stage `eval anomaly`: held-out-class anomaly detection (DESIGN §6).

The test split of the backbone's data is scored with the prior's k = 0 detection scores (higher =
more anomalous; `hebmctl.stages.scoring`): by default both `-Lprior>0` (the prior's terms) and `-L>0`
(DESIGN's full score, the anchors'), from the same posterior draws; a diffusion prior gives Diff-EBM's
`DiffEBM>0`. The headline metrics (`auprc`, `auroc`, named by `score`) are those of `HEADLINE`'s first
score present; every score's metrics are under `scores`. The held-out class is the positive class. Which protocol is run follows the backbone's data spec:
- `pooled:heldout=D,seed=S:mnist:DIR` (the anchors' protocol, `hebmctl.data.protocols`): the
  protocol's test part, the 20 % of the normal digits the backbone never saw plus every image of D
  (about 36 % positives);
- any other labelled set, with the class left out by `pretrain --exclude-classes D` or missing from
  the set's own train split (a user's `folder:` with `train/` and `test/`): that set's test split
  (for MNIST, the older test-split protocol, about 10 % positives).
Lineage: the backbone's training split must hold no image of the held-out class, and only the
test split of the very data spec the backbone was trained on is scored (never its training images).
Writes `eval/anomaly-<prior>/`: `result.json` (AUPRC, also AUROC, the positive fraction = the AUPRC
of a random score, the protocol and its split record), `scores.safetensors`, `pr_curve.png`,
`histogram.png`, manifest.
"""

from __future__ import annotations

import numpy as np
import torch

from hebmctl.data.protocols import pooled_of
from hebmctl.data.readers import describe_split, load_labels
from hebmctl.errors import DataError, LineageError
from hebmctl.io.console import console
from hebmctl.io.output import writes_artifact
from hebmctl.io.plots import save_curves, save_histogram_panels
from hebmctl.io.state import save_tensors
from hebmctl.metrics.detection import detection_metrics, pr_points
from hebmctl.runtime import resolve_device
from hebmctl.schemas.eval import EvalAnomalyConfig, EvalAnomalyManifest
from hebmctl.schemas.pretrain import PretrainConfig
from hebmctl.stages.eval_common import RunControl, finish, load_data, print_table, up_to_date
from hebmctl.stages.scoring import check_shape, make_scorer, posterior_langevin, score_images

HEADLINE = ("-Lprior>0", "-L>0", "DiffEBM>0")
"""The headline score, the first of these that was computed: the prior's terms where scored (the measured best on the
anchors' protocol at full budget, docs/decisions.md), else the full -L>0, else a diffusion prior's Diff-EBM score."""


@writes_artifact
def run(config: EvalAnomalyConfig, control: RunControl = RunControl()) -> EvalAnomalyManifest:
    device = resolve_device(config.device)
    scorer, inputs = make_scorer(config, device)
    trained = scorer.backbone.manifest.config
    spec = config.data or trained.data
    _check_scored_split(config, spec, trained)
    heldout = _heldout_class(config, spec, trained)
    test_set, test_ref = load_data(f"data:{config.split}", spec, config.split, config.limit)
    check_shape(scorer, test_set.images, spec)
    positive = test_set.labels == heldout
    _check_both_classes(positive, spec, config.split, heldout)
    inputs.append(test_ref)
    fingerprint, existing = up_to_date(config, inputs, EvalAnomalyManifest, control.force, "anomaly")
    if existing is not None:
        return existing
    config.out.mkdir(parents=True, exist_ok=True)
    protocol = "pooled-80-20" if pooled_of(spec) is not None else "test-split"
    if protocol == "test-split" and spec.startswith("mnist:"):
        console().print("[yellow]eval anomaly: the test-split protocol (about 10 % positives, not the anchors'); for theirs train the "
                        f"backbone on pooled:heldout={heldout},seed=S:{spec}[/yellow]")
    named = score_images(scorer, test_set.images, (0,), config.draws, config.batch_size, config.seed, "test split", config.terms,
                         posterior_langevin(config))
    every = {name: detection_metrics(values[~positive], values[positive]) for name, values in named.items()}
    headline = next(name for name in HEADLINE if name in named)
    score, metrics = named[headline], every[headline]
    save_tensors(config.out / "scores.safetensors", {name: torch.from_numpy(v) for name, v in named.items()}
                 | {"labels": torch.from_numpy(test_set.labels)})
    save_curves(config.out / "pr_curve.png", {f"{name}, held-out {heldout}": pr_points(v[~positive], v[positive]) for name, v in named.items()},
                f"PR curve, held-out class {heldout} ({headline} AUPRC {metrics['auprc']:.3f})", "recall", "precision")
    save_histogram_panels(config.out / "histogram.png", {name: {"normal": v[~positive], f"held-out {heldout}": v[positive]}
                                                         for name, v in named.items()}, "score (higher = more anomalous)")
    result = metrics | {"protocol": protocol, "data_split": describe_split(spec), "heldout": heldout, "prior": config.prior,
                        "prior_kind": scorer.prior_kind, "data": spec, "split": config.split, "n": int(len(score)),
                        "n_positive": int(positive.sum()), "draws": config.draws, "terms": config.terms, "score": headline, "scores": every}
    manifest = finish(config, EvalAnomalyManifest, fingerprint, inputs, result, ["scores.safetensors", "pr_curve.png", "histogram.png"])
    print_table(f"Anomaly: held-out class {heldout}, {spec} [{config.split}], {scorer.prior_kind} prior", ["quantity", "value"],
                [row for name, m in every.items() for row in ((f"AUPRC {name}", m["auprc"]), (f"AUROC {name}", m["auroc"]))]
                + [("positive fraction (random AUPRC)", metrics["positive_fraction"])])
    return manifest


def _check_scored_split(config: EvalAnomalyConfig, spec: str, trained: PretrainConfig) -> None:
    """Score only the test split of the backbone's own data when a protocol split is involved, and never a split with its training images."""
    if (pooled_of(spec) is not None or pooled_of(trained.data) is not None) and spec != trained.data:
        raise LineageError(f"The backbone {config.backbone} was trained on {trained.data}, but eval anomaly was given {spec}. A protocol "
                           "split is scored only against the backbone trained on it (any other split of the pooled images holds images "
                           "the backbone trained on): drop --data, or evaluate a backbone trained on that spec.")
    if spec == trained.data and config.split != "test":
        raise LineageError(f"--split {config.split} of {spec} holds the images the backbone {config.backbone} was trained on; the anomaly "
                           "protocol scores the test split only. Drop --split.")


def _heldout_class(config: EvalAnomalyConfig, spec: str, trained: PretrainConfig) -> int:
    """The held-out class: --heldout, else the protocol's, else the backbone's one excluded class, else the one class of the
    test split its training split lacks; the backbone's training split must hold no image of it."""
    seen = set(np.unique(load_labels(trained.data, "train", trained.exclude_classes)).tolist())
    protocol = pooled_of(spec)
    if config.heldout is not None:
        heldout = config.heldout
    elif protocol is not None:
        heldout = protocol.heldout
    elif len(trained.exclude_classes) == 1:
        heldout = trained.exclude_classes[0]
    else:
        unseen = sorted(set(np.unique(load_labels(spec, config.split)).tolist()) - seen - {-1})
        if len(unseen) != 1:
            raise LineageError(f"The backbone {config.backbone} was trained without classes {list(trained.exclude_classes) or 'none'}, "
                               f"and the {config.split} split of {spec} has {len(unseen) or 'no'} classes its training split lacks "
                               f"{unseen or ''}. Pass --heldout D for a backbone that never saw class D (trained with --exclude-classes D, "
                               "on pooled:heldout=D,...:BASE, or on a train split without D).")
        heldout = unseen[0]
    if protocol is not None and heldout != protocol.heldout:
        raise LineageError(f"--heldout {heldout} does not match the protocol split {spec}, which holds out {protocol.heldout}. Drop --heldout.")
    if heldout in seen:
        raise LineageError(f"The backbone {config.backbone} saw class {heldout} in training (it excluded "
                           f"{list(trained.exclude_classes) or 'nothing'} from {trained.data}). The anomaly protocol needs a backbone "
                           f"(and prior) that never saw the held-out class: train it on pooled:heldout={heldout},seed=S:BASE, or with "
                           f"--exclude-classes {heldout}.")
    return heldout


def _check_both_classes(positive: np.ndarray, spec: str, split: str, heldout: int) -> None:
    if not positive.any() or positive.all():
        what = "no image of" if not positive.any() else "only images of"
        raise DataError(f"The {split} split of {spec} has {what} the held-out class {heldout} ({int(positive.sum())} of {len(positive)}); "
                        "anomaly detection needs both positives (the held-out class) and negatives (the normal classes) in the scored "
                        "split. Put images of both in it (a folder's test/ needs the held-out class folder and at least one other), or "
                        "raise --limit.")
