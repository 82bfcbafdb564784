"""The MAML example (examples/maml): checks cleanly, runs through the CLI and ``mlodsl.compile``
(same numbers as the Python-API twin), and meta-learning beats pretraining on every task."""
from __future__ import annotations

import math

import pytest
import torch
from tests.support.example_runs import assert_check_clean, cli_run, compile_run, example_path, needs_compiler

from examples.maml import maml_python
from examples.maml.parts import SineMLP, TaskDelta, adapted_mse, sine_tasks

MLO = example_path("maml")


def test_check_is_clean(capsys):
    assert_check_clean(MLO, capsys)


@needs_compiler
def test_cli_short_run(tmp_path):
    cli_run(MLO, tmp_path, iterations=20)


@needs_compiler
def test_compiled_short_run_matches_the_python_twin():
    plan, _ = compile_run(MLO, iterations=20)
    compiled = plan.final_validation()
    engine = maml_python.build("maml", iterations=20, seed=0)
    engine.history.console = False
    engine.run()
    twin = engine.validation()
    assert compiled["mse"] == pytest.approx(twin["mse"], rel=1e-5)
    assert compiled["mse_0"] == pytest.approx(twin["mse_0"], rel=1e-5)


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
