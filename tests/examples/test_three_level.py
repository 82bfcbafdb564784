"""The three-level example (examples/three_level): every edge carries a gradient, and it learns
(what every example does is in test_every_example.py)."""
from __future__ import annotations

import pytest

from examples.three_level import three_level_python

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
