"""The user's optimizer is used as given; any lr_scheduler works, OneCycleLR and
ReduceLROnPlateau included; early stopping."""
import pytest
import torch

from tests.support import mlp_hpo as P
from mlodsl import MLOError


def _groups(net):
    # per-group settings: the first layer slower, without momentum, with weight decay
    return torch.optim.SGD([
        {"params": net.fc1.parameters(), "lr": 0.01, "momentum": 0.0, "weight_decay": 1e-3},
        {"params": net.fc2.parameters()}], lr=0.1, momentum=0.9)


def test_user_optimizer_is_used_as_given_with_per_group_settings(tmp_path):
    holder = {}

    def make(net):
        holder["opt"] = _groups(net)
        return holder["opt"]

    e = P.build(6, lower_opt=make, engine_kwargs=dict(checkpoint_dir=str(tmp_path)))
    e.history.console = False
    e.run()
    opt = e.lower.optimizer
    assert opt is holder["opt"]  # never rebuilt
    g0, g1 = opt.param_groups
    assert (g0["lr"], g0["momentum"], g0["weight_decay"]) == (0.01, 0.0, 1e-3)
    assert (g1["lr"], g1["momentum"], g1["weight_decay"]) == (0.1, 0.9, 0)
    assert "momentum_buffer" in opt.state[e.lower.module.fc2.weight]
    # the same, after a resume
    r = P.build(8, lower_opt=make)
    assert r.resume(str(tmp_path))
    assert r.lower.optimizer is holder["opt"]
    assert [g["lr"] for g in r.lower.optimizer.param_groups] == [0.01, 0.1]


def test_one_cycle_lr_follows_its_schedule_and_resumes(tmp_path):
    iters = 12
    make = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=iters)
    e = P.build(iters, scheduler=make)
    e.history.console = False
    lrs = []
    e.on_iteration_end = lambda: lrs.append(e.lower.optimizer.param_groups[0]["lr"])
    e.run()  # stepping past total_steps would raise inside OneCycleLR
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    ref = make(ref_opt)
    expected = []
    for _ in range(iters):
        ref_opt.step()
        ref.step() if len(expected) < iters - 1 else None
        expected.append(ref_opt.param_groups[0]["lr"])
    assert lrs[:-1] == pytest.approx(expected[:-1])
    assert max(lrs) == pytest.approx(0.5, rel=0.05)
    # resume mid-schedule: same learning rates and parameters as the uninterrupted run
    d = str(tmp_path / "ck")
    a = P.build(5, scheduler=make, engine_kwargs=dict(checkpoint_dir=d))
    a.history.console = False
    a.run()
    b = P.build(iters, scheduler=make, engine_kwargs=dict(resume_from=d))
    b.history.console = False
    b.run()
    assert b.lower.scheduler.last_epoch == e.lower.scheduler.last_epoch
    for k, v in P.params_of(e).items():
        assert torch.equal(v, P.params_of(b)[k]), k


class _Flat(P.HPOEngine):
    """Validation metrics that never improve."""

    def validation(self):
        return {"loss": 1.0, "acc": 0.5, "score": float(self.global_step)}


def _flat(iters, **kw):
    e = P.build(iters, engine_kwargs=dict(valid_step=1, **kw))
    e.__class__ = _Flat
    e.history.console = False
    return e


def test_reduce_lr_on_plateau_steps_on_the_named_metric():
    e = _flat(8)
    e.lower.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        e.lower.optimizer, mode="min", factor=0.5, patience=1)
    e.lower.scheduler_metric = "acc"
    e.upper.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        e.upper.optimizer, mode="max", factor=0.1, patience=0)
    e.upper.scheduler_metric = "score"  # always improving: never reduced
    e.run()
    # acc flat from validation 1: reductions after validations 3, 5, 7
    assert e.lower.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    assert e.upper.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_reduce_lr_on_plateau_defaults_to_the_early_stopping_metric_and_errors_clearly():
    e = _flat(4, early_stopping_metric="acc")
    e.lower.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        e.lower.optimizer, factor=0.5, patience=0)
    e.run()
    assert e.lower.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    bad = _flat(2)
    bad.lower.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(bad.lower.optimizer)
    bad.lower.scheduler_metric = "accuracy"
    with pytest.raises(MLOError, match="ReduceLROnPlateau watches 'accuracy'"):
        bad.run()


def test_early_stopping_min_and_max():
    e = _flat(50, early_stopping=True, early_stopping_tolerance=3)
    e.run()
    assert e.global_step == 4  # best at 1, then 3 validations without improvement
    assert any("early stopping at iteration 4" in r.get("message", "")
               for r in e.history.records)
    up = _flat(10, early_stopping=True, early_stopping_metric="score",
               early_stopping_mode="max", early_stopping_tolerance=1)
    up.run()
    assert up.global_step == 10  # always improving


def test_early_stopping_state_survives_a_resume(tmp_path):
    d = str(tmp_path)
    a = _flat(2, early_stopping=True, early_stopping_tolerance=3, checkpoint_dir=d)
    a.run()
    b = _flat(50, early_stopping=True, early_stopping_tolerance=3, resume_from=d)
    b.run()
    assert b.global_step == 4


def test_early_stopping_on_a_missing_metric_is_a_clear_error():
    e = _flat(3, early_stopping=True, early_stopping_metric="f1")
    with pytest.raises(MLOError, match="'f1'"):
        e.run()
