"""Stage `eval ood`: out-of-distribution detection (DESIGN §3 "Scores" and §6).

The in-distribution split (default: the backbone's data, test split) and the OOD set (`--ood`) are
scored for every k in `--k` with the prior's detection scores, higher = more out-of-distribution
(`hebmctl.stages.scoring`): `-L>k` and `LLR>k = L>0 - L>k` (k >= 1; Joint-EBM eq. 20-21, full terms),
`-Lprior>k` (the prior's terms only, no LLR), chosen by `--terms`; for a diffusion prior Diff-EBM's
`DiffEBM>k` (sec. 5.2). Positives = the OOD set. Writes `eval/ood-<prior>/`: `result.json` (AUROC,
AUPRC, FPR@80%TPR per score), `scores.safetensors` (every score per image of both sets),
`histograms.png` (Joint-EBM Fig. 6), `roc.png`, manifest.
"""

from __future__ import annotations

import numpy as np
import torch

from hebmctl.errors import DataError
from hebmctl.io.output import writes_artifact
from hebmctl.io.plots import save_curves, save_histogram_panels
from hebmctl.io.state import save_tensors
from hebmctl.metrics.detection import detection_metrics, roc_points
from hebmctl.runtime import resolve_device
from hebmctl.schemas.eval import EvalOodConfig, EvalOodManifest
from hebmctl.stages.eval_common import RunControl, finish, load_data, print_table, up_to_date
from hebmctl.stages.scoring import check_shape, make_scorer, posterior_langevin, score_images


@writes_artifact
def run(config: EvalOodConfig, control: RunControl = RunControl()) -> EvalOodManifest:
    device = resolve_device(config.device)
    scorer, inputs = make_scorer(config, device)
    n_layers = scorer.backbone.model.num_layers
    if not config.k or any(k < 0 or k >= n_layers for k in config.k):
        raise DataError(f"--k must list values in 0..{n_layers - 1} for this {n_layers}-layer backbone, got {','.join(map(str, config.k))}.")
    in_spec = config.data or scorer.backbone.manifest.config.data
    in_set, in_ref = load_data(f"in:{config.split}", in_spec, config.split, config.limit)
    out_set, out_ref = load_data(f"ood:{config.split}", config.ood, config.split, config.limit)
    check_shape(scorer, in_set.images, in_spec)
    check_shape(scorer, out_set.images, config.ood)
    inputs += [in_ref, out_ref]
    fingerprint, existing = up_to_date(config, inputs, EvalOodManifest, control.force, "ood")
    if existing is not None:
        return existing
    config.out.mkdir(parents=True, exist_ok=True)
    ks = tuple(config.k)
    s_in = score_images(scorer, in_set.images, ks, config.draws, config.batch_size, config.seed, "in-distribution", config.terms,
                        posterior_langevin(config))
    s_out = score_images(scorer, out_set.images, ks, config.draws, config.batch_size, config.seed + 1, "out-of-distribution", config.terms,
                         posterior_langevin(config))
    detection = {name: (s_in[name], s_out[name]) for name in s_in}
    scores = {name: detection_metrics(s_in, s_out) | {"mean_in": float(s_in.mean()), "mean_out": float(s_out.mean())}
              for name, (s_in, s_out) in detection.items()}
    _save_outputs(config, detection)
    best = max(scores, key=lambda name: scores[name]["auroc"])
    result = {"scores": scores, "best_by_auroc": best, "k": list(config.k), "prior": config.prior, "prior_kind": scorer.prior_kind,
              "sampler": scorer.describe(config.seed), "data": in_spec, "ood": config.ood, "split": config.split,
              "n_in": int(len(in_set)), "n_out": int(len(out_set)), "draws": config.draws, "terms": config.terms}
    manifest = finish(config, EvalOodManifest, fingerprint, inputs, result, ["scores.safetensors", "histograms.png", "roc.png"])
    print_table(f"OOD: {in_spec} (in, {len(in_set)}) vs {config.ood} (out, {len(out_set)}), {scorer.prior_kind} prior",
                ["score (higher = OOD)", "AUROC", "AUPRC", "FPR@80%TPR"],
                [(name, m["auroc"], m["auprc"], m["fpr80"]) for name, m in scores.items()])
    return manifest


def _save_outputs(config: EvalOodConfig, detection: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Per-image detection scores by name, `in/<name>` `[N_in]` and `ood/<name>` `[N_out]`, and their plots."""
    tensors = {f"{side}/{name}": torch.from_numpy(pair[i]) for name, pair in detection.items() for i, side in enumerate(("in", "ood"))}
    save_tensors(config.out / "scores.safetensors", tensors)
    panels = {name: {"in-distribution": s_in, "OOD": s_out} for name, (s_in, s_out) in detection.items()}
    save_histogram_panels(config.out / "histograms.png", panels, "score (higher = more OOD)")
    curves = {name: roc_points(s_in, s_out) for name, (s_in, s_out) in detection.items()}
    save_curves(config.out / "roc.png", curves, "ROC: OOD = positive", "false-positive rate", "true-positive rate", diagonal=True)
