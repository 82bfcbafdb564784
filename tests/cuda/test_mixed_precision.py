"""Every hypergradient method stays accurate under bf16/fp16 autocast on the device under test:
the data-reweighting program of ``tests.support.reweighting`` in float32 with mixed precision,
against the same method in float64 on the same device (as ``tests/runtime/hypergrad`` does on
the CPU)."""
import pytest
import torch

from tests.support import cuda as H
from tests.support.reweighting import CASES, TOLERANCE, hypergradient, rel_err

pytestmark = H.requires_device


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_hypergradient_within_tolerance_of_float64_on_the_device(case, precision):
    method, config, opt = CASES[case]
    reference = hypergradient(method, config, torch.float64, "fp32", opt, device=H.DEVICE)
    got = hypergradient(method, config, torch.float32, precision, opt, device=H.DEVICE)
    error = rel_err(got, reference)
    assert error < TOLERANCE[precision], f"{case} under {precision}: {error:.3%} off float64"
