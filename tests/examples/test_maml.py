"""The MAML example (examples/maml): its task streams and adaptation, and meta-learning beats
pretraining on every task (what every example does is in test_every_example.py)."""
from __future__ import annotations

import math

import pytest
import torch

from examples.maml import maml_python
from examples.maml.parts import SineMLP, TaskDelta, adapted_mse, sine_tasks

def test_support_and_query_streams_stay_aligned():
    support = list(sine_tasks("support", tasks=2, shots=3, batches=3, repeat=2, seed=4))
    query = list(sine_tasks("query", tasks=2, shots=3, batches=3, seed=4))
    assert len(support) == 6 and len(query) == 3
    assert torch.equal(support[2][0], support[3][0])  # one task batch, repeated

    # the same amplitude and phase: a sine through both sets is fitted by one curve
    def amp_phase(x, y):
        basis = torch.cat([torch.sin(x), torch.cos(x)], dim=-1)
        return torch.linalg.lstsq(basis, y).solution

    for t in range(3):
        assert torch.allclose(amp_phase(*support[2 * t]), amp_phase(*query[t]), atol=1e-4)


def test_delta_zero_is_theta_and_adaptation_lowers_the_error():
    torch.manual_seed(0)
    net = SineMLP(8)
    x = torch.randn(3, 5, 1)
    # Zero deltas reproduce theta; the batched path may round differently from the plain one.
    assert torch.allclose(net(x), net(x, TaskDelta(net, tasks=3)()), rtol=1e-6, atol=1e-7)
    out = adapted_mse(net, steps=3, lr=0.01, tasks=50)
    assert math.isfinite(out["mse"]) and out["mse"] < out["mse_0"]


@pytest.mark.slow
def test_maml_beats_pretraining_on_all_tasks():
    results = {}
    for variant in ("maml", "pretrained"):
        engine = maml_python.build(variant, iterations=1500, seed=0)
        engine.history.console = False
        engine.run()
        results[variant] = engine.validation()["mse"]
    assert results["maml"] < 0.85 * results["pretrained"], results
