"""Composition (issue 16 target): do composed samples carry both requested factors?

    python benchmarks/coloured_mnist.py                     # the two-factor data set (digit x colour), see its docstring
    python benchmarks/composition.py --backbone runs/composition/backbone --prior runs/composition/priors/all \
        [--data runs/composition/coloured-mnist.npz] [--n-per-pair 50] [--guidance 0,1,2,4] [--name composition]

The prior is trained with `train-prior --labels` on the joint class y = 3 * digit + colour (30 classes). A factor value is
a set of joint classes ("digit 3" = {9, 10, 11}; "red" = {0, 3, ..., 27}), and its expert is
c * logsumexp_{y in S} F(z, y) / c, the energy of p(z | y in S) (`sample --class 9+10+11`). For every pair (digit d,
colour c) and guidance weight w, `--n-per-pair` samples are drawn under four conditions:
- composed: the digit expert + the colour expert, a product of experts (CDRL sec. 4.5; `--class 9+10+11 --class 0+3+...`);
- digit only / colour only: one expert, the other factor left free (what composition adds to);
- joint class: the single class 3d + c, the one expert that already names both factors (a reference, not composition).
Guidance (CDRL sec. 3.5) applies to each expert: (1 + w) E_S - w F(z, null).

A small CNN trained on the real coloured training images (the npz "train" rows, 2 epochs, seed 0) predicts the joint
class; the predicted digit and colour are its arg-max over each factor's summed probabilities. Reported per condition:
the fraction of samples whose predicted digit, colour, and both are the requested ones; the classifier's own accuracy
on the real test rows and on the backbone's reconstructions of them (the ceiling any prior on this backbone meets).

Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _classifier import fit, small_cnn, to_input
from _common import REPO, emit
from coloured_mnist import COLOURS, N_DIGITS, class_sets
from torch import nn

from hebmctl import priors
from hebmctl.data import load_split
from hebmctl.io.state import load_module_state, save_tensors
from hebmctl.stages.artifacts import load_backbone, open_prior

CPU = torch.device("cpu")
N_COLOURS = len(COLOURS)
N_JOINT = N_DIGITS * N_COLOURS


def train_classifier(spec: str, epochs: int = 2, batch: int = 128) -> tuple[nn.Module, dict]:
    train, test = load_split(spec, "train"), load_split(spec, "test")
    net, path = small_cnn(3, N_JOINT), REPO / "runs" / "composition" / "classifier-coloured-mnist.safetensors"
    start = time.perf_counter()
    if path.exists():
        load_module_state(net, path)
    else:
        net = fit(3, N_JOINT, train.images, train.labels, epochs, batch)  # joint-class logits [B, 30]
        save_tensors(path, net.state_dict())
    net.eval()
    record = factor_accuracy(predict(net, test.images), test.labels)
    return net, {"test": record, "epochs": epochs, "train_images": len(train), "test_images": len(test),
                 "seconds": round(time.perf_counter() - start, 1), "weights": str(path.relative_to(REPO))}


@torch.no_grad()
def predict(net: nn.Module, images: np.ndarray) -> np.ndarray:
    """Predicted (digit, colour) `[N, 2]`: the arg-max of each factor's marginal probability."""
    probs = torch.cat([net(to_input(images[i : i + 1000])).softmax(1) for i in range(0, len(images), 1000)])
    probs = probs.view(-1, N_DIGITS, N_COLOURS)  # joint class 3 d + c
    return torch.stack([probs.sum(2).argmax(1), probs.sum(1).argmax(1)], dim=1).numpy()


def factor_accuracy(predicted: np.ndarray, joint: np.ndarray) -> dict:
    """Fractions of rows whose predicted digit, colour, both equal the joint labels `[N]`'s."""
    digit, colour = predicted[:, 0] == joint // N_COLOURS, predicted[:, 1] == joint % N_COLOURS
    both = digit & colour
    return {"digit": round(float(digit.mean()), 4), "colour": round(float(colour.mean()), 4), "both": round(float(both.mean()), 4)}


