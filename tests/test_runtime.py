"""TF32 on CUDA only, inside the stage, restored after; and not part of any fingerprint (it changes how, not what)."""

from __future__ import annotations

import pytest
import torch

from hebmctl.runtime import cuda_matmul_precision
from hebmctl.schemas.prior import TrainPriorConfig
from hebmctl.schemas.sample import SampleConfig


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_is_set_on_cuda_inside_the_block_and_restored_after(tf32):
    before = flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    try:
        with cuda_matmul_precision(torch.device("cuda"), tf32):  # the flags need no GPU to be read or set
            assert flags() == (tf32, tf32)
        assert flags() == (not tf32, not tf32)
        with pytest.raises(RuntimeError), cuda_matmul_precision(torch.device("cuda"), tf32):
            raise RuntimeError("a failing stage")
        assert flags() == (not tf32, not tf32)  # restored on the error path too
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_the_cpu_is_left_alone():
    before = flags()
    with cuda_matmul_precision(torch.device("cpu"), not before[0]):
        assert flags() == before


def test_tf32_is_not_in_the_fingerprints():
    prior = dict(run="runs/x", scheme="diffusion")
    assert TrainPriorConfig(**prior, tf32=False).hashed_fields() == TrainPriorConfig(**prior).hashed_fields()
    assert TrainPriorConfig(**prior).tf32 is True  # the default, measured within the seed spread
    sample = dict(run="runs/x", prior="diffusion")
    assert SampleConfig(**sample, tf32=False).hashed_fields() == SampleConfig(**sample).hashed_fields()
