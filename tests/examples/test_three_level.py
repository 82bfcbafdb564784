"""The three-level example (examples/three_level): checks cleanly, runs through the CLI and
``mlodsl.compile`` (same numbers as the Python-API twin), and every edge carries a gradient."""
from __future__ import annotations

import pytest
from tests.support.example_runs import assert_check_clean, cli_run, compile_run, example_path, needs_compiler

from examples.three_level import three_level_python

MLO = example_path("three_level")


def test_check_is_clean(capsys):
    assert_check_clean(MLO, capsys)


@needs_compiler
def test_cli_short_run(tmp_path):
    cli_run(MLO, tmp_path, iterations=20)


@needs_compiler
def test_compiled_short_run_matches_the_python_twin():
    plan, _ = compile_run(MLO, iterations=20)
    engine = three_level_python.build("three_level", iterations=20, seed=0)
    engine.history.console = False
    engine.run()
    assert plan.final_validation()["acc"] == pytest.approx(engine.validation()["acc"])


def test_both_coefficients_move():
    """decay[0] moves through the classifier edge, decay[1] only through the weight net edge."""
    engine = three_level_python.build("three_level", iterations=40, seed=0)
    engine.history.console = False
    engine.run()
    assert engine.problems["decay"].count == 40 // three_level_python.DECAY_EVERY
    summary = three_level_python.summarize(engine)
    for key in ("decay_classifier", "decay_weightnet"):
        assert summary[key] != pytest.approx(three_level_python.DECAY0, rel=1e-4), key


@pytest.mark.slow
def test_short_twin_runs_beat_chance_clearly():
    for variant in ("unweighted", "three_level"):
        engine = three_level_python.build(variant, iterations=150, seed=0)
        engine.history.console = False
        engine.run()
        assert engine.validation()["acc"] > 40.0, variant  # chance is 10%
