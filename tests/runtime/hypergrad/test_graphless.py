"""A gradient without a graph never crashes a method: an unread parameter contributes zero.

Two shapes from issue 13: a bilevel program whose lower has a trainable parameter its loss
never reads, and a three-level program whose middle's loss reads only the level below (its own
Hessian is zero, so the default chain's hypergradient through it is zero, as the checker warns).
"""
import pytest
import torch

import mlodsl
from tests.support.multilevel import (DT, Level, Program, build_engine, exact_hypergradient,
                                      frozen_hypergradient, randn, rel_err, run_and_record,
                                      VecModule)
from tests.support.shapes import THREE_LEVEL_READS, three_level

METHODS = {
    "neumann": dict(type="neumann", neumann_iterations=400, neumann_alpha=0.2),
    "cg": dict(type="cg", cg_iterations=12),
    "darts": dict(type="darts"),
    "sama": dict(type="sama"),
    "unroll": dict(type="unroll", first_order=False),
}


def _ridge() -> Program:
    """``lower``: ``|Xw - y|^2/2n + sum lam w^2/2``; ``upper``: validation MSE."""
    g = torch.Generator().manual_seed(0)
    X, Xv = randn(g, 30, 4), randn(g, 20, 4)
    y, yv = randn(g, 30), randn(g, 20)

    def lower(v):
        w = v["lower"]
        return ((X @ w - y) ** 2).sum() / 60 + (v["upper"] * w ** 2).sum() / 2

    def upper(v):
        return ((Xv @ v["lower"] - yv) ** 2).sum() / 40

    return Program([Level("upper", 4, upper, ("lower",)), Level("lower", 4, lower)],
                   {"upper": 0.2 + torch.rand(4, generator=g, dtype=DT),
                    "lower": randn(g, 4)})


RIDGE_READS = {"upper": ["lower"], "lower": ["lower", "upper"]}


@pytest.mark.parametrize("method", list(METHODS))
def test_an_unread_lower_parameter_changes_nothing(method):
    program = _ridge()
    # the lower steps (unroll differentiates through that step); it starts at its optimum
    plain = run_and_record(build_engine(program, {"upper": METHODS[method]}, RIDGE_READS,
                                        lrs={"lower": 0.1}), "upper")
    spare = run_and_record(build_engine(program, {"upper": METHODS[method]}, RIDGE_READS,
                                        lrs={"lower": 0.1}, unused=["lower"]), "upper")
    assert torch.isfinite(spare[0]).all() and float(plain[0].abs().max()) > 0
    assert rel_err(spare[0], plain[0]) <= 1e-12
    if method == "cg":  # cg in dim 4 iterations is exact
        assert rel_err(spare[0], exact_hypergradient(program, "upper")) <= 1e-6


@pytest.mark.parametrize("method", list(METHODS))
def test_a_middle_that_reads_only_below_contributes_zero(method):
    """``top -> mid`` by ``method``; ``mid``'s loss reads only ``low``: no crash, and the
    frozen chain's answer (the path through ``mid`` is zero; ``top -> low`` is not)."""
    program = three_level(middle="only_below")
    engine = build_engine(program, {"top": METHODS[method], "mid": METHODS["cg"]},
                          THREE_LEVEL_READS)
    got = run_and_record(engine, "top", iterations=2)
    want = frozen_hypergradient(program, "top")
    assert len(got) == 2 and all(torch.isfinite(g).all() for g in got)
    assert rel_err(got[0], want) <= 1e-6
    # and the default chain is not the exact hypergradient here (the exact mode is)
    assert rel_err(want, exact_hypergradient(program, "top")) > 0.1


PROGRAM = """
problem low {
    module     = Vec(low0)
    optimizer  = SGD(lr=0.1)
    data       = batches
    loss(x, y) = g_low(dict(low=low(), mid=mid(), top=top()))
}
problem mid depends low {
    module     = Vec(mid0)
    optimizer  = SGD(lr=0.1)
    data       = batches
    loss(x, y) = g_mid(dict(low=low()))
}
problem top depends mid via METHOD {
    module     = Vec(top0)
    optimizer  = SGD(lr=0.1)
    data       = batches
    loss(x, y) = g_top(dict(low=low(), mid=mid(), top=top()))
}
engine { iterations = 3 }
"""


@pytest.mark.parametrize("method", ["neumann(iterations=3)", "cg(iterations=2)", "darts()",
                                    "sama()", "unroll()"])
def test_the_mlo_program_from_the_issue_warns_and_runs(method):
    program = three_level(middle="only_below")
    fns = {f"g_{lv.name}": lv.loss for lv in program.levels}
    starts = {f"{n}0": v for n, v in program.start.items()}
    plan = mlodsl.compile(PROGRAM.replace("METHOD", method), namespace={
        "Vec": VecModule, "batches": [(torch.zeros(1), torch.zeros(1))], **fns, **starts})
    warnings = [d.headline() for d in plan.warnings]
    assert any("hypergradient through 'mid' is zero" in w for w in warnings), warnings
    plan.run(iterations=3)
    top = plan.problems["top"].module.p
    assert torch.isfinite(top).all() and not torch.equal(top, program.start["top"])
