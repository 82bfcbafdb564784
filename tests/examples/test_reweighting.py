"""The data-reweighting example (examples/reweighting): its data and loss, and it learns (what
every example does is in test_every_example.py)."""
from __future__ import annotations

import pytest
import torch

from examples.reweighting import reweighting_python
from examples.reweighting.parts import WeightNet, meta_digits, noisy_digits, reweighted_ce

def test_data_is_long_tailed_noisy_and_meta_is_clean_balanced():
    x, noisy, clean = noisy_digits(imbalance=10, noise=0.4, with_clean=True).tensors
    counts = torch.bincount(clean, minlength=10)
    assert counts[0] >= 8 * counts[9]  # about tenfold
    assert 0.3 < (noisy != clean).float().mean().item() < 0.45  # 40% redrawn, some the same
    _, y = meta_digits(per_class=10).tensors
    assert torch.equal(torch.bincount(y), torch.full((10,), 10))


def test_reweighted_ce_is_a_weighted_mean_and_feeds_the_weight_net():
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    net = WeightNet(hidden=4)
    loss = reweighted_ce(logits, y, net)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert reweighted_ce(logits, y, lambda l: torch.ones_like(l)).item() == pytest.approx(plain.item())


@pytest.mark.slow
def test_short_twin_runs_beat_chance_clearly():
    for variant in ("baseline", "darts"):
        engine = reweighting_python.build(variant, iterations=150, seed=0)
        engine.history.console = False
        engine.run()
        assert engine.validation()["acc"] > 40.0, variant  # chance is 10%
