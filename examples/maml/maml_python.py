"""MAML on few-shot sine regression, with the Python API; against no meta-learning.

The twin of ``maml.mlo`` (see ``parts.py`` for how MAML is written as a bilevel program).
Variants, all judged the same way (MSE on the query points of 500 new tasks after ``STEPS``
SGD steps of rate ``INNER_LR`` on their 10 support points):

* ``--variant maml``: second-order MAML, ``unroll`` through the ``STEPS`` inner steps;
* ``--variant fomaml``: first-order MAML (``Config(first_order=True)``, Betty's default);
* ``--variant pretrained``: no meta-learning: one MLP trained on every task's points jointly
  (plain regression, as many Adam steps as the engine has iterations, i.e. ``STEPS`` times as
  many as MAML's meta-steps), then adapted with the same steps;
* ``--variant scratch``: a freshly initialised MLP adapted with the same steps.

Run ``python -m examples.maml.maml_python --variant all --seed 0``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from examples.maml.parts import (SineMLP, TaskDelta, adapted_mse, reset_to_zero,
                                 sine_tasks, task_mse)
from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.problems import ImplicitProblem, IterativeProblem

#: Hyperparameters shared with ``maml.mlo`` (keep the two in step).
TASKS, SHOTS, STEPS, INNER_LR, META_LR, HIDDEN = 25, 10, 5, 0.01, 1e-3, 40
VARIANTS = ("maml", "fomaml", "pretrained", "scratch")


class Adapt(IterativeProblem):
    """Lower level: per-task deltas, ``STEPS`` SGD steps on the support sets at ``theta + delta``."""

    def training_step(self, batch):
        x, y = batch
        return task_mse(self.theta(x, self.module()), y)

    def param_callback(self, params):
        reset_to_zero(params)  # once per unrolled window: the next task batch starts at theta


class Meta(ImplicitProblem):
    """Upper level: query MSE of the adapted models; its parameters are MAML's ``theta``."""

    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.module(x, self.adapt()), y)


class Pretrained(ImplicitProblem):
    """The baseline: one MLP regressing every task's points jointly (no task identity)."""

    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.module(x), y)


class MetaEngine(Engine):
    """Validation: meta-test MSE before and after adapting to new tasks."""

    def validation(self):
        return adapted_mse(self.theta, steps=STEPS, lr=INNER_LR)


def build(variant: str, iterations: int, seed: int, valid_step: int = 0) -> MetaEngine:
    """Build the engine of one variant (``maml``, ``fomaml``, ``pretrained`` or ``scratch``)."""
    torch.manual_seed(seed)
    net = SineMLP(HIDDEN)
    meta_opt = torch.optim.Adam(net.parameters(), lr=META_LR)
    if variant in ("pretrained", "scratch"):
        theta = Pretrained(name="theta", module=net, optimizer=meta_opt,
                          train_data_loader=sine_tasks("joint", TASKS, SHOTS, seed=seed),
                          config=Config())
        iters = iterations if variant == "pretrained" else 0
        return MetaEngine(config=EngineConfig(train_iters=iters, valid_step=valid_step, seed=seed),
                          problems=[theta], dependencies={})
    delta = TaskDelta(net, TASKS)
    adapt = Adapt(name="adapt", module=delta,
                  optimizer=torch.optim.SGD(delta.parameters(), lr=INNER_LR),
                  train_data_loader=sine_tasks("support", TASKS, SHOTS, repeat=STEPS, seed=seed),
                  config=Config())
    theta = Meta(name="theta", module=net, optimizer=meta_opt,
                train_data_loader=sine_tasks("query", TASKS, SHOTS, seed=seed),
                config=Config(type="unroll", unroll_steps=STEPS,
                              first_order=(variant == "fomaml")))
    deps = {"u2l": {theta: [adapt]}, "l2u": {adapt: [theta]}}
    config = EngineConfig(train_iters=iterations, valid_step=valid_step, seed=seed)
    return MetaEngine(config=config, problems=[adapt, theta], dependencies=deps)


def main(argv=None) -> int:
    """Run the chosen variants and print their meta-test MSE (a table, or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    ap.add_argument("--iterations", type=int, default=10000,
                    help=f"engine iterations (inner steps; MAML meta-steps = this / {STEPS})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", action="store_true", help="print only JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    variants = VARIANTS if args.variant == "all" else [args.variant]
    results = {}
    for variant in variants:
        start = time.perf_counter()
        engine = build(variant, args.iterations, args.seed)
        engine.history.console = not args.json
        engine.run()
        results[variant] = dict(engine.validation())
        results[variant]["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"\n{'variant':11} {'MSE before':>10} {f'MSE after {STEPS} steps':>18} {'seconds':>8}")
        for variant, r in results.items():
            print(f"{variant:11} {r['mse_0']:10.3f} {r['mse']:18.3f} {r['seconds']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
