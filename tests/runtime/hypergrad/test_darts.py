"""darts equals its defining central finite difference; it never touches live parameters."""
import torch
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem

DIM, HDIM = 5, 3
gen = torch.Generator().manual_seed(0)
A = torch.randn(DIM, HDIM, generator=gen, dtype=torch.float64)
C = torch.randn(DIM, generator=gen, dtype=torch.float64)
X = torch.randn(8, DIM, generator=gen, dtype=torch.float64)


def lower_loss(w, lam):
    """A non-quadratic lower: its mixed derivative is not constant, so the finite difference
    differs from the exact derivative and the comparison is meaningful."""
    return 0.5 * (X @ w).pow(2).mean() + torch.tanh(w @ (A @ lam)).sum() + 0.1 * w.pow(4).sum()


def upper_loss(w):
    return 0.5 * (w - C).pow(2).sum()


class Vec(nn.Module):
    def __init__(self, n, seed):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(seed),
                                          dtype=torch.float64))

    def forward(self):
        return self.w


class Lower(ImplicitProblem):
    def training_step(self, batch):
        return lower_loss(self.module.w, self.upper())


class Upper(ImplicitProblem):
    def training_step(self, batch):
        return upper_loss(self.lower.module.w)


class Capture(Engine):
    grads = []

    def before_optimizer_step(self, problem):
        if problem.name == "upper":
            self.grads.append(problem.module.w.grad.clone())


def test_darts_matches_its_finite_difference_definition():
    alpha = 0.05
    lo_mod, up_mod = Vec(DIM, 1), Vec(HDIM, 2)
    lo = Lower("lower", Config(), lo_mod, torch.optim.SGD(lo_mod.parameters(), lr=0.0),
               train_data_loader=[torch.zeros(1)])
    up = Upper("upper", Config(type="darts", darts_alpha=alpha), up_mod,
               torch.optim.SGD(up_mod.parameters(), lr=0.0), train_data_loader=[torch.zeros(1)])
    w0, lam0 = lo_mod.w.detach().clone(), up_mod.w.detach().clone()
    engine = Capture(EngineConfig(train_iters=1), [up, lo], {"l2u": {lo: [up]}})
    engine.history.console = False
    engine.run()
    got = Capture.grads[-1]

    # the definition, written out by hand
    w = w0.clone()
    v = w - C  # d upper / d w
    eps = alpha / v.norm()
    lam = lam0.clone().requires_grad_()
    g_plus = torch.autograd.grad(lower_loss(w + eps * v, lam), lam)[0]
    g_minus = torch.autograd.grad(lower_loss(w - eps * v, lam), lam)[0]
    expected = -(g_plus - g_minus) / (2 * eps)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-10)

    # and it approximates the exact mixed second derivative -d2g/dlam dw . v
    lam = lam0.clone().requires_grad_()
    w_req = w0.clone().requires_grad_()
    gw = torch.autograd.grad(lower_loss(w_req, lam), w_req, create_graph=True)[0]
    exact = -torch.autograd.grad(gw, lam, grad_outputs=v)[0]
    assert torch.allclose(got, exact, rtol=1e-2)

    # live parameters are where they were (lr=0): nothing was perturbed in place
    assert torch.equal(lo_mod.w.detach(), w0) and torch.equal(up_mod.w.detach(), lam0)


def test_first_order_gives_only_the_direct_gradient():
    lo_mod, up_mod = Vec(DIM, 1), Vec(HDIM, 2)
    lo = Lower("lower", Config(), lo_mod, torch.optim.SGD(lo_mod.parameters(), lr=0.0),
               train_data_loader=[torch.zeros(1)])
    up = Upper("upper", Config(type="first_order"), up_mod,
               torch.optim.SGD(up_mod.parameters(), lr=0.0), train_data_loader=[torch.zeros(1)])
    engine = Capture(EngineConfig(train_iters=1), [up, lo], {"l2u": {lo: [up]}})
    engine.history.console = False
    engine.run()
    assert torch.count_nonzero(Capture.grads[-1]) == 0  # upper reads lambda only via the lower
