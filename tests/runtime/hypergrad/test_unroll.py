"""``unroll`` is exact autograd through the lower's steps; checkpointing changes memory, not values."""
import pytest
import torch

from tests.support.hg_problems import (DT, RidgeLowerIter, rel_err, ridge_data, ridge_engine, ridge_exact)
from mlodsl import Engine

DATA = ridge_data()
X, Y, XV, YV, LAM = DATA
W0 = torch.zeros(X.shape[1], dtype=DT)

OPTS = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.3), dict(lr=0.3)),
    "momentum": (lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9), dict(lr=0.2, mu=0.9)),
    "adam": (lambda p: torch.optim.Adam(p, lr=0.05), dict(lr=0.05, adam=True)),
}


def explicit_unrolled_hypergradient(T, lr, mu=0.0, adam=False, b1=0.9, b2=0.999, eps=1e-8):
    """Autograd through a hand-written loop of T optimizer steps on the ridge lower."""
    lam = LAM.clone().requires_grad_(True)
    w, buf, m, v = W0.clone().requires_grad_(), None, torch.zeros_like(W0), torch.zeros_like(W0)
    for t in range(1, T + 1):
        loss = ((X @ w - Y) ** 2).sum() / (2 * len(Y)) + (lam * w ** 2).sum() / 2
        (g,) = torch.autograd.grad(loss, w, create_graph=True)
        if adam:
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w = w - lr / (1 - b1 ** t) * m / (v.sqrt() / (1 - b2 ** t) ** 0.5 + eps)
        elif mu:
            buf = g if buf is None else mu * buf + g
            w = w - lr * buf
        else:
            w = w - lr * g
    f = ((XV @ w - YV) ** 2).sum() / (2 * len(YV))
    return torch.autograd.grad(f, lam)[0]


def engine_hypergradient(T, make_opt, checkpoint=False, cls=RidgeLowerIter, config=None,
                         data=DATA):
    seen = {}

    class Spy(Engine):
        def before_optimizer_step(self, problem):
            super().before_optimizer_step(problem)
            if problem.name == "upper":
                seen["grad"] = problem.module.p.grad.clone()

    cfg = {"first_order": False, "unroll_checkpoint": checkpoint, **(config or {})}
    base, upper, lower = ridge_engine("unroll", cfg, w0=W0, data=data, lower_opt=make_opt,
                                      lower_cls=cls, every=T)
    engine = Spy(config=base.config, problems=[upper, lower],
                 dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    engine.config.train_iters = T
    engine.run()
    return seen["grad"], engine, lower


@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("checkpoint", [False, True])
def test_unroll_equals_explicit_loop(name, checkpoint):
    make_opt, kw = OPTS[name]
    T = 4
    got, _, lower = engine_hypergradient(T, make_opt, checkpoint)
    want = explicit_unrolled_hypergradient(T, **kw)
    assert rel_err(got, want) <= 1e-6
    # The window closed: fast weights written back, the torch optimizer continues from them.
    assert not lower.unrolled_window.is_open and lower.count == T


def test_unroll_via_type_on_an_implicit_problem():
    from tests.support.hg_problems import RidgeLower
    got, _, _ = engine_hypergradient(3, OPTS["sgd"][0], cls=RidgeLower)
    assert rel_err(got, explicit_unrolled_hypergradient(3, **OPTS["sgd"][1])) <= 1e-6


def test_first_order_unroll_drops_the_lower_path():
    got, _, _ = engine_hypergradient(3, OPTS["sgd"][0], config=dict(first_order=True))
    assert float(got.abs().max()) == 0.0  # f reads lambda only through the lower


def test_unroll_approaches_the_implicit_hypergradient():
    _, _, exact = ridge_exact(*DATA)
    errs = [rel_err(engine_hypergradient(T, OPTS["sgd"][0])[0], exact) for T in (5, 20, 80)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4


def _saved_bytes(T, checkpoint):
    """Bytes of tensors saved for backward still alive when the upper starts its step.

    Large lower batch (n = 400 rows, 5 features): the activations a plain unrolled step keeps
    (residuals, gradient graph) are n-sized, the fast weights and momentum 5-sized.
    """
    import weakref
    from torch.autograd.graph import saved_tensors_hooks
    from tests.support import hg_problems
    refs = {}
    live = {}
    original = hg_problems.RidgeUpper.training_step

    def upper_step(self, batch):
        if "n" not in live:  # the lower's window is over: what is still held?
            live["n"] = sum(nb for r, nb in refs.values() if r() is not None)
        return original(self, batch)

    def pack(t):
        if "n" not in live:
            refs.setdefault(id(t), (weakref.ref(t), t.numel() * t.element_size()))
        return t

    hg_problems.RidgeUpper.training_step = upper_step
    try:
        with saved_tensors_hooks(pack, lambda t: t):
            engine_hypergradient(T, OPTS["momentum"][0], checkpoint, data=BIG)
    finally:
        hg_problems.RidgeUpper.training_step = original
    return live["n"]


BIG = ridge_data(n=400)


def test_checkpointing_stores_less_and_flattens_growth():
    plain = [_saved_bytes(T, False) for T in (2, 8)]
    ckpt = [_saved_bytes(T, True) for T in (2, 8)]
    assert ckpt[1] < plain[1]
    assert (ckpt[1] - ckpt[0]) < 0.2 * (plain[1] - plain[0])  # growth per step: >5x smaller


@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("slots", [0, 1, 2])
def test_checkpointed_unroll_is_exact_for_every_snapshot_budget(name, slots, monkeypatch):
    """T = 7 with 0-2 snapshot slots: replays from the first step, from kept snapshots, and
    snapshots taken during the backward all give the uncheckpointed hypergradient."""
    from mlodsl.runtime.hypergrad import unroll as unroll_mod
    monkeypatch.setattr(unroll_mod, "_slots_for", lambda length, budget=None: slots)
    make_opt, kw = OPTS[name]
    got, _, _ = engine_hypergradient(7, make_opt, checkpoint=True)
    plain, _, _ = engine_hypergradient(7, make_opt, checkpoint=False)
    assert rel_err(got, plain) <= 1e-6
    assert rel_err(got, explicit_unrolled_hypergradient(7, **kw)) <= 1e-6


@pytest.mark.parametrize("name", list(OPTS))
def test_first_order_unroll_ignores_checkpointing(name):
    make_opt, _ = OPTS[name]
    cfg = dict(first_order=True)
    got, _, _ = engine_hypergradient(5, make_opt, checkpoint=True, config=cfg)
    plain, _, _ = engine_hypergradient(5, make_opt, checkpoint=False, config=cfg)
    assert torch.equal(got, plain)
