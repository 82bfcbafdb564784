"""Everything about an edge is sweepable (issue 15): `every` takes any integer expression,
`--set P.every`, `P.via`, `P.L.every`, `FIELD=None`, shadowed `hypergrad` overrides, and
`--iterations` against `--set engine.iterations`."""
from __future__ import annotations

import pytest

import mlodsl
from tests.support.cli import RIDGE, run_cli

SRC = RIDGE.read_text().replace("depends weights via neumann(iterations=5)",
                                "depends weights every window via neumann(iterations=5)")
SRC = "let window = 2\n" + SRC


def _compile(src=SRC, overrides=None):
    # the program as text: its imports resolve from the current folder, so bind them
    import importlib.util
    spec = importlib.util.spec_from_file_location("ridge_parts", RIDGE.parent / "ridge_parts.py")
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    src = src.replace("from ridge_parts import", "# bound below:")  # keeps line numbers
    ns = {n: getattr(parts, n) for n in ("Linear", "Decays", "ridge_data", "penalty")}
    return mlodsl.compile(src, overrides=overrides, namespace=ns)


def _edge(plan):
    (edge,) = plan.edges
    return edge


def test_every_takes_a_let_and_any_integer_expression():
    assert _edge(_compile()).every == 2
    assert _edge(_compile(overrides=["window=3"])).every == 3
    assert _edge(_compile(SRC.replace("every window", "every 2 * window + 1"))).every == 5


@pytest.mark.parametrize("value, message", [("0", "'every' must be >= 1, got 0"),
                                            ("1.5", "'every' must be an integer, got 1.5")])
def test_a_bad_every_through_a_let_is_reported_at_the_every(value, message):
    with pytest.raises(mlodsl.MLOError) as info:
        _compile(SRC.replace("let window = 2", f"let window = {value}"))
    (d,) = info.value.diagnostics
    line = SRC.splitlines().index(next(ln for ln in SRC.splitlines() if "every window" in ln))
    assert (d.span.line, d.span.column) == (line + 1, SRC.splitlines()[line].index("window") + 1)
    assert d.message == message and d.hint == "'window' is defined at line 1"


def test_every_computed_at_compile_time_is_checked_there():
    with pytest.raises(mlodsl.MLOError, match="must be an integer >= 1, got 0") as info:
        _compile(SRC.replace("every window", "every window - 2"))
    assert info.value.diagnostics[0].span.line == 13


@pytest.mark.parametrize("override, every, call", [
    ("decays.every=4", 4, "neumann(iterations=5, alpha=0.1)"),
    ("decays.weights.every=3", 3, "neumann(iterations=5, alpha=0.1)"),
    ("decays.every=None", 1, "neumann(iterations=5, alpha=0.1)"),
    ("decays.via=neumann(iterations=2, alpha=0.05)", 2, "neumann(iterations=2, alpha=0.05)"),
    ("decays.weights.via=cg(iterations=3)", 2, "cg(iterations=3, alpha=1.0, tol=0.0)"),
    ("decays.via=None", 2, "darts(alpha=0.01)"),
])
def test_set_overrides_an_edge(override, every, call):
    edge = _edge(_compile(overrides=[override]))
    assert (edge.every, edge.call()) == (every, call)


def test_none_clears_an_optional_field_and_not_a_required_one():
    plan = _compile(SRC.replace("optimizer  = SGD(lr=0.1)",
                                "optimizer  = SGD(lr=0.1)\n    scheduler  = StepLR(step_size=5)"),
                    overrides=["weights.scheduler=None"])
    assert plan.problems["weights"].scheduler is None
    with pytest.raises(mlodsl.MLOError, match="'module' of problem 'weights' is required"):
        _compile(overrides=["weights.module=None"])


@pytest.mark.parametrize("override, message", [
    ("decays.weigths.every=3", "'decays' has no field or edge 'weigths'"),
    ("decays.weights.evry=3", "an edge has 'every' and 'via', not 'evry'"),
    ("weights.every=3", "'weights' depends on nothing"),
    ("decays.via=neumann(iterations=0)", "argument 'iterations' must be >= 1, got 0"),
])
def test_bad_edge_overrides_point_into_the_override(override, message):
    with pytest.raises(mlodsl.MLOError) as info:
        _compile(overrides=[override])
    d = info.value.diagnostics[0]
    assert d.file.startswith("--set ") and message in d.message


@pytest.mark.parametrize("target", ["decays.hypergrad", "engine.hypergrad"])
def test_a_hypergrad_override_that_a_via_shadows_is_a_warning(target):
    plan = _compile(overrides=[f"{target}=darts()"])
    assert _edge(plan).method == "neumann"
    (w,) = [d for d in plan.warnings if d.file == f"--set {target}"]
    assert w.severity == "warning" and "does not change 'decays depends weights'" in w.message
    assert w.hint == "override the edge itself: --set decays.weights.via=..."


def test_iterations_and_set_engine_iterations_must_agree(tmp_path, capsys):
    status, _, stderr = run_cli(["run", RIDGE, "--iterations", 5, "--out", tmp_path / "r",
                                 "--set", "engine.iterations=8"], capsys)
    assert status == 2
    assert "--set engine.iterations:1:1: error: --iterations 5 and --set engine.iterations " \
           "disagree" in stderr
    assert not (tmp_path / "r").exists()
    status, _, stderr = run_cli(["run", RIDGE, "--iterations", 2, "--out", tmp_path / "r",
                                 "--quiet", "--set", "engine.iterations=2"], capsys)
    assert status == 0, stderr
