"""Lowering: the method rule, problem and engine fields, the plan's description."""
from __future__ import annotations

import pytest
import torch

import mlodsl
from mlodsl.diagnostics import MLOError

from tests.programs.imports.bk_parts import Knob, Tiny, toy, toy_batches

NS = {"Tiny": Tiny, "Knob": Knob, "toy": toy, "b": toy_batches()}


def _compile(src, **kw):
    return mlodsl.compile(src, namespace=NS, **kw)


METHOD_RULE = """
problem a { module = Tiny(); optimizer = SGD(lr=0.1); data = b; loss(x, y) = (a(x) - y).pow(2).mean() * (u1() + u2() + u3() + u4()) }
problem u1 depends a via neumann(iterations=3) { module = Knob(); optimizer = SGD(lr=0.1); data = b; loss(x, y) = a(x).sum(); hypergrad = cg() }
problem u2 depends a { module = Knob(); optimizer = SGD(lr=0.1); data = b; loss(x, y) = a(x).sum(); hypergrad = cg(iterations=2) }
problem u3 depends a every 2 { module = Knob(); optimizer = SGD(lr=0.1); data = b; loss(x, y) = a(x).sum() }
problem u4 depends a { module = Knob(); optimizer = SGD(lr=0.1); data = b; loss(x, y) = a(x).sum() }
engine { iterations = 2 %s }
"""


def test_method_rule_via_then_hypergrad_then_engine_then_darts():
    plan = _compile(METHOD_RULE % "; hypergrad = first_order()")
    got = {e.upper: (e.method, e.args, e.source, e.every) for e in plan.edges}
    assert got["u1"] == ("neumann", {"iterations": 3, "alpha": 0.1}, "via", 1)  # alpha: the lr of a
    assert got["u2"] == ("cg", {"iterations": 2, "alpha": 1.0, "tol": 0.0}, "hypergrad of 'u2'", 1)
    assert got["u3"] == ("first_order", {}, "engine hypergrad", 2)
    plan = _compile(METHOD_RULE % "")
    assert {e.upper: e.method for e in plan.edges}["u4"] == "darts"
    assert [e.source for e in plan.edges if e.upper == "u4"] == ["default"]
    assert plan.levels == {"a": 0, "u1": 1, "u2": 1, "u3": 1, "u4": 1}
    assert "u3 (level 1) steps when a has stepped 2x" in plan.describe()


def test_problem_fields_map_to_the_runtime():
    src = ("problem p { module = Tiny(); optimizer = AdamW(lr=0.1, weight_decay=0.0)\n"
           "  scheduler = StepLR(step_size=2, gamma=0.5); data = toy(16); batch_size = 4\n"
           "  loss(x, y) = (p(x) - y).pow(2).mean(); after_step = clamp(-0.01, 0.01)\n"
           "  grad_clip = 1.0; grad_accum = 2; log_every = 3 }\n"
           "engine { iterations = 4; seed = 3; on_nan = \"skip\"\n"
           "  validate = dict(w=p.weight.abs().max()); validate_every = 2\n"
           "  early_stop = dict(metric=\"w\", mode=\"max\", patience=2) }\n")
    plan = _compile(src)
    p = plan.problems["p"]
    assert isinstance(p.optimizer, torch.optim.AdamW)
    assert isinstance(p.scheduler, torch.optim.lr_scheduler.StepLR)
    assert p.grad_clip == 1.0 and p.grad_accum == 2 and p.config.log_step == 3
    assert p.train_data_loader.batch_size == 4
    s = plan.engine_settings
    assert s["seed"] == 3 and s["on_nan"] == "skip" and s["valid_step"] == 2
    assert (s["early_stopping"], s["early_stopping_metric"], s["early_stopping_mode"],
            s["early_stopping_tolerance"]) == (True, "w", "max", 2)
    history = plan.run(console=False)
    assert p.module.weight.abs().max().item() <= 0.01 + 1e-7  # after_step clamped
    assert [r["iteration"] for r in history if r["kind"] == "validation"] == [2, 4]
    assert p.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)  # 4 steps of StepLR(2)


