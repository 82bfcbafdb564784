"""Every hypergradient method stays accurate under mixed precision (bf16 and fp16 autocast).

On the data-reweighting program of ``tests.support.reweighting`` (per-example weight logits
above an ``nn.Linear``), one iteration in float32 with ``EngineConfig(precision=...)`` gives the
upper's hypergradient; the reference is the same method on the same program in float64 without
autocast, from the same point, so the error is what mixed precision costs, not the method's own
approximation error. ``darts`` at ``alpha`` 0.01 and 0.001 and ``sama`` at 0.01 fail this by
5-60% when their finite differences run under autocast.
"""
from __future__ import annotations

import pytest
import torch

from tests.support.reweighting import CASES, TOLERANCE, hypergradient, rel_err


@pytest.fixture(scope="module")
def references():
    return {name: hypergradient(method, config, torch.float64, "fp32", opt)
            for name, (method, config, opt) in CASES.items()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_hypergradient_within_tolerance_of_float64(case, precision, references):
    method, config, opt = CASES[case]
    reference = references[case]
    assert torch.linalg.vector_norm(reference) > 1e-3  # something to compare
    error = rel_err(hypergradient(method, config, torch.float32, precision, opt), reference)
    assert error < TOLERANCE[precision], f"{case} under {precision}: {error:.3%} off float64"
