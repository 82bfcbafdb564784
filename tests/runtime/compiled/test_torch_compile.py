"""The compiled mode with torch.compile for real (tens of seconds per graph on this CPU)."""
import warnings

import pytest
import torch.nn.functional as F

from tests.support.compiled_programs import (HPO, api_engine, assert_same_parameters,
                                             mlo_engine, parameters)


@pytest.fixture(autouse=True)
def inductor(monkeypatch):
    monkeypatch.setenv("MLODSL_COMPILE_BACKEND", "inductor")


@pytest.mark.slow
def test_compiled_iteration_gives_the_eager_parameters():
    eager = mlo_engine("neumann", "iterations=2, alpha=0.5", compile=False, iterations=30)
    eager.run()
    engine = mlo_engine("neumann", "iterations=2, alpha=0.5", compile=True, iterations=30)
    engine.run()
    whole = engine.whole_iteration
    assert whole.captured_iterations == 29
    assert list(whole.compile_seconds) == [("classifier", "hpo")]
    assert any("compiling iteration (classifier, hpo)" in r.get("message", "")
               for r in engine.history.records)
    assert_same_parameters(parameters(eager), parameters(engine))


class ItemHPO(HPO):
    """A training_step with ``.item()``: a host value torch.compile cannot keep in a graph."""

    def training_step(self, batch):
        x, y = batch
        out = self.classifier(x)
        return {"loss": F.cross_entropy(out, y),
                "acc": (out.argmax(1) == y).float().mean().item()}


@pytest.mark.slow
def test_untraceable_loss_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr("tests.support.compiled_programs.HPO", ItemHPO)
    eager = api_engine("darts", compile=False, iterations=8, darts_alpha=0.01)
    eager.run()
    engine = api_engine("darts", compile=True, iterations=8, darts_alpha=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.run()
    messages = [str(w.message) for w in caught if "compile = True" in str(w.message)]
    assert len(messages) == 1 and "torch.compile could not hold" in messages[0], messages
    assert engine.whole_iteration.captured_iterations == 0
    assert_same_parameters(parameters(eager), parameters(engine))
