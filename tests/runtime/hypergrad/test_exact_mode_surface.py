"""The exact multilevel mode as users reach it: the language, ``Config``, and its refusals."""
import pytest
import torch

import mlodsl
from mlodsl import Config, MLOError
from mlodsl.compiler.front.check import check
from mlodsl.compiler.front.parse import parse
from tests.support.multilevel import (VecModule, build_engine, exact_hypergradient,
                                      frozen_hypergradient, nested_solution, rel_err,
                                      run_and_record)
from tests.support.shapes import three_level

PROGRAM = """
problem low {
    module     = Vec(low0)
    optimizer  = SGD(lr=0.0)
    data       = batches
    loss(x, y) = g_low(dict(low=low(), mid=mid(), top=top()))
}
problem mid depends low via cg(iterations=10) {
    module     = Vec(mid0)
    optimizer  = SGD(lr=0.0)
    data       = batches
    loss(x, y) = g_mid(dict(low=low(), mid=mid(), top=top()))
}
problem top depends mid via METHOD {
    module     = Vec(top0)
    optimizer  = SGD(lr=1.0)
    data       = batches
    loss(x, y) = g_top(dict(low=low(), mid=mid(), top=top()))
}
engine { iterations = 1 }
"""


def _plan(method, middle="quadratic"):
    program = three_level(middle=middle)
    start = nested_solution(program, "top")
    ns = {"Vec": VecModule, "batches": [(torch.zeros(1), torch.zeros(1))],
          **{f"g_{lv.name}": lv.loss for lv in program.levels},
          **{f"{n}0": v for n, v in start.items()}}
    return program, mlodsl.compile(PROGRAM.replace("METHOD", method), namespace=ns)


@pytest.mark.parametrize("mode", ["frozen", "exact"])
def test_the_language_accepts_the_mode(mode):
    program, plan = _plan(f'cg(iterations=10, multilevel="{mode}")')
    edge = next(e for e in plan.edges if e.upper == "top")
    assert edge.args.get("multilevel", "frozen") == mode
    b0 = plan.problems["top"].module.p.detach().clone()
    plan.run(iterations=1)
    got = b0 - plan.problems["top"].module.p.detach()  # one SGD step of rate 1
    want = (exact_hypergradient if mode == "exact" else frozen_hypergradient)(program, "top")
    assert rel_err(got, want) <= 1e-6


def test_the_checker_validates_the_mode():
    _, plan = _plan("cg(iterations=10)")
    assert "multilevel" not in next(e for e in plan.edges if e.upper == "top").args
    src = PROGRAM.replace("METHOD", 'cg(multilevel="exakt")')
    # (the names bound by the namespace are unknown to the bare checker: not what is tested)
    errors = [d for d in check(parse(src)) if d.severity == "error" and "multilevel" in d.message]
    assert [d.message for d in errors] == [
        "argument 'multilevel' must be one of 'frozen', 'exact', got 'exakt'"]
    assert errors[0].hint == "did you mean 'exact'?"


def test_config_accepts_the_mode():
    assert Config(multilevel="exact").multilevel == "exact"
    assert Config().multilevel == "frozen"
    with pytest.raises(MLOError, match="multilevel"):
        Config(multilevel="exakt")
    # through the Python API: the lower's Config governs the edge into it (Betty's reading)
    program = three_level(middle="quadratic")
    engine = build_engine(program, {"mid": dict(type="cg", cg_iterations=10, cg_tol=1e-13,
                                                multilevel="exact"),
                                    "low": dict(type="cg", cg_iterations=10, cg_tol=1e-13)},
                          own_configs=True)
    assert engine.edges[("top", "mid")].args["multilevel"] == "exact"
    got = run_and_record(engine, "top")[0]
    assert rel_err(got, exact_hypergradient(program, "top")) <= 1e-6


def test_an_unrolled_level_below_an_exact_middle_is_refused():
    program = three_level(middle="quadratic")
    with pytest.raises(MLOError, match="multilevel='exact' needs the levels below 'mid'"):
        build_engine(program, {"top": dict(type="cg", multilevel="exact"),
                               "mid": dict(type="unroll", first_order=False)})


def _errors(src):
    return [d.message for d in check(parse(src)) if d.severity == "error"
            and "unknown name" not in d.message]


def test_mlodsl_check_refuses_exact_above_an_unrolled_level():
    src = PROGRAM.replace("via cg(iterations=10)", "via unroll()").replace(
        "METHOD", 'cg(multilevel="exact")')
    assert _errors(src) == [
        "multilevel=\"exact\" on 'top' -> 'mid' needs the levels below 'mid' to respond "
        "implicitly, but 'mid' -> 'low' uses unroll()"]
    assert _errors(src.replace('multilevel="exact"', 'multilevel="frozen"')) == []


def test_mlodsl_check_refuses_a_checkpointed_window_under_unrolled_steps():
    src = PROGRAM.replace("via cg(iterations=10)", "via unroll(checkpoint=True)").replace(
        "METHOD", "unroll()")
    (message,) = _errors(src)
    assert message.startswith("unroll(checkpoint=True) into 'low' cannot be nested under the "
                              "unrolled steps of 'mid'")
    assert _errors(src.replace("via unroll()", "via unroll(first_order=True)")) == []
    assert _errors(src.replace("via unroll()", "via cg()")) == []
