"""Which output likelihood and which NVAE stabilisers pay off (issue 11): nvae on Fashion-MNIST at a short budget.

    python benchmarks/nvae_stabilisers.py [--root runs/nvae_stabilisers] [--variants gaussian,logistic-mixture,...]
        [--steps 2000] [--n 1000] [--data fashion-mnist:../shared/data/fashion-mnist] [--collect]

Per variant: `pretrain --backbone nvae --steps STEPS` (batch 128, every other option the default) with the variant's
options into ROOT/<variant>, then `eval fid --prior recon` and `--prior gaussian` at N images against the test split,
the reference statistics shared across variants (ROOT/fid-stats). Everything is resumable: finished backbones and
evaluations are reused, so run variants in separate processes (`--variants a` and `--variants b`) and gather with
`--collect`, which trains nothing and reports the variants that are complete; `--step-cost` adds the seconds per
training step of each likelihood and of the spectral regulariser, timed interleaved in one process.

Reported per variant: the test ELBO on the common discrete scale (bits/dim: -log P of the 8-bit bin, the Gaussian's
mass integrated over the bin), the backbone's own ELBO (nats), recon MSE, active units per group, both FIDs and their
ratio, train wall time, skipped updates. Writes benchmarks/results/nvae_stabilisers.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import SHARED_DATA, emit

from hebmctl.data import load_split, to_unit_range
from hebmctl.errors import HebmctlError
from hebmctl.io.manifest import read_manifest
from hebmctl.metrics.backbone import evaluate_backbone
from hebmctl.models.likelihood import make_likelihood
from hebmctl.models.nvae import NVAE
from hebmctl.models.stabilisers import SpectralRegulariser
from hebmctl.schemas import EvalFidConfig, EvalFidManifest, PretrainConfig
from hebmctl.schemas.pretrain import BackboneManifest
from hebmctl.stages import eval_fid, pretrain
from hebmctl.stages.artifacts import load_backbone

SPECTRAL_LAMBDA = 0.1
VARIANTS: dict[str, dict] = {
    "gaussian": {},
    "logistic-mixture": {"likelihood": "logistic-mixture"},
    "gaussian+kl-balance": {"kl_balance": True},
    "gaussian+spectral-reg": {"spectral_reg": SPECTRAL_LAMBDA},
    "logistic-mixture+kl-balance": {"likelihood": "logistic-mixture", "kl_balance": True},
}
"""Variant name -> pretrain options besides --backbone nvae --steps."""


def train(root: Path, name: str, data: str, steps: int) -> BackboneManifest:
    config = PretrainConfig(run=root / name, data=data, backbone="nvae", steps=steps, **VARIANTS[name])
    return pretrain.run(config)


def fid(root: Path, name: str, prior: str, n: int) -> float:
    config = EvalFidConfig(run=root / name, prior=prior, n=n, stats_dir=root / "fid-stats", out=root / name / "eval" / f"fid-{prior}-n{n}")
    return float(eval_fid.run(config).metrics["fid"])


def complete(root: Path, name: str, n: int) -> bool:
    try:
        read_manifest(root / name / "backbone", BackboneManifest)
        return all(read_manifest(root / name / "eval" / f"fid-{p}-n{n}", EvalFidManifest) for p in ("recon", "gaussian"))
    except HebmctlError:  # not finished (missing or incomplete manifest)
        return False


def discrete_bpd(folder: Path, manifest: BackboneManifest) -> float:
    """The test ELBO in bits/dim on the discrete scale: the manifest's, or (backbones written before the field existed)
    evaluated here with the same function and seed, cached next to the backbone folder in elbo_bpd_discrete.json."""
    if "elbo_bpd_discrete" in manifest.metrics["test"]:
        return manifest.metrics["test"]["elbo_bpd_discrete"]
    cache = folder.parent / "elbo_bpd_discrete.json"
    if not cache.is_file():
        device = torch.device("cpu")
        test_set = load_split(manifest.config.data, "test", (), manifest.config.eval_limit)
        model = load_backbone(folder, device).model
        value = evaluate_backbone(model, test_set.images, device, seed=manifest.config.seed)["elbo_bpd_discrete"]
        cache.write_text(json.dumps({"elbo_bpd_discrete": value}))
    return json.loads(cache.read_text())["elbo_bpd_discrete"]


def row(root: Path, name: str, n: int) -> dict:
    manifest, _ = read_manifest(root / name / "backbone", BackboneManifest)
    test, metrics = manifest.metrics["test"], manifest.metrics
    recon_fid, prior_fid = (float(read_manifest(root / name / "eval" / f"fid-{p}-n{n}", EvalFidManifest)[0].metrics["fid"])
                            for p in ("recon", "gaussian"))
    return {
        "options": VARIANTS[name],
        "elbo_bpd_discrete": round(discrete_bpd(root / name / "backbone", manifest), 4),
        "elbo_nats_own_likelihood": round(test["elbo_nats"], 2),
        "recon_mse": round(test["recon_mse"], 5),
        "active_units": test["active_units"],
        "group_dims": list(manifest.group_dims),
        "kl_per_layer_nats": [round(k, 2) for k in test["kl_per_layer_nats"]],
        "fid_recon": round(recon_fid, 2),
        "fid_gaussian": round(prior_fid, 2),
        "fid_ratio": round(recon_fid / prior_fid, 4),
        "train_wall_s": metrics["train_wall_s"],
        "skipped_updates": metrics["skipped_updates"],
    }


def step_cost(data: str, repeats: int = 12) -> dict:
    """Seconds per training step (forward + backward, batch 128, default nvae) of the Gaussian, the mixture and the Gaussian
    with the spectral regulariser, interleaved so that all three see the same machine load; medians after 2 warm-up rounds."""
    torch.manual_seed(0)
    x = to_unit_range(load_split(data, "train", (), 512).images[:128])
    shape = (28, 28, 1)
    mixture = make_likelihood("logistic-mixture", 5)
    models = {"gaussian": NVAE(shape, channels=16), "logistic-mixture": NVAE(shape, channels=16, likelihood=mixture)}
    regulariser = SpectralRegulariser(models["gaussian"])
    losses = {
        "gaussian": lambda: models["gaussian"].elbo_terms(x, None, calibrate=True),
        "logistic-mixture": lambda: models["logistic-mixture"].elbo_terms(x, None, calibrate=True),
        "gaussian+spectral-reg": lambda: models["gaussian"].elbo_terms(x, None, calibrate=True),
    }
    times: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(repeats):
        for name, terms_of in losses.items():
            t0 = time.perf_counter()
            terms = terms_of()
            extra = SPECTRAL_LAMBDA * regulariser() if name.endswith("spectral-reg") else 0.0
            (terms.recon_nll.mean() + terms.kl.sum(-1).mean() + extra).backward()
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(values[2:]) for name, values in times.items()}
    return {"seconds_per_step": {k: round(v, 4) for k, v in median.items()},
            "relative_to_gaussian": {k: round(v / median["gaussian"], 3) for k, v in median.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=Path("runs/nvae_stabilisers"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--data", default=f"fashion-mnist:{SHARED_DATA / 'fashion-mnist'}")
    parser.add_argument("--collect", action="store_true", help="Train nothing: report the variants that are complete.")
    parser.add_argument("--step-cost", action="store_true", help="Also time one training step of each likelihood / regulariser.")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if not args.collect:
        for name in names:
            train(args.root, name, args.data, args.steps)
            for prior in ("recon", "gaussian"):
                print(name, prior, fid(args.root, name, prior, args.n), flush=True)
    results = {name: row(args.root, name, args.n) for name in VARIANTS if complete(args.root, name, args.n)}
    extra = {"step_cost": step_cost(args.data)} if args.step_cost else {}
    emit("nvae_stabilisers", {"root": str(args.root), "data": args.data, "steps": args.steps, "batch_size": 128, "n": args.n,
                              "spectral_lambda": SPECTRAL_LAMBDA, "variants": results} | extra)


if __name__ == "__main__":
    main()
