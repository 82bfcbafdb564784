"""The differentiable optimizers reproduce torch.optim's updates and hand their state back."""
import pytest
import torch

from mlodsl.runtime.optim import make_differentiable

CASES = [
    (torch.optim.SGD, dict(lr=0.1)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    (torch.optim.SGD, dict(lr=0.1, weight_decay=0.05, maximize=True)),
    (torch.optim.Adam, dict(lr=0.01)),
    (torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))),
    (torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g)),
            torch.nn.Parameter(torch.randn(5, generator=g))]


def _grad_fn(ps, k):
    # A deterministic, parameter-dependent gradient: grad of a smooth loss.
    loss = sum(((p - 0.1 * k) ** 2 * (1 + i)).sum() + (p ** 3).sum() * 0.01
               for i, p in enumerate(ps))
    return torch.autograd.grad(loss, ps)


@pytest.mark.parametrize("cls,kw", CASES, ids=[f"{c.__name__}-{k}" for c, k in CASES])
def test_matches_torch_over_several_steps_and_writes_back(cls, kw):
    ref, mine = _params(), _params()
    # Two param groups with different learning rates: hyperparameters are read per group.
    kw2 = dict(kw, lr=kw["lr"] * 3)
    opt_ref = cls([{"params": [ref[0]]}, {"params": [ref[1]], **kw2}], **kw)
    opt_mine = cls([{"params": [mine[0]]}, {"params": [mine[1]], **kw2}], **kw)
    for k in range(2):  # some torch steps first: the differentiable copy starts from state
        for ps, opt in ((ref, opt_ref), (mine, opt_mine)):
            for p, g in zip(ps, _grad_fn(ps, k)):
                p.grad = g
            opt.step()
    diff = make_differentiable(opt_mine, mine)
    fast = [p for p in mine]
    for k in range(2, 6):
        for p, g in zip(ref, _grad_fn(ref, k)):
            p.grad = g
        opt_ref.step()
        fast = diff.step(fast, _grad_fn(fast, k))
        for a, b in zip(fast, ref):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        for p, f in zip(mine, fast):
            p.copy_(f)
    diff.write_back()
    for k in range(6, 8):  # torch continues seamlessly from the written-back state
        for ps, opt in ((ref, opt_ref), (mine, opt_mine)):
            for p, g in zip(ps, _grad_fn(ps, k)):
                p.grad = g
            opt.step()
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)
    for p, q in zip(mine, ref):
        for key, val in opt_ref.state[q].items():
            torch.testing.assert_close(opt_mine.state[p][key], val, rtol=1e-6, atol=1e-6)


def test_update_is_differentiable():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([torch.nn.Parameter(w.detach().clone())], lr=0.1, momentum=0.9)
    diff = make_differentiable(opt, opt.param_groups[0]["params"])
    lam = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    fast = [w]
    for _ in range(3):
        g = torch.autograd.grad((lam * fast[0] ** 2).sum(), fast, create_graph=True)
        fast = diff.step(fast, g)
    (d,) = torch.autograd.grad(fast[0].sum(), lam)
    assert torch.isfinite(d) and d.abs() > 0


def test_unsupported_optimizer_is_an_mlo_error():
    from mlodsl import MLOError
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(MLOError, match="RMSprop"):
        make_differentiable(torch.optim.RMSprop([p]), [p])