@pytest.mark.parametrize("fields, message", [
    ("scheduler = ReduceLROnPlateau()", "ReduceLROnPlateau steps on the validation metric"),
    ("optimizer = 3", "must be a torch.optim optimizer"),
    ("after_step = 2", "'after_step' of 'p' must be a callable"),
    ("data = 5", "must be a Dataset or an iterable of batches"),
    ("module = toy()", "must be a torch.nn.Module"),
])
def test_field_value_errors(fields, message):
    base = {"module": "Tiny()", "optimizer": "SGD(lr=0.1)", "data": "b"}
    name = fields.split(" = ")[0]
    base[name] = fields.split(" = ", 1)[1]
    body = "; ".join(f"{k} = {v}" for k, v in base.items())
    src = f"problem p {{ {body}; loss(x, y) = p(x).sum() }}\nengine {{ iterations = 1 }}\n"
    with pytest.raises(MLOError) as info:
        _compile(src)
    d = info.value.diagnostics[0]
    assert message in d.message and d.span.line == 1
    assert src.splitlines()[0][d.span.column - 1:].startswith(base[name])


def test_dataset_needs_batch_size_and_seeding_rule():
    src = "problem p { module = Tiny(); optimizer = SGD(lr=0.1); data = toy()\n" \
          "  loss(x, y) = p(x).sum() }\nengine { iterations = 1 }\n"
    with pytest.raises(MLOError, match="needs a batch size"):
        _compile(src)
    src2 = ("problem p { module = Tiny(); optimizer = SGD(lr=0.1); data = toy(); batch_size = 4\n"
            "  loss(x, y) = p(x).sum() }\n"
            "problem q depends p { module = Knob(); optimizer = SGD(lr=0.1); data = toy()\n"
            "  batch_size = 4; loss(x, y) = p(x).sum() * q() }\n"
            "engine { iterations = 1; seed = 7 }\n")
    plan = _compile(src2)
    for k, name in enumerate(["p", "q"]):
        gen = plan.problems[name].train_data_loader.generator
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(7 + k).get_state())


def test_modules_are_built_in_dependency_order():
    built = []

    class Rec(torch.nn.Module):
        def __init__(self, tag, like=None):
            super().__init__()
            built.append(tag)
            self.w = torch.nn.Parameter(torch.zeros(1) if like is None else
                                        torch.zeros_like(like.weight[0, :1]))

        def forward(self, *a):
            return self.w

    src = ("problem up depends low { module = Rec(\"up\", like=low); optimizer = SGD(lr=1)\n"
           "  data = b; loss(x, y) = low(x).sum() + up().sum() }\n"
           "problem low { module = Tiny(); optimizer = SGD(lr=1); data = b\n"
           "  loss(x, y) = low(x).sum() * up().sum() }\nengine { iterations = 1 }\n")
    plan = mlodsl.compile(src, namespace={**NS, "Rec": Rec})
    assert built == ["up"] and list(plan.problems) == ["low", "up"] and plan.order == ["up", "low"]


def test_three_levels_with_unroll_and_neumann_run():
    src = """
import torch.nn.functional as F
problem net {
    module = Tiny(); optimizer = SGD(lr=0.1); data = toy(32); batch_size = 8
    loss(x, y) = F.mse_loss(net(x), y) + decay() * net.weight.pow(2).sum()
}
problem decay depends net every 2 via unroll() {
    module = Knob(0.1); optimizer = Adam(lr=0.01); data = toy(16, seed=1); batch_size = 8
    loss(x, y) = F.mse_loss(net(x), y) * scale()
    after_step = clamp_min(0.0)
}
problem scale depends decay via neumann(iterations=2) {
    module = Knob(1.0); optimizer = SGD(lr=0.01); data = b
    loss(x, y) = F.mse_loss(net(x), y) + (scale() - 1) ** 2
}
engine { iterations = 6; seed = 0; validate = dict(w=net.weight.abs().sum()); validate_every = 2 }
"""
    plan = _compile(src)
    assert plan.levels == {"net": 0, "decay": 1, "scale": 2}
    assert [(e.upper, e.method, e.every) for e in plan.edges] == [
        ("decay", "unroll", 2), ("scale", "neumann", 1)]
    history = plan.run(console=False)
    assert {n: p.count for n, p in plan.problems.items()} == {"net": 6, "decay": 3, "scale": 3}
    assert [r["iteration"] for r in history if r["kind"] == "validation"] == [2, 4, 6]
    assert plan.problems["decay"].module.scale.item() >= 0.0
