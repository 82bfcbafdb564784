"""``cg`` and ``neumann`` reach the exact implicit hypergradient on ridge regression (float64)."""
import pytest
import torch

from tests.support.hg_problems import hypergradient, rel_err, ridge_data, ridge_engine, ridge_exact
from mlodsl import Engine

DATA = ridge_data()
W_STAR, H, EXACT = ridge_exact(*DATA)
LMAX = float(torch.linalg.eigvalsh(H).max())


def _hg(method, **cfg):
    engine, upper, lower = ridge_engine(method, cfg, data=DATA)
    return hypergradient(engine, upper, lower)


@pytest.mark.parametrize("alpha", [1e-3, 1.0, 1e3])
def test_cg_exact_for_every_alpha(alpha):
    errs = [rel_err(_hg("cg", cg_iterations=k, cg_alpha=alpha), EXACT) for k in (1, 2, 3, 6)]
    assert errs[-1] <= 1e-6
    assert errs[0] > errs[1] > errs[2] > errs[3]


def test_cg_alpha_only_rescales():
    a = _hg("cg", cg_iterations=2, cg_alpha=0.05)
    b = _hg("cg", cg_iterations=2, cg_alpha=20.0)
    assert rel_err(a, b) <= 1e-10  # truncated iterates too, not only the converged answer


def test_cg_tol_stops_early_and_stays_exact():
    g = _hg("cg", cg_iterations=100, cg_tol=1e-12)
    assert rel_err(g, EXACT) <= 1e-6


@pytest.mark.parametrize("frac", [0.3, 0.6, 0.9])
def test_neumann_exact_and_error_falls(frac):
    alpha = frac * 2 / LMAX  # inside the convergent range (0, 2 / lambda_max)
    errs = [rel_err(_hg("neumann", neumann_iterations=k, neumann_alpha=alpha), EXACT)
            for k in (1, 5, 20, 400)]
    assert errs[-1] <= 1e-6
    assert errs[0] > errs[1] > errs[2] > errs[3]


def test_neumann_one_iteration_formula():
    # K = 1: x = alpha (2 v - alpha H v)
    alpha = 0.3
    X, y, Xv, yv, lam = DATA
    v = Xv.T @ (Xv @ W_STAR - yv) / len(yv)
    x = alpha * (2 * v - alpha * H @ v)
    assert rel_err(_hg("neumann", neumann_iterations=1, neumann_alpha=alpha), -W_STAR * x) < 1e-12


def test_engine_step_applies_the_hypergradient():
    """Through Engine.run: SGD upper with lr=1 moves by exactly minus the hypergradient."""
    seen = {}

    class Spy(Engine):
        def before_optimizer_step(self, problem):
            if problem.name == "upper":
                seen["grad"] = problem.module.p.grad.clone()

    _, upper, lower = ridge_engine("cg", dict(cg_iterations=10), data=DATA)
    engine = Spy(config=_.config, problems=[upper, lower],
                 dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    before = upper.module.p.detach().clone()
    engine.run()
    assert rel_err(seen["grad"], EXACT) <= 1e-6
    assert rel_err(before - upper.module.p.detach(), EXACT) <= 1e-6
