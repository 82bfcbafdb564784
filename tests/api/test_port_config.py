"""Who names the method when both problems' ``Config`` objects speak: Betty's rule, loudly.

A Betty program sets ``type`` on the *lower* (Betty reads it there); the seed sets it on the
*upper*. The lower's explicit setting wins (as in Betty), the upper's is used where only it
speaks (as in the seed), and a disagreement is a :class:`ConfigConflictWarning` naming both.
Checked on a quadratic whose hypergradient is known in closed form:

    lower  f(w, lam) = 1/2 (w - lam)^T A (w - lam)      so  w*(lam) = lam,  dw*/dlam = I
    upper  g(w)      = 1/2 |w - t|^2                    so  dg/dlam = w - t

``cg`` (3 iterations, exact on 3 distinct eigenvalues) gives ``w - t``; ``darts`` (inverse
Hessian taken as the identity) gives ``A (w - t)``.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.problems import ImplicitProblem
from mlodsl.runtime.config import ConfigConflictWarning

A = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
T = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
W0 = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
LAM0 = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)


class Vec(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.v = torch.nn.Parameter(value.clone())

    def forward(self):
        return self.v


class Lower(ImplicitProblem):
    def training_step(self, batch):
        d = self.module() - self.upper()
        return 0.5 * (d * A * d).sum()


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return 0.5 * ((self.lower() - T) ** 2).sum()


def upper_gradient(upper_config, lower_config):
    """The upper's gradient after one iteration (the lower does not move: lr 0; SGD lr 1)."""
    lw, uw = Vec(W0), Vec(LAM0)
    lower = Lower(name="lower", module=lw, optimizer=torch.optim.SGD(lw.parameters(), lr=0.0),
                  train_data_loader=[0], config=lower_config)
    upper = Upper(name="upper", module=uw, optimizer=torch.optim.SGD(uw.parameters(), lr=1.0),
                  train_data_loader=[0], config=upper_config)
    engine = Engine([upper, lower], EngineConfig(train_iters=1),
                    {"u2l": {upper: [lower]}, "l2u": {lower: [upper]}})
    engine.run()
    return engine.edges[("upper", "lower")].method, LAM0 - uw.v.detach()


CG = dict(type="cg", cg_iterations=3)


def test_the_lower_wins_when_both_set_the_method_and_a_warning_names_both():
    with pytest.warns(ConfigConflictWarning) as caught:
        method, grad = upper_gradient(Config(type="darts"), Config(**CG))
    [w] = caught
    assert "'darts' on the upper 'upper'" in str(w.message)
    assert "'cg' on the lower 'lower'" in str(w.message) and "using 'cg'" in str(w.message)
    assert method == "cg"
    torch.testing.assert_close(grad, W0 - T)


def test_the_upper_names_the_method_when_the_lower_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigConflictWarning)
        method, grad = upper_gradient(Config(type="darts", step=1), Config())
    assert method == "darts"
    torch.testing.assert_close(grad, A * (W0 - T), rtol=1e-6, atol=1e-6)


def test_the_lower_names_the_method_when_the_upper_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigConflictWarning)
        method, grad = upper_gradient(Config(), Config(**CG))
    assert method == "cg"
    torch.testing.assert_close(grad, W0 - T)


def test_a_consistent_three_level_betty_program_does_not_warn():
    # Betty's idiom: each lower's Config speaks for the edge above it; the middle problem's
    # unroll_steps is for the top, not a disagreement with its own lower.
    class Top(ImplicitProblem):
        def training_step(self, batch):
            return (self.upper() ** 2).sum()

    lw, mw, tw = Vec(W0), Vec(LAM0), Vec(LAM0)
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)  # noqa: E731
    lower = Lower(name="lower", module=lw, optimizer=sgd(lw), train_data_loader=[0],
                  config=Config(type="cg", unroll_steps=2))
    mid = Upper(name="upper", module=mw, optimizer=sgd(mw), train_data_loader=[0],
              config=Config(type="darts", unroll_steps=3))
    top = Top(name="top", module=tw, optimizer=sgd(tw), train_data_loader=[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigConflictWarning)
        engine = Engine([top, mid, lower], EngineConfig(train_iters=6),
                        {"l2u": {lower: [mid], mid: [top]}, "u2l": {mid: [lower]}})
    assert (engine.edges[("upper", "lower")].method, engine.edges[("upper", "lower")].every) \
        == ("cg", 2)
    assert (engine.edges[("top", "upper")].method, engine.edges[("top", "upper")].every) \
        == ("darts", 3)
