"""The small CNN checker that controllable.py and composition.py train on real images (2 conv + 2 linear layers)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def small_cnn(in_channels: int, n_classes: int) -> nn.Module:
    """x `[B, C, 28, 28]` in [-1, 1] -> logits `[B, n_classes]`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, n_classes),
    )


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 `[N, 28, 28, C]` -> float `[N, C, 28, 28]` in [-1, 1] (the backbones' range)."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def fit(in_channels: int, n_classes: int, images: np.ndarray, labels: np.ndarray, epochs: int, batch: int) -> nn.Module:
    """A `small_cnn` trained by Adam (lr 1e-3) on uint8 images `[N, 28, 28, C]` and labels `[N]`, seed 0 (weights and order)."""
    torch.manual_seed(0)
    net = small_cnn(in_channels, n_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    xs, ys = to_input(images), torch.from_numpy(np.asarray(labels))
    for _ in range(epochs):
        for rows in torch.randperm(len(ys), generator=g).split(batch):
            loss = nn.functional.cross_entropy(net(xs[rows]), ys[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net
