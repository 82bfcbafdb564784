"""Gradient slices of compiled losses: same hypergradient, less work, checked once at run time.

Through the public surface: programs compiled with ``mlodsl.compile`` (small in-memory data),
run with darts/sama with slicing on and off (``CompiledProblem.target_loss`` returning None is
"off"), and the slice graphs themselves from ``plan.problems[...].loss_fn.slice_for``.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mlodsl
from mlodsl.compiler.back.adapters import CompiledProblem

torch.set_default_dtype(torch.float32)


class Net(nn.Module):
    """A tiny MLP that counts its forward passes."""

    def __init__(self, hidden_reader=None):
        super().__init__()
        self.fc0 = nn.Linear(6, 8, bias=False)
        self.fc1 = nn.Linear(8, 3, bias=False)
        self.calls = 0
        self.hidden = []  # a module read behind the graph's back (a list: not a submodule)

    def forward(self, x):
        self.calls += 1
        out = self.fc1(torch.tanh(self.fc0(x)))
        if self.hidden:
            out = out * (1 + self.hidden[0].decay[0].mean())
        return out


class Decay(nn.Module):
    """One coefficient per weight entry of a Net."""

    def __init__(self, like):
        super().__init__()
        self.decay = nn.ParameterList(nn.Parameter(torch.full_like(p.detach(), 0.1))
                                      for p in like.parameters())

    def forward(self):
        return tuple(self.decay)


def l2(net, decay):
    """``sum decay * w^2 / 2``."""
    net = getattr(net, "module", net)
    return sum((p.pow(2) * d).sum() for p, d in zip(net.parameters(), decay)) / 2


def data(seed, n=48, batch=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def program(lower_loss: str, method: str = "darts()") -> str:
    return f"""
import torch.nn.functional as F

problem classifier {{
    module     = net
    optimizer  = SGD(lr=0.1, momentum=0.9)
    data       = train
    loss(x, y) = {lower_loss}
}}

problem hpo depends classifier via {method} {{
    module     = decay
    optimizer  = Adam(lr=0.01)
    data       = val
    loss(x, y) = F.cross_entropy(classifier(x), y)
}}

