"""sha256 of every prior's weights and samples of a tiny CPU pipeline, to compare two versions of the code bitwise.

    python benchmarks/pipeline_digests.py ROOT [--name pipeline_digests]

builtin:mnist-10k, hvae 8/4/2 pretrained 12 steps, 300 cached latents; train-prior of each scheme (width 16, depth 1,
K = 3, 6 updates of 32), then `sample --n 40 --batch-size 16`; 1 torch thread. Run it with the old tree on PYTHONPATH
and with the new one (different ROOTs) and compare the digests (metrics.jsonl is left out: it holds wall times).
Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from _common import emit

from hebmctl.schemas import CacheLatentsConfig, PretrainConfig, SampleConfig, TrainPriorConfig
from hebmctl.stages import cache_latents, pretrain, sample, train_prior


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--name", default="pipeline_digests")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.root
    pretrain.run(PretrainConfig(out=root / "backbone", data="builtin:mnist-10k", limit=512, eval_limit=128, latent_dims=(8, 4, 2),
                                channels=8, mlp_hidden=32, steps=12, batch_size=32, kl_warmup_steps=4, checkpoint_every=4, log_every=2,
                                device="cpu"))
    cache_latents.run(CacheLatentsConfig(backbone=root / "backbone", out=root / "latents", limit=300, device="cpu"))
    digests = {}
    for scheme in ("joint", "diffusion", "cooperative"):
        prior = root / "priors" / scheme
        train_prior.run(TrainPriorConfig(backbone=root / "backbone", latents=root / "latents", out=prior, scheme=scheme, width=16, depth=1,
                                         steps=6, batch_size=32, langevin_steps=3, checkpoint_every=2, log_every=1, device="cpu"))
        digests[f"{scheme}/energy.safetensors"] = digest(prior / "energy.safetensors")
        samples = root / "samples" / scheme
        sample.run(SampleConfig(backbone=root / "backbone", prior=str(prior), out=samples, n=40, batch_size=16, device="cpu"))
        for name in ("images.npz", "grid.png"):
            digests[f"{scheme}/{name}"] = digest(samples / name)
    emit(args.name, {"root": str(root), "digests": digests})


if __name__ == "__main__":
    main()
