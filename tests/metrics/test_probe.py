"""Latent probes: a separable code is learned, a code without class information is not."""

from __future__ import annotations

import torch

from hebmctl.metrics.probe import train_probe


def _data(n: int, informative: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    codes = torch.randn(n, 6, generator=g)
    if informative:
        codes[:, :4] += 5.0 * torch.nn.functional.one_hot(labels, 4)
    return codes, labels


def test_probe_learns_class_information(single_thread):
    (x, y), (xt, yt) = _data(800, True, 0), _data(400, True, 1)
    result = train_probe(x, y, xt, yt, hidden=32, epochs=30, seed=0)
    assert result.test_accuracy > 0.9


def test_probe_is_at_chance_without_information(single_thread):
    (x, y), (xt, yt) = _data(800, False, 0), _data(400, False, 1)
    result = train_probe(x, y, xt, yt, hidden=32, epochs=10, seed=0)
    assert result.test_accuracy < 0.4  # chance is 0.25


def test_probe_is_deterministic(single_thread):
    (x, y), (xt, yt) = _data(300, True, 0), _data(100, True, 1)
    a = train_probe(x, y, xt, yt, hidden=16, epochs=3, seed=7)
    b = train_probe(x, y, xt, yt, hidden=16, epochs=3, seed=7)
    assert a == b
