"""A two-factor data set for the composition target (issue 16): MNIST digit x a procedural colour.

    python benchmarks/coloured_mnist.py [--out runs/composition/coloured-mnist.npz] [--seed 0]

Every image of the MNIST train split (60,000) and test split (10,000), in that order, gets one of three colours,
drawn independently of the digit by `numpy.random.RandomState(seed).randint(3, size=70_000)`. A coloured image is
the grey image times the colour's RGB value (`rgb = round(grey / 255 * COLOURS[c])`, uint8 [N, 28, 28, 3]), so
the digit's shape and the colour are separate factors. The label is the joint class `3 * digit + colour`
(30 classes, names "3/red" ...), which `train-prior --labels` couples as it is; the digit and the colour are
then unions of joint classes (`class_sets`), which `sample --class` composes.

Written as an `npz:` data set (hebmctl's npz rule: every 10th row is "test", the rest "train"); its sha256 is
printed, so a rebuild can be checked against the one the runs used.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from _common import REPO, SHARED_DATA

from hebmctl.data.idx import _load_idx_split

COLOURS = {"red": (255, 64, 64), "green": (64, 224, 64), "blue": (80, 120, 255)}
"""The colours' RGB values at full ink (index = colour label)."""
N_DIGITS = 10


def joint_label(digit: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return digit * len(COLOURS) + colour


def class_sets() -> dict[str, list[int]]:
    """`digit=D` and `colour=NAME` -> the joint classes that carry that factor value."""
    names = list(COLOURS)
    sets = {f"digit={d}": [int(joint_label(np.int64(d), np.int64(c))) for c in range(len(names))] for d in range(N_DIGITS)}
    sets |= {f"colour={name}": [int(joint_label(np.int64(d), np.int64(c))) for d in range(N_DIGITS)] for c, name in enumerate(names)}
    return sets


def colourise(grey: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """grey uint8 `[N, 28, 28, 1]`, colour int `[N]` -> uint8 `[N, 28, 28, 3]`."""
    rgb = np.array(list(COLOURS.values()), dtype=np.float32)[colour]  # [N, 3]
    return np.rint(grey.astype(np.float32) / 255.0 * rgb[:, None, None, :]).astype(np.uint8)


def build(seed: int) -> dict[str, np.ndarray]:
    folder = SHARED_DATA / "mnist"
    (x_train, y_train), (x_test, y_test) = (_load_idx_split(folder, s, N_DIGITS) for s in ("train", "test"))
    grey, digit = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]).astype(np.int64)
    colour = np.random.RandomState(seed).randint(len(COLOURS), size=len(digit)).astype(np.int64)
    names = [f"{d}/{c}" for d in range(N_DIGITS) for c in COLOURS]
    return {"images": colourise(grey, colour), "labels": joint_label(digit, colour), "class_names": np.array(names)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "composition" / "coloured-mnist.npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = build(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(args.out)
    print(f"{args.out}: {len(arrays['images'])} images, 30 joint classes, sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
