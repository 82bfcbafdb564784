"""Three levels: the top's hypergradient sums every path of the DAG, with any method per edge.

    low:  g_low(w; a, b)  = w'Aw/2 - w'(B a + C b)          w*(a, b) = A^-1 (B a + C b)
    mid:  g_mid(a; w, b)  = a'Da/2 - a'E b + k'w              (reads low and top)
    top:  f(b; w, a)      = |w - q|^2/2 + |a - r|^2/2 + s|b|^2/2

``g_mid`` is linear in ``w`` (and ``w*`` affine), so implicit differentiation level by level is
exact and the top's hypergradient must equal the derivative of the nested exact solution
``F(b) = f(b, w*(a*(b), b), a*(b))``, checked by central finite differences. The paths:
top->low, top->mid, top->mid->low. Only ``mid`` declares ``low`` as a lower, so the method
pushing ``low``'s cotangent (to both ``mid`` and ``top``) is the *middle* edge's.
"""
import pytest
import torch

from tests.support.hg_problems import DT, Vec, rel_err
from mlodsl import Config, Engine, EngineConfig, ImplicitProblem, IterativeProblem
from mlodsl.runtime.hypergrad.chain import total_gradient

g = torch.Generator().manual_seed(3)
NW, NA, NB = 4, 3, 2


def _spd(n, scale=1.0):
    m = torch.randn(n, n, generator=g, dtype=DT)
    return scale * (m @ m.T / n + torch.eye(n, dtype=DT))


A, D = _spd(NW), _spd(NA)
B, C, E = (torch.randn(*s, generator=g, dtype=DT) for s in ((NW, NA), (NW, NB), (NA, NB)))
k, q, r = (torch.randn(n, generator=g, dtype=DT) for n in (NW, NW, NA))
S = 0.3
B0 = torch.randn(NB, generator=g, dtype=DT)


def nested(b):
    a = torch.linalg.solve(D, E @ b - B.T @ torch.linalg.solve(A, k))
    w = torch.linalg.solve(A, B @ a + C @ b)
    return w, a


def F(b):
    w, a = nested(b)
    return ((w - q) ** 2).sum() / 2 + ((a - r) ** 2).sum() / 2 + S * (b ** 2).sum() / 2


class Low(ImplicitProblem):
    def training_step(self, batch):
        w, a, b = self.module(), self.mid(), self.top()
        return w @ A @ w / 2 - w @ (B @ a + C @ b)


class LowIter(IterativeProblem):
    training_step = Low.training_step


class Mid(ImplicitProblem):
    def training_step(self, batch):
        a, w, b = self.module(), self.low(), self.top()
        return a @ D @ a / 2 - a @ E @ b + k @ w


class Top(ImplicitProblem):
    def training_step(self, batch):
        b, w, a = self.module(), self.low(), self.mid()
        return ((w - q) ** 2).sum() / 2 + ((a - r) ** 2).sum() / 2 + S * (b ** 2).sum() / 2


def _engine(top_method, mid_method, lr=0.0, iterative_low=False):
    w, a = nested(B0)
    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=lr)
    mods = Vec(w), Vec(a), Vec(B0)
    # Betty's reading: each lower's Config names the method of the edges above it.
    low = (LowIter if iterative_low else Low)(name="low", module=mods[0], optimizer=sgd(mods[0]),
                                              train_data_loader=[0], config=Config(**mid_method))
    mid = Mid(name="mid", module=mods[1], optimizer=sgd(mods[1]), train_data_loader=[0],
              config=Config(**top_method))
    top = Top(name="top", module=mods[2], optimizer=sgd(mods[2]), train_data_loader=[0])
    engine = Engine(config=EngineConfig(train_iters=1, valid_step=0), problems=[top, mid, low],
                    dependencies={"l2u": {low: [mid], mid: [top]},
                                  "u2l": {top: [mid, low], mid: [low]}})
    for p in (low, mid, top):
        p.next_batch()
    return engine, top


def _fd():
    eps = 1e-5
    out = torch.zeros(NB, dtype=DT)
    for i in range(NB):
        e = torch.zeros(NB, dtype=DT)
        e[i] = eps
        out[i] = (F(B0 + e) - F(B0 - e)) / (2 * eps)
    return out


CG = dict(type="cg", cg_iterations=10, cg_alpha=0.5)
NEU = dict(type="neumann", neumann_iterations=600, neumann_alpha=0.25)


@pytest.mark.parametrize("top_m,mid_m", [(CG, CG), (NEU, CG), (CG, NEU)],
                         ids=["cg-cg", "neumann-cg", "cg-neumann"])
def test_top_hypergradient_matches_finite_difference(top_m, mid_m):
    engine, top = _engine(top_m, mid_m)
    loss = engine.evaluate_loss(top, 0)
    got = total_gradient(engine, top, loss)[0]
    assert rel_err(got, _fd()) <= 1e-4


def test_dropping_a_path_is_detected():
    engine, top = _engine(CG, dict(type="first_order"))
    got = total_gradient(engine, top, engine.evaluate_loss(top, 0))[0]
    assert rel_err(got, _fd()) > 1e-2


@pytest.mark.parametrize("mid_type", ["darts", "neumann", "cg", "sama", "unroll", "first_order"])
def test_every_method_runs_at_the_middle_level(mid_type):
    """The full schedule with each method on mid -> low (unroll: low steps differentiably)."""
    engine, top = _engine(CG, dict(type=mid_type, first_order=False), lr=0.05,
                          iterative_low=mid_type == "unroll")
    before = top.module.p.detach().clone()
    engine.config.train_iters = 3
    engine.run()
    after = top.module.p.detach()
    assert torch.isfinite(after).all() and not torch.equal(before, after)
