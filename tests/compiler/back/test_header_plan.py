"""The header form lowers to the same plan as ``via``/``every``, by the Python route's rule."""
from __future__ import annotations

import pytest

import mlodsl
from mlodsl.runtime.config import Config, edge_settings

from tests.support.paths import ROOT

HEADER_HPO = ROOT / "examples" / "hpo" / "hpo_header.mlo"


def _plan_shape(plan) -> dict:
    """What a plan does, leaving out where each choice came from and the file name."""
    data = plan.to_json()
    edges = [{k: v for k, v in e.items() if not k.endswith("_from")} for e in data["edges"]]
    problems = [{k: v for k, v in p.items() if k != "settings"} for p in data["problems"]]
    return {"edges": edges, "problems": problems, "schedule": data["schedule"],
            "engine": data["engine"]}


def test_the_seeds_hpo_program_with_the_header_compiles_to_the_same_plan(hpo_plan):
    header = mlodsl.compile(str(HEADER_HPO))
    assert _plan_shape(header) == _plan_shape(hpo_plan)
    assert [repr(e) for e in header.edges] == [repr(e) for e in hpo_plan.edges]
    assert header.problems["hpo"].config.log_step == hpo_plan.problems["hpo"].config.log_step
    [edge] = header.edges
    assert (edge.source, edge.origins["every"]) == ("header of 'hpo'", "header of 'hpo'")
    assert "[method from header of 'hpo', every from header of 'hpo']" in header.describe()


PROGRAM = """\
from tests.programs.imports.bk_parts import Tiny, Knob, toy
import torch.nn.functional as F

problem inner {inner_header} {{
    module     = Tiny(4, 2)
    optimizer  = SGD(lr=0.1)
    data       = toy(32)
    batch_size = 8
    loss(x, y) = F.mse_loss(inner(x), y) + outer() * inner.weight.pow(2).sum()
}}

problem outer {outer_header} depends inner {edge} {{
    module     = Knob(0.1)
    optimizer  = SGD(lr=0.01)
    data       = toy(16, seed=1)
    batch_size = 8
    loss(x, y) = F.mse_loss(inner(x), y)
}}

engine {{
    iterations = 4
    seed       = 0
}}
"""


def compile_program(tmp_path, inner_header="", outer_header="", edge=""):
    path = tmp_path / "h.mlo"
    path.write_text(PROGRAM.format(inner_header=inner_header, outer_header=outer_header,
                                   edge=edge))
    return mlodsl.compile(str(path))


def test_a_lower_header_names_the_method_of_the_edge_above_it_as_on_the_python_route(tmp_path):
    plan = compile_program(tmp_path, inner_header='<type="cg", cg_iterations=4>',
                           outer_header="<step=2>")
    [edge] = plan.edges
    assert (edge.method, edge.args, edge.every) == ("cg", {"iterations": 4, "alpha": 1.0,
                                                         "tol": 0.0}, 2)
    assert edge.source == "header of 'inner'" and edge.origins["every"] == "header of 'outer'"
    python = edge_settings(Config(step=2), Config(type="cg", cg_iterations=4))
    assert (python.method, python.args, python.every) == (edge.method, edge.args, edge.every)


def test_a_header_method_means_what_config_means_including_its_defaults(tmp_path):
    plan = compile_program(tmp_path, outer_header='<type="neumann", neumann_alpha=0.5>')
    [edge] = plan.edges
    python = edge_settings(Config(type="neumann", neumann_alpha=0.5), Config())
    assert (edge.method, edge.args) == (python.method, python.args) == (
        "neumann", {"iterations": 1, "alpha": 0.5})


def test_header_knobs_fill_the_arguments_a_via_call_leaves_out(tmp_path):
    plan = compile_program(tmp_path, outer_header="<neumann_iterations=4>",
                           edge="via neumann(alpha=0.5)")
    [edge] = plan.edges
    assert edge.args == {"iterations": 4, "alpha": 0.5}
    assert edge.origins == {"every": "default", "iterations": "header of 'outer'"}
    assert "iterations from header of 'outer'" in plan.describe()


def test_step_settings_and_warm_up_reach_the_runtime(tmp_path):
    plan = compile_program(tmp_path, outer_header="<warmup_steps=2, gradient_clipping=0.5>")
    assert plan.problems["outer"].config.gradient_clipping == 0.5
    assert "gradient_clipping=0.5 (from the header of 'outer')" in plan.describe()
    [edge] = plan.edges
    assert (edge.warmup, edge.origins["warm-up"]) == (2, "header of 'outer'")
    plan.run(console=False)
    # inner's first two steps are warm-up: outer steps after inner's 3rd and 4th.
    assert (plan.problems["inner"].count, plan.problems["outer"].count) == (4, 2)


def test_a_header_value_from_a_let_that_is_bad_is_reported_at_the_value(tmp_path):
    path = tmp_path / "bad.mlo"
    path.write_text("let f = int(0)\n" + PROGRAM.format(inner_header="", edge="",
                                                     outer_header="<darts_alpha=f>"))
    with pytest.raises(mlodsl.MLOError) as err:
        mlodsl.compile(str(path))
    d = err.value.diagnostics[0]
    assert "setting 'darts_alpha' of 'outer'" in d.message and d.span.line == 13
