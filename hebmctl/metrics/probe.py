"""Latent probes (Hier-EBM Tab. 1): how much class information a set of codes carries.

A 2-layer MLP (Linear(d, hidden) - ReLU - Linear(hidden, classes)) is trained with Adam and
cross-entropy on standardised codes of the training split; its accuracy on the test split is the
probe's result. Deterministic given the seed (initialisation and minibatch order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ProbeResult:
    test_accuracy: float
    train_accuracy: float
    epochs: int


def make_probe(d_in: int, hidden: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def _accuracy(model: nn.Module, codes: Tensor, labels: Tensor, batch_size: int = 4096) -> float:
    with torch.no_grad():
        correct = sum(int((model(codes[i : i + batch_size]).argmax(-1) == labels[i : i + batch_size]).sum()) for i in range(0, len(codes), batch_size))
    return correct / len(codes)


def train_probe(
    train_codes: Tensor,
    train_labels: Tensor,
    test_codes: Tensor,
    test_labels: Tensor,
    hidden: int = 256,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> ProbeResult:
    """Fit a probe on codes `[N, d]` with labels `[N]` (int64, 0..C-1) and report its accuracies.

    Codes are standardised with the training split's mean and std (per dimension).
    """
    if train_codes.shape[0] != train_labels.shape[0] or test_codes.shape[0] != test_labels.shape[0]:
        raise ValueError("codes and labels must have the same number of rows")
    mean, std = train_codes.mean(0), train_codes.std(0).clamp_min(1e-6)
    train_x, test_x = (train_codes - mean) / std, (test_codes - mean) / std
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_probe(train_x.shape[1], hidden, n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(train_x.shape[0], generator=generator)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            loss = loss_fn(model(train_x[rows]), train_labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return ProbeResult(test_accuracy=_accuracy(model, test_x, test_labels), train_accuracy=_accuracy(model, train_x, train_labels), epochs=epochs)
