"""Every example under compile = True: the captured run ends where the eager run ends.

hpo is held to 1e-5 (relative, 50 iterations). reweighting and three_level train an Adam
upper on darts' finite differences: the eager engine itself turns a 1e-7 relative change of the
initial weights into ~1e-4 after 25 iterations, so any change of rounding (a fused kernel, a
different summation order) does the same. There the captured run must stay within a few times
the eager run's own spread. maml's unroll windows (5 steps) are captured after the first.
"""
import os

import pytest
import torch

import mlodsl
from tests.support.compiled_programs import assert_same_parameters

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


@pytest.fixture(autouse=True)
def python_backend(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "python")


def _run(name, iterations, compile, perturb=0.0):
    path = os.path.join(ROOT, "examples", name, f"{name}.mlo")
    plan = mlodsl.compile(path, overrides=[f"engine.iterations={iterations}",
                                           f"engine.compile={compile}"])
    engine = plan.build_engine(console=False)
    if perturb:
        with torch.no_grad():
            for problem in engine.problems.values():
                for p in problem.trainable_parameters():
                    p.mul_(1 + perturb)
    engine.run()
    params = {n: [p.detach().clone() for p in pr.trainable_parameters()]
              for n, pr in engine.problems.items()}
    return engine, params


def _spread(a, b):
    return max(float((x - y).abs().max() / x.abs().max().clamp_min(1e-12))
               for n in a for x, y in zip(a[n], b[n]))


def test_hpo_example():
    _, eager = _run("hpo", 50, False)
    engine, captured = _run("hpo", 50, True)
    assert engine.whole_iteration.captured_iterations == 49
    assert_same_parameters(eager, captured)


@pytest.mark.parametrize("name", ["reweighting", "three_level"])
def test_ill_conditioned_examples_stay_within_the_eager_spread(name):
    _, eager = _run(name, 25, False)
    _, nudged = _run(name, 25, False, perturb=1e-7)
    engine, captured = _run(name, 25, True)
    assert engine.whole_iteration.captured_iterations >= 23
    assert _spread(eager, captured) <= 5 * _spread(eager, nudged) + 1e-6


def test_maml_example_windows_run_captured():
    """Its 5-step unroll window runs captured after the first (after_step at the window's end
    only, as eagerly)."""
    _, eager = _run("maml", 17, False)
    engine, captured = _run("maml", 17, True)
    assert engine.whole_iteration.captured_iterations >= 12
    assert_same_parameters(eager, captured)