def conditions(pairs: np.ndarray, guidance: float) -> dict[str, priors.ClassCondition]:
    """The four conditions of the pairs `[n, 2]` (digit, colour), as `sample --class` builds them."""
    sets = class_sets()
    digit = priors.class_set_table([sets[f"digit={d}"] for d in range(N_DIGITS)], N_JOINT)[pairs[:, 0]]  # [n, 30]
    colour = priors.class_set_table([sets[f"colour={name}"] for name in COLOURS], N_JOINT)[pairs[:, 1]]
    first = lambda m: m.float().argmax(1)  # noqa: E731 - a set's first member, as sample.class_condition's targets
    joint = torch.from_numpy(pairs[:, 0] * N_COLOURS + pairs[:, 1])
    return {
        "composed": priors.ClassCondition(torch.stack([first(digit), first(colour)], 1), guidance, torch.stack([digit, colour], 1)),
        "conjunction": priors.ClassCondition(torch.stack([first(digit), first(colour)], 1), guidance, torch.stack([digit, colour], 1),
                                             "conjunction"),
        "digit_only": priors.ClassCondition(first(digit)[:, None], guidance, digit[:, None]),
        "colour_only": priors.ClassCondition(first(colour)[:, None], guidance, colour[:, None]),
        "joint_class": priors.ClassCondition(joint[:, None], guidance),
    }


def samples(prior: priors.Prior, n: int, condition: priors.ClassCondition | None, seed: int) -> np.ndarray:
    """uint8 images `[n, 28, 28, 3]`."""
    parts = [((b.x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
             for b in priors.sample_batches(prior, n, 500, seed, 1.0, condition=condition)]
    return np.concatenate(parts)


@torch.no_grad()
def reconstruction_ceiling(net: nn.Module, spec: str, model) -> dict:
    """The classifier on the backbone's reconstructions (decoder mean of the posterior mean) of the real test rows."""
    test = load_split(spec, "test")
    recon = []
    for i in range(0, len(test), 500):
        z, _ = model.posterior(to_input(test.images[i : i + 500]), None, sample=False)
        recon.append(((model.decode(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return factor_accuracy(predict(net, np.concatenate(recon)), test.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "composition" / "coloured-mnist.npz")
    parser.add_argument("--backbone", type=Path, required=True)
    parser.add_argument("--prior", type=Path, required=True)
    parser.add_argument("--n-per-pair", type=int, default=50)
    parser.add_argument("--guidance", default="0,1,2,4", help="comma-separated weights w")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--langevin-steps", type=int, default=None, help="K' per level (sample --langevin-steps; default: the prior's K)")
    parser.add_argument("--conditions", default="composed,conjunction,digit_only,colour_only,joint_class")
    parser.add_argument("--name", default="composition")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = f"npz:{args.data.resolve()}"

    net, classifier_record = train_classifier(spec)
    backbone = load_backbone(args.backbone, CPU)
    prior, _ = open_prior(args.prior, backbone, CPU, priors.SamplingOptions(langevin_steps=args.langevin_steps))
    pairs = np.array([(d, c) for d in range(N_DIGITS) for c in range(N_COLOURS)]).repeat(args.n_per_pair, axis=0)  # [n, 2]
    joint = pairs[:, 0] * N_COLOURS + pairs[:, 1]
    result: dict = {"data": str(args.data), "backbone": str(args.backbone), "prior": str(args.prior), "n_per_pair": args.n_per_pair,
                    "seed": args.seed, "langevin_steps": args.langevin_steps, "classifier": classifier_record,
                    "label_coupling": prior.labels.coupling.model_dump(),
                    "label_levels": prior.config.label_levels or "0",
                    "ceiling_reconstructed_test": reconstruction_ceiling(net, spec, backbone.model), "guidance": {}}
    unconditional = predict(net, samples(prior, len(pairs), None, args.seed))
    result["unconditional"] = factor_accuracy(unconditional, joint)  # chance: what no condition gives against the same requests
    for w in (float(v) for v in args.guidance.split(",") if v):
        row = {}
        for name, condition in conditions(pairs, w).items():
            if name not in args.conditions.split(","):
                continue
            start = time.perf_counter()
            predicted = predict(net, samples(prior, len(pairs), condition, args.seed))
            both = (predicted[:, 0] == pairs[:, 0]) & (predicted[:, 1] == pairs[:, 1])
            row[name] = factor_accuracy(predicted, joint) | {
                "both_per_pair_min": round(float(both.reshape(-1, args.n_per_pair).mean(1).min()), 3),
                "seconds": round(time.perf_counter() - start, 1)}
        result["guidance"][f"{w:g}"] = row
        print(f"w = {w:g}: " + "  ".join(f"{k} {v['both']:.3f}" for k, v in row.items()), flush=True)
    emit(args.name, result)


if __name__ == "__main__":
    main()
