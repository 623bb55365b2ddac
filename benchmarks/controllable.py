"""Controllable generation (issue 16, item 3): are class-conditional samples of a label-coupled prior classified as the
requested class?

    python benchmarks/controllable.py --data mnist --backbone runs/mnist/backbone --prior runs/mnist/priors/all \
        [--n-per-class 200] [--guidance 0,1,2,4] [--fid-n 0] [--name controllable_mnist]

1. A small CNN classifier (2 conv + 2 linear layers) is trained on the real training images (`--data mnist` or
   `fashion-mnist`, the IDX files in ../shared/data), 2 epochs, seed 0; its own test accuracy is reported. Its weights are
   kept in runs/classifier-<data>.safetensors (reused when present).
2. For each guidance weight w: `--n-per-class` samples of each class y = 0..9 from the prior (`sample --class y
   --guidance w`: level 0 samples (1 + w) F(z, y) - w F(z, null); w = 0 is the plain conditional F(z, y)); the fraction
   classified as y, per class and overall. The unconditional samples' predicted-class histogram is the baseline.
3. Ceilings: the classifier's per-class accuracy on the real test images and on the backbone's reconstructions of them.
4. With `--fid-n N > 0`: FID per class of N samples (w = 0) against N real test images of that class, and of N other
   real test images of the class against the same N (the floor at this N: small N biases FID upwards).

Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _classifier import fit, small_cnn, to_input
from _common import REPO, SHARED_DATA, emit
from torch import nn

from hebmctl import priors
from hebmctl.data.idx import _load_idx_split
from hebmctl.io.state import load_module_state, save_tensors
from hebmctl.metrics.fid import InceptionFeatures, fid_from_images, resolve_inception_weights
from hebmctl.stages.artifacts import load_backbone, open_prior

CPU = torch.device("cpu")
N_CLASSES = 10
DATA_FOLDERS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist"}


def train_classifier(data: str, epochs: int = 2, batch: int = 128) -> tuple[nn.Module, dict]:
    folder = SHARED_DATA / DATA_FOLDERS[data]
    (x_train, y_train), (x_test, y_test) = (_load_idx_split(folder, s, N_CLASSES) for s in ("train", "test"))
    net, path = small_cnn(1, N_CLASSES), REPO / "runs" / f"classifier-{data}.safetensors"
    start = time.perf_counter()
    if path.exists():
        load_module_state(net, path)
    else:
        net = fit(1, N_CLASSES, x_train, y_train, epochs, batch)
        save_tensors(path, net.state_dict())
    net.eval()
    accuracy = float((predict(net, x_test) == y_test).mean())
    return net, {"test_accuracy": round(accuracy, 4), "epochs": epochs, "train_images": len(y_train), "test_images": len(y_test),
                 "seconds": round(time.perf_counter() - start, 1), "weights": str(path.relative_to(REPO))}


@torch.no_grad()
def predict(net: nn.Module, images: np.ndarray) -> np.ndarray:
    return np.concatenate([net(to_input(images[i : i + 1000])).argmax(1).numpy() for i in range(0, len(images), 1000)])


def samples(prior: priors.Prior, y: torch.Tensor | None, guidance: float, seed: int) -> np.ndarray:
    """uint8 images `[n, 28, 28, 1]`: one per entry of y `[n]` (None: n unconditional samples of len 10 * ...)."""
    condition = None if y is None else priors.ClassCondition(y[:, None], guidance)
    n = len(y) if y is not None else 1000
    parts = [((b.x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
             for b in priors.sample_batches(prior, n, 500, seed, 1.0, condition=condition)]
    return np.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=list(DATA_FOLDERS), required=True)
    parser.add_argument("--backbone", type=Path, required=True)
    parser.add_argument("--prior", type=Path, required=True)
    parser.add_argument("--n-per-class", type=int, default=200)
    parser.add_argument("--guidance", default="0,1,2,4", help='comma-separated weights w ("" for none)')
    parser.add_argument("--fid-n", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    net, classifier_record = train_classifier(args.data)
    backbone = load_backbone(args.backbone, CPU)
    prior, _ = open_prior(args.prior, backbone, CPU)
    result_ceilings = ceilings(net, args.data, backbone.model)
    y = torch.arange(N_CLASSES).repeat_interleave(args.n_per_class)
    result: dict = {"data": args.data, "backbone": str(args.backbone), "prior": str(args.prior), "n_per_class": args.n_per_class,
                    "seed": args.seed, "classifier": classifier_record, "label_coupling": prior.labels.coupling.model_dump(),
                    "label_levels": prior.config.label_levels or "0", "ceilings": result_ceilings, "guidance": {}}
    start = time.perf_counter()
    unconditional = predict(net, samples(prior, None, 0.0, args.seed))
    result["unconditional_class_histogram"] = np.bincount(unconditional, minlength=N_CLASSES).tolist()
    result["unconditional_s"] = round(time.perf_counter() - start, 1)
    for w in (float(v) for v in args.guidance.split(",") if v):  # --guidance "": FID only
        start = time.perf_counter()
        images = samples(prior, y, w, args.seed)
        hits = predict(net, images) == y.numpy()
        per_class = hits.reshape(N_CLASSES, args.n_per_class).mean(1)
        result["guidance"][f"{w:g}"] = {"accuracy": round(float(hits.mean()), 4), "per_class": [round(float(a), 3) for a in per_class],
                                        "seconds": round(time.perf_counter() - start, 1)}
        print(f"w = {w:g}: {hits.mean():.4f}", flush=True)
    if args.fid_n:
        result["fid_per_class"] = fid_per_class(args, prior)
    emit(args.name or f"controllable_{args.data.replace('-', '_')}", result)


@torch.no_grad()
def ceilings(net: nn.Module, data: str, model) -> dict:
    """Per-class accuracy of the classifier on the real test images and on their reconstructions by the backbone (decoder
    mean of the posterior mean): what any prior on this backbone can at best reach under this classifier."""
    x_test, y_test = _load_idx_split(SHARED_DATA / DATA_FOLDERS[data], "test", N_CLASSES)
    recon = []
    for i in range(0, len(x_test), 500):
        z, _ = model.posterior(to_input(x_test[i : i + 500]), None, sample=False)
        recon.append(((model.decode(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    out = {}
    for name, images in (("real_test", x_test), ("reconstructed_test", np.concatenate(recon))):
        hits = predict(net, images) == y_test
        out[name] = {"accuracy": round(float(hits.mean()), 4),
                     "per_class": [round(float(hits[y_test == c].mean()), 3) for c in range(N_CLASSES)]}
    return out


def fid_per_class(args: argparse.Namespace, prior: priors.Prior) -> dict:
    """FID (w = 0) per class, N generated vs N real test images of the class (N = --fid-n)."""
    extractor = InceptionFeatures(resolve_inception_weights(), CPU)
    x_test, y_test = _load_idx_split(SHARED_DATA / DATA_FOLDERS[args.data], "test", N_CLASSES)
    n, out = args.fid_n, {"n": args.fid_n, "samples_vs_real": {}, "real_vs_real": {}}
    for c in range(N_CLASSES):
        generated = samples(prior, torch.full((n,), c), 0.0, args.seed + 1)
        real = x_test[y_test == c]
        out["samples_vs_real"][str(c)] = round(fid_from_images(generated, real[:n], extractor), 2)
        out["real_vs_real"][str(c)] = round(fid_from_images(real[n : 2 * n], real[:n], extractor), 2)  # the small-N floor
    return out


if __name__ == "__main__":
    main()