engine {{
    iterations = 12
    seed       = 0
}}
"""


def compile_and_run(lower_loss: str, method: str = "darts()", sliced: bool = True,
                    hidden: bool = False):
    torch.manual_seed(0)
    net = Net()
    decay = Decay(net)
    if hidden:
        net.hidden.append(decay)
    plan = mlodsl.compile(program(lower_loss, method), namespace={
        "net": net, "decay": decay, "l2": l2, "train": data(1), "val": data(2)})
    if not sliced:
        for p in plan.problems.values():
            p.target_loss = lambda batch, targets: None
    plan.build_engine(console=False)
    plan.run()
    params = [p.detach().clone() for m in (net, decay) for p in m.parameters()]
    return plan, params, net.calls


LOSSES = [
    "F.cross_entropy(classifier(x), y) + l2(classifier, hpo())",
    "l2(classifier, hpo()) + F.cross_entropy(classifier(x), y)",
    "(F.cross_entropy(classifier(x), y) + 0.5 * l2(classifier, hpo())) / 2",
    "F.cross_entropy(classifier(x), y) - (-l2(classifier, hpo()))",
    "-F.cross_entropy(classifier(x), y) + 3 * l2(classifier, hpo()) - 1.0",
    "F.cross_entropy(classifier(x), y) * 0.5 + l2(classifier, hpo()) * F.mse_loss(x, x + 1)",
]


@pytest.mark.parametrize("loss", LOSSES)
def test_sliced_darts_gives_the_same_run(loss):
    _, on, calls_on = compile_and_run(loss, sliced=True)
    _, off, calls_off = compile_and_run(loss, sliced=False)
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # darts evaluates the lower's loss twice per upper step: 12 steps, 24 forward passes fewer
    # (one more is spent once, checking the slice against the full loss)
    assert calls_off - calls_on == 2 * 12 - 1


def test_sliced_sama_gives_the_same_run():
    loss = LOSSES[0]
    _, on, calls_on = compile_and_run(loss, "sama()", sliced=True)
    _, off, calls_off = compile_and_run(loss, "sama()", sliced=False)
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert calls_on < calls_off


def test_slice_graph_leaves_out_the_forward_pass():
    plan, _, _ = compile_and_run(LOSSES[2])
    loss_fn = plan.problems["classifier"].loss_fn
    sliced = loss_fn.slice_for(("hpo",))
    code = sliced.code
    assert "cross_entropy" not in code and "self.classifier(" not in code
    assert "l2" in code
    # same arguments as the full loss, so one batch feeds either
    assert [n.name for n in sliced.graph.nodes if n.op == "placeholder"] == ["x", "y"]
    # the value differs, the gradient in hpo's parameters does not
    x, y = data(3)[0]
    decay = list(plan.problems["hpo"].module.parameters())
    full = loss_fn((x, y))
    part = loss_fn((x, y), sliced)
    g_full = torch.autograd.grad(full, decay)
    g_part = torch.autograd.grad(part, decay)
    for a, b in zip(g_full, g_part):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(full, part)


@pytest.mark.parametrize("loss", [
    "F.cross_entropy(classifier(x), y)",                       # reads no target: nothing to do
    "F.cross_entropy(classifier(x), y) * l2(classifier, hpo())",  # a product: nothing drops
    "(F.cross_entropy(classifier(x), y) + l2(classifier, hpo())) ** 2",  # not on the spine
])
def test_no_slice_when_nothing_can_be_dropped(loss):
    plan = mlodsl.compile(program(loss), namespace={
        "net": Net(), "decay": Decay(Net()), "l2": l2, "train": data(1), "val": data(2)})
    assert plan.problems["classifier"].loss_fn.slice_for(("hpo",)) is None


def test_a_read_behind_the_graphs_back_is_caught_and_the_full_loss_used():
    loss = LOSSES[0]
    with pytest.warns(RuntimeWarning, match="disagreed with the full loss"):
        _, on, _ = compile_and_run(loss, sliced=True, hidden=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, off, _ = compile_and_run(loss, sliced=False, hidden=True)
    for a, b in zip(on, off):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_python_api_problems_have_no_slice():
    assert CompiledProblem.target_loss is not mlodsl.ImplicitProblem.target_loss
    from mlodsl.runtime.problem import Problem
    assert Problem.target_loss(object.__new__(mlodsl.ImplicitProblem), None, ("x",)) is None


# ----------------------------------------------------------------------------- engine compile

def test_compile_field_must_be_a_bool():
    from mlodsl import MLOError
    src = program(LOSSES[0]).replace("    seed       = 0", "    seed       = 0\n    compile    = 1")
    with pytest.raises(MLOError, match="'compile' of the engine must be True or False"):
        mlodsl.compile(src, namespace={"net": Net(), "decay": Decay(Net()), "l2": l2,
                                       "train": data(1), "val": data(2)})


def _run_compiled_program(method: str = "darts()", extra: str = ""):
    torch.manual_seed(0)
    net = Net()
    decay = Decay(net)
    src = program(LOSSES[0], method).replace(
        "    seed       = 0", "    seed       = 0\n    compile    = True\n" + extra)
    plan = mlodsl.compile(src, namespace={"net": net, "decay": decay, "l2": l2,
                                          "train": data(1), "val": data(2)})
    plan.build_engine(console=False)
    plan.run()
    return plan, [p.detach().clone() for m in (net, decay) for p in m.parameters()]


def test_compile_falls_back_to_eager_when_torch_compile_fails(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    # compile now, however short the run (else it stays eager and compiles nothing)
    monkeypatch.setenv("MLODSL_COMPILE_WAIT", "1")
    with pytest.warns(RuntimeWarning, match="torch.compile could not run the loss"):
        _, compiled = _run_compiled_program()
    _, eager, _ = compile_and_run(LOSSES[0], sliced=True)
    for a, b in zip(compiled, eager):  # compile = True also picks fused optimizers: rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_runs_whole_iterations_or_else_the_loss_graphs_through_torch_compile(
        monkeypatch):
    """darts: whole iterations captured and compiled. neumann with on_nan = "skip" (a host
    decision before every step: not capturable) falls back to today's eager steps with the
    loss graphs' first-order evaluations compiled. Both end where the eager runs end."""
    monkeypatch.setenv("MLODSL_COMPILE_WAIT", "1")  # compiled before the short run ends
    plan, compiled = _run_compiled_program("darts()")
    _, eager, _ = compile_and_run(LOSSES[0], "darts()", sliced=True)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    whole = plan.engine.whole_iteration
    assert whole.compile_seconds and whole.captured_iterations > 0
    method = "neumann(iterations=2, alpha=0.1)"
    with pytest.warns(RuntimeWarning, match="on_nan = 'skip'"):
        plan, compiled = _run_compiled_program(method, '    on_nan     = "skip"')
    _, eager, _ = compile_and_run(LOSSES[0], method, sliced=True)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    used = plan.problems["classifier"].loss_fn._compiled
    assert used and all(fn is not None for fn in used.values())
    assert plan.problems["classifier"].optimizer.defaults.get("fused") is True
