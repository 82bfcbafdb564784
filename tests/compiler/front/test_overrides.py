"""``--set`` overrides: applied to the IR, checked like source, errors as diagnostics."""
from __future__ import annotations

import json

import pytest

import mlodsl
from mlodsl.compiler.front.overrides import parse_override
from mlodsl.diagnostics import MLOError

from tests.support.paths import IMPORTS, run_cli

BILEVEL = IMPORTS / "bilevel.mlo"


@pytest.mark.parametrize("setting, where, message", [
    ("engine.iterationz=3", "--set engine.iterationz:1:1",
     "unknown field 'iterationz' in the engine"),
    ("inner.optimiser.lr=1", "--set inner.optimiser.lr:1:1",
     "unknown field 'optimiser' in problem 'inner'"),
    ("innr.batch_size=4", "--set innr.batch_size:1:1", "unknown problem 'innr'"),
    ("engine.iterations=1.5", "--set engine.iterations:1:19",
     "'iterations' of the engine must be a positive integer, got 1.5"),
    ("inner.batch_size='big'", "--set inner.batch_size:1:18",
     "'batch_size' of problem 'inner' must be a positive integer"),
    ("inner.optimizer.lr=fast", "--set inner.optimizer.lr:1:20", "unknown name 'fast'"),
    ('inner.optimizer.lr="fast"', "--set inner.optimizer.lr:1:20",
     "the optimizer of 'inner': SGD(...) failed: TypeError"),
    ("inner.optimizer.lr=(1", "--set inner.optimizer.lr:1:", "error:"),
    ("engine=3", "--set engine:1:1", "'engine' needs a field"),
    ("no equals sign", "--set:1:1", "expected NAME.FIELD=VALUE"),
])
def test_bad_overrides_are_diagnostics(capsys, setting, where, message):
    status, out, err = run_cli(["compile", BILEVEL, "--set", setting], capsys)
    assert status == 2, err
    assert "Traceback" not in err
    assert err.startswith(where) and message in err.splitlines()[0]


def test_override_values_reach_the_plan():
    plan = mlodsl.compile(str(BILEVEL), overrides=[
        "inner.optimizer.lr=0.5", "outer.optimizer.betas=(0.5, 0.6)", "engine.iterations=7",
        "inner.grad_clip=2.0", "outer.data=toy(8, seed=3)"])
    opt = plan.problems["inner"].optimizer
    assert opt.param_groups[0]["lr"] == 0.5
    assert plan.problems["outer"].optimizer.param_groups[0]["betas"] == (0.5, 0.6)
    assert plan.engine_settings["train_iters"] == 7
    assert plan.problems["inner"].grad_clip == 2.0
    assert len(plan.problems["outer"].train_data_loader.dataset) == 8


def test_dict_overrides_and_lets(monkeypatch):
    monkeypatch.chdir(IMPORTS)  # a source string's imports are searched in the current directory
    src = ("from bk_parts import Tiny, toy\nimport torch.nn.functional as F\nlet n = 2\n"
           "problem p { module = Tiny(4, n); optimizer = SGD(lr=1); data = toy(); batch_size = 4\n"
           "  loss(x, y) = p(x).pow(2).mean() }\n"
           "engine { iterations = 1 }\n")
    plan = mlodsl.compile(src, overrides={"n": 3, "p.optimizer.lr": 0.25})
    assert plan.problems["p"].module.weight.shape == (3, 4)
    assert plan.problems["p"].optimizer.param_groups[0]["lr"] == 0.25
    with pytest.raises(MLOError, match="must be a literal"):
        mlodsl.compile(src, overrides={"n": object()})


def test_override_of_a_loss_expression_is_refused_as_code():
    # An override value is data: a loss expression reads attributes and calls, so it is refused
    # (at the first attribute), before anything is evaluated.
    with pytest.raises(MLOError) as info:
        mlodsl.compile(str(IMPORTS / "unconnected_callable.mlo"),
                       overrides=["other.loss=F.mse_loss(inner(x), y)"])
    d = [d for d in info.value.diagnostics if d.severity == "error"][0]
    assert d.file == "--set other.loss" and (d.span.column, d.span.end_column) == (14, 22)
    assert "may not read attributes ('.mse_loss')" in d.message


def test_parse_override_keeps_columns():
    o = parse_override("hpo.optimizer.lr = 1e-4")
    assert o.target == ("hpo", "optimizer", "lr") and o.value.span.column == 20


def test_compile_json_lists_the_plan(capsys):
    status, out, err = run_cli(["compile", BILEVEL, "--json", "--show-graphs",
                                "--set", "engine.hypergrad=neumann(iterations=2)"], capsys)
    assert status == 0, err
    plan = json.loads(out)
    assert [p["name"] for p in plan["problems"]] == ["inner", "outer"]
    assert plan["problems"][0]["loss"]["reads"] == ["inner", "outer"]
    assert "def forward(self, x, y)" in plan["problems"][0]["loss"]["code"]
    assert plan["edges"] == [{"upper": "outer", "lower": "inner", "every": 1, "method": "neumann",
                              "args": {"iterations": 2, "alpha": 0.1},  # the lr of 'inner'
                              "method_from": "engine hypergrad", "every_from": "default",
                              "warmup": 0, "warmup_from": "default", "args_from": {},
                              "note": "alpha = the lr of 'inner'"}]
