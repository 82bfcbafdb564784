"""The divergence guard: on_nan="stop" names problem, iteration and method and never
checkpoints a diverged state; on_nan="skip" takes no parameter update for a bad step."""
import math

import pytest
import torch

from tests.support import mlp_hpo as P
from mlodsl import MLOError
from mlodsl.runtime import checkpoint as ckpt


def _poison(engine, problem: str, at: int, what: str = "loss"):
    """Make ``problem``'s loss (or only its gradient) non-finite at iteration ``at``."""
    prob = engine.problems[problem]
    original = type(prob).training_step

    def training_step(batch):
        out = original(prob, batch)
        if engine.global_step != at:
            return out
        loss = out["loss"] if isinstance(out, dict) else out
        if what == "loss":
            bad = loss * float("nan")
        else:  # finite value, infinite gradient: sqrt at 0
            p = next(prob.module.parameters())
            bad = loss + torch.sqrt((p - p.detach()).abs().sum())
        return {**out, "loss": bad} if isinstance(out, dict) else bad

    prob.training_step = training_step


def test_nan_loss_stops_with_problem_iteration_method_and_keeps_last_good_checkpoint(tmp_path):
    d = tmp_path / "ck"
    e = P.build(20, engine_kwargs=dict(checkpoint_every=1, checkpoint_dir=str(d)))
    e.history.console = False
    _poison(e, "lower", at=7)
    with pytest.raises(MLOError) as info:
        e.run()
    msg = str(info.value)
    assert "'lower'" in msg and "iteration 7" in msg and "upper->lower via darts" in msg
    assert "last good checkpoint is iteration 6" in msg
    saved = ckpt.list_checkpoints(d)
    assert saved[-1].name == "ckpt-00000006.pt"  # nothing written for the diverged state
    good = P.build(20)
    assert good.resume(str(d))
    assert all(torch.isfinite(v).all() for v in P.params_of(good).values())


def test_nonfinite_hypergradient_is_caught_as_a_gradient():
    e = P.build(10)
    e.history.console = False
    _poison(e, "upper", at=4, what="grad")  # the upper steps at 2, 4, ...: infinite gradient
    with pytest.raises(MLOError, match=r"gradient of problem 'upper'.*iteration 4.*darts"):
        e.run()


def test_skip_takes_no_update_for_the_bad_step_and_goes_on():
    e = P.build(8, engine_kwargs=dict(on_nan="skip"))
    e.history.console = False
    _poison(e, "lower", at=3)
    seen = {}
    e.on_iteration_end = lambda: seen.__setitem__(e.global_step, P.params_of(e))
    e.run()
    for k in seen[2]:
        if k.startswith("lower."):
            assert torch.equal(seen[2][k], seen[3][k]), k  # iteration 3: no update
    assert not torch.equal(seen[3]["lower.fc1.weight"], seen[4]["lower.fc1.weight"])
    assert all(torch.isfinite(v).all() for v in P.params_of(e).values())
    skipped = [r["message"] for r in e.history.records if r["kind"] == "info"]
    assert any("skipped a step of problem 'lower' at iteration 3" in m for m in skipped)
    assert e.global_step == 8


def test_skip_guards_hypergradients_too():
    e = P.build(6, engine_kwargs=dict(on_nan="skip"))
    e.history.console = False
    _poison(e, "upper", at=4, what="grad")
    before = {}
    e.on_iteration_end = lambda: before.__setitem__(e.global_step, P.params_of(e))
    e.run()
    assert torch.equal(before[3]["upper.wd"], before[4]["upper.wd"])
    assert not math.isnan(before[6]["upper.wd"].sum().item())


def test_leaf_gradient_blowup_with_finite_loss_never_reaches_a_checkpoint(tmp_path):
    """A leaf's gradient is not read every step (its loss is): an infinite gradient from a
    finite loss stops the run at the next checkpoint or loss, and no checkpoint holds it."""
    d = tmp_path / "ck"
    e = P.build(20, engine_kwargs=dict(checkpoint_every=1, checkpoint_dir=str(d)))
    e.history.console = False
    _poison(e, "lower", at=7, what="grad")
    with pytest.raises(MLOError, match=r"problem 'lower'.*iteration 7.*last good checkpoint "
                                       r"is iteration 6"):
        e.run()
    assert ckpt.list_checkpoints(d)[-1].name == "ckpt-00000006.pt"
    good = P.build(20)
    assert good.resume(str(d))
    assert all(torch.isfinite(v).all() for v in P.params_of(good).values())
