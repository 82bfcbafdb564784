"""What every example must do: check cleanly, run through the CLI, and give through
``mlodsl.compile`` the numbers of its Python-API twin (``examples/NAME/NAME_python.py``).
What is particular to one example (its data, that it learns) is in that example's own file."""
from __future__ import annotations

import importlib

import pytest
from tests.support.example_runs import assert_check_clean, cli_run, compile_run, example_path

# name -> (the twin's variant run by the .mlo program, the metrics compared, their tolerance)
EXAMPLES = {
    "reweighting": ("darts", ("acc",), None),
    "three_level": ("three_level", ("acc",), None),
    "maml": ("maml", ("mse", "mse_0"), 1e-5),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_check_is_clean(name, capsys):
    assert_check_clean(example_path(name), capsys)


@pytest.mark.parametrize("name", EXAMPLES)
def test_cli_short_run(name, tmp_path):
    cli_run(example_path(name), tmp_path, iterations=20)


@pytest.mark.parametrize("name", EXAMPLES)
def test_compiled_short_run_matches_the_python_twin(name):
    variant, metrics, rel = EXAMPLES[name]
    plan, _ = compile_run(example_path(name), iterations=20)
    compiled = plan.final_validation()
    twin = importlib.import_module(f"examples.{name}.{name}_python")
    engine = twin.build(variant, iterations=20, seed=0)
    engine.history.console = False
    engine.run()
    expected = engine.validation()
    for metric in metrics:
        assert compiled[metric] == pytest.approx(expected[metric], rel=rel), metric
