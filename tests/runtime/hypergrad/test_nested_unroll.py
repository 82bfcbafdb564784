"""Nested unrolling equals the explicit nested loop.

With ``unroll`` on stacked edges, the bottom's window must stay on the tape until every problem
above it has taken its hypergradient: the top's paths into the bottom (direct, and through the
middle's unrolled steps) are then those of a hand-written loop of the same steps. Before issue
13 the middle's step closed the bottom's window and these paths were dropped (relative errors
0.86 and 0.69).
"""
import pytest
import torch

from tests.support.multilevel import (build_engine, explicit_loop, rel_err, run_and_record)
from tests.support.shapes import THREE_LEVEL_READS, three_level

LRS = {"low": 0.2, "mid": 0.15, "top": 0.1}


def _unroll(every):
    return dict(type="unroll", unroll_steps=every, first_order=False)


@pytest.mark.parametrize("middle", ["linear", "quadratic"])
@pytest.mark.parametrize("mid_every,top_every", [(2, 2), (3, 1), (1, 2)])
def test_unroll_over_unroll_equals_the_explicit_loop(middle, mid_every, top_every):
    program = three_level(middle=middle)
    engine = build_engine(program, {"top": _unroll(top_every), "mid": _unroll(mid_every)},
                          THREE_LEVEL_READS, lrs=LRS, values=program.start)
    iterations = mid_every * top_every
    got = run_and_record(engine, "top", iterations=iterations)
    order = (["low"] * mid_every + ["mid"]) * top_every + ["top"]
    want = explicit_loop(program, order, LRS, "top")
    assert len(got) == 1 and rel_err(got[0], want) <= 1e-10
    # every window closed after the top's step, written back: the middle's own
    # hypergradients (through its window of the bottom's last steps) moved it as in the loop
    after = explicit_loop(program, order, LRS)
    for name in ("low", "mid"):
        assert engine.problems[name].current_parameters()[0] is \
            engine.problems[name].module.p
        assert rel_err(engine.problems[name].module.p.detach(), after[name]) <= 1e-12


def _cg_over_unroll_reference(program, every):
    """``top -> mid`` by (converged) cg, ``mid -> low`` by unroll: the explicit loop of the
    bottom's steps, the middle's in-place step, and the implicit formula for the middle:

        dF/db = d_b f + (dw/db)' c_w - (d^2 g_mid / db da) H_mid^{-1} (c_a + (dw/da)' c_w)

    with ``w`` the bottom's unrolled steps (functions of the middle's and the top's values
    they read) and ``g_mid`` linear in ``w`` (so its Hessian does not see the tape)."""
    start = {k: v.clone().requires_grad_(True) for k, v in program.start.items()}
    vals = dict(start)
    for _ in range(every):
        (g,) = torch.autograd.grad(program.by_name["low"].loss(vals), vals["low"],
                                   create_graph=True)
        vals["low"] = vals["low"] - LRS["low"] * g
    (ga,) = torch.autograd.grad(program.by_name["mid"].loss(vals), vals["mid"],
                                retain_graph=True)
    a1 = (vals["mid"] - LRS["mid"] * ga).detach().requires_grad_(True)
    b = start["top"]
    f = program.by_name["top"].loss({**vals, "mid": a1})
    c_b, c_a0, c_a1 = torch.autograd.grad(f, [b, start["mid"], a1])
    c_mid = c_a0 + c_a1  # the tape's path reads the middle's value before its step
    g_mid = program.by_name["mid"].loss
    a = a1.detach().requires_grad_(True)
    bl = b.detach().requires_grad_(True)
    grad_a = torch.autograd.grad(g_mid({**vals, "low": vals["low"].detach(), "mid": a,
                                        "top": bl}), a, create_graph=True)[0]
    H = torch.stack([torch.autograd.grad(grad_a[i], a, retain_graph=True)[0]
                     for i in range(len(a))])
    x = torch.linalg.solve(H, c_mid)
    (mixed,) = torch.autograd.grad(grad_a @ x, bl)
    return c_b - mixed


@pytest.mark.parametrize("every", [1, 2, 3])
def test_cg_over_an_unroll_edge_equals_the_explicit_loop(every):
    program = three_level(middle="linear")
    engine = build_engine(program, {"top": dict(type="cg", cg_iterations=10, unroll_steps=1),
                                    "mid": _unroll(every)},
                          THREE_LEVEL_READS, lrs=LRS, values=program.start)
    got = run_and_record(engine, "top", iterations=every)
    assert rel_err(got[0], _cg_over_unroll_reference(program, every)) <= 1e-8


def test_cg_over_a_checkpointed_unroll_edge_is_the_same():
    program = three_level(middle="linear")
    ckpt = dict(_unroll(2), unroll_checkpoint=True)
    engine = build_engine(program, {"top": dict(type="cg", cg_iterations=10, unroll_steps=1),
                                    "mid": ckpt}, THREE_LEVEL_READS, lrs=LRS,
                          values=program.start)
    got = run_and_record(engine, "top", iterations=2)
    assert rel_err(got[0], _cg_over_unroll_reference(program, 2)) <= 1e-8


def test_a_checkpointed_window_under_unrolled_steps_is_refused():
    from mlodsl import MLOError
    program = three_level(middle="linear")
    ckpt = dict(_unroll(2), unroll_checkpoint=True)
    with pytest.raises(MLOError, match="cannot be nested under the unrolled steps of 'mid'"):
        build_engine(program, {"top": _unroll(2), "mid": ckpt}, THREE_LEVEL_READS, lrs=LRS)
    # first-order steps above it differentiate it once: allowed
    build_engine(program, {"top": dict(_unroll(2), first_order=True), "mid": ckpt},
                 THREE_LEVEL_READS, lrs=LRS)


@pytest.mark.parametrize("every", [1, 2])
def test_one_lower_under_two_unrolling_uppers(every):
    """Both uppers differentiate through the lower's window: it closes after the second one
    (it used to close after the first, leaving the second with no path at all)."""
    from tests.support.shapes import two_uppers
    program = two_uppers()
    lrs = {"low": 0.2, "u1": 0.1, "u2": 0.1}
    engine = build_engine(program, {"u1": _unroll(every), "u2": _unroll(every)}, lrs=lrs,
                          values=program.start)
    run_and_record(engine, "u1", iterations=every)
    order = ["low"] * every + ["u1", "u2"]
    for upper in ("u1", "u2"):
        want = explicit_loop(program, order, lrs, upper)
        assert rel_err(engine.recorded[upper][0], want) <= 1e-10


@pytest.mark.parametrize("every", [1, 3])
def test_one_upper_over_two_unrolled_lowers(every):
    from tests.support.shapes import two_lowers
    program = two_lowers()
    lrs = {"l1": 0.2, "l2": 0.3, "top": 0.1}
    engine = build_engine(program, {"top": _unroll(every)}, lrs=lrs, values=program.start)
    got = run_and_record(engine, "top", iterations=every)
    want = explicit_loop(program, ["l1", "l2"] * every + ["top"], lrs, "top")
    assert rel_err(got[0], want) <= 1e-10
