"""Data reweighting under tuned regularisers (three levels), with the Python API.

The twin of ``three_level.mlo`` (see ``parts.py``), and the programs it is compared with, all on
the same long-tailed, label-noisy digits and judged by test accuracy:

* ``--variant unweighted``: the classifier alone, fixed L2 coefficient ``DECAY0``;
* ``--variant decay_only``: the L2 coefficient tuned on the hold-out split (bilevel, darts);
* ``--variant two_level``: Meta-Weight-Net with fixed L2 coefficients (bilevel, darts);
* ``--variant three_level``: Meta-Weight-Net under tuned L2 coefficients (the ``.mlo`` file);
* ``--variant three_level_exact``: the same with ``multilevel="exact"`` on the coefficients'
  edge: the weight net's Jacobian from its total objective, the classifier responding
  (docs/hypergradients.md, "What is exact").

Run ``python -m examples.three_level.three_level_python --variant all --seed 0``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from examples.three_level.parts import (LogDecay, Net, WeightNet, accuracy, digits,
                                        holdout_digits, l2, meta_digits, noisy_digits,
                                        reweighted_ce)
from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.problems import ImplicitProblem
from mlodsl.runtime.data import make_loader

#: Hyperparameters shared with ``three_level.mlo`` (keep the two in step).
SIZES, LR, MOMENTUM, BATCH = [64, 100, 10], 0.01, 0.9, 64
META_LR, DECAY_LR, DECAY0, DECAY_EVERY = 1e-3, 0.02, 1e-3, 5
VARIANTS = ("unweighted", "decay_only", "two_level", "three_level", "three_level_exact")


class Classifier(ImplicitProblem):
    """Level 0: weighted cross-entropy (when there is a weight net) plus the L2 penalty."""

    def training_step(self, batch):
        x, y = batch
        logits = self.module(x)
        data = (reweighted_ce(logits, y, self.reweight) if "reweight" in self.engine.problems
                else F.cross_entropy(logits, y))
        return data + self.coefficients()[0] * l2(self.module)

    def coefficients(self):
        """The L2 coefficients: level 2's when there is one, else the fixed ``DECAY0``."""
        if "decay" in self.engine.problems:
            return self.decay()
        return torch.tensor([DECAY0, DECAY0])


class Reweight(ImplicitProblem):
    """Level 1: meta-set cross-entropy of the classifier plus the weight net's own L2 penalty."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.classifier(x), y) + \
            self.classifier.coefficients()[1] * l2(self.module)


class Decay(ImplicitProblem):
    """Level 2 (or 1 in ``decay_only``): hold-out cross-entropy of the classifier."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.classifier(x), y)


class ThreeLevelEngine(Engine):
    """Validation: test accuracy of the classifier."""

    def validation(self):
        return accuracy(self.classifier, digits("test"))



def build(variant: str, iterations: int, seed: int, valid_step: int = 0) -> ThreeLevelEngine:
    """Build the engine of one variant (see the module docstring)."""
    torch.manual_seed(seed)
    three = variant in ("three_level", "three_level_exact")
    net = Net(SIZES)
    classifier = Classifier(
        name="classifier", module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM),
        train_data_loader=make_loader(noisy_digits(), BATCH, seed=seed),
        # Betty's reading: a lower's Config names the method of the edge above it (reweight's
        # hypergradient through the classifier); decay's Config speaks for its own edge.
        config=Config(type="darts") if variant == "two_level" or three else Config())
    problems, u2l, l2u = [classifier], {}, {}
    reweight = decay = None
    if variant == "two_level" or three:
        weigher = WeightNet(hidden=100)
        reweight = Reweight(name="reweight", module=weigher,
                            optimizer=torch.optim.Adam(weigher.parameters(), lr=META_LR),
                            train_data_loader=make_loader(meta_digits(), 100, seed=seed + 1),
                            config=Config())
        problems.append(reweight)
        u2l[reweight], l2u[classifier] = [classifier], [reweight]
    if variant == "decay_only" or three:
        coefficients = LogDecay(init=[DECAY0, DECAY0])
        below = reweight if reweight is not None else classifier
        method = (dict(type="neumann", neumann_iterations=3, unroll_steps=DECAY_EVERY)
                  if reweight is not None else dict(type="darts", unroll_steps=DECAY_EVERY))
        if variant == "three_level_exact":
            method["multilevel"] = "exact"
        decay = Decay(name="decay", module=coefficients,
                      optimizer=torch.optim.Adam(coefficients.parameters(), lr=DECAY_LR),
                      train_data_loader=make_loader(holdout_digits(), 100, seed=seed + 2),
                      config=Config(**method))
        problems.append(decay)
        # decay's loss reads the classifier; the classifier's (and the weight net's) read decay
        u2l[decay] = [classifier] + ([reweight] if reweight is not None else [])
        l2u.setdefault(below, []).append(decay)
    config = EngineConfig(train_iters=iterations, valid_step=valid_step, seed=seed)
    deps = {"u2l": u2l, "l2u": l2u} if l2u else {}
    return ThreeLevelEngine(config=config, problems=problems, dependencies=deps)


def summarize(engine) -> dict:
    """Test accuracy of a finished run, plus the tuned coefficients when there are any."""
    out = dict(engine.validation())
    if "decay" in engine.problems:
        values = engine.decay().detach().tolist()
        out["decay_classifier"] = values[0]
        out["decay_weightnet"] = values[1]
    return out


def main(argv=None) -> int:
    """Run the chosen variants and print their test accuracy (a table, or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    ap.add_argument("--iterations", type=int, default=2000)
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
        results[variant] = summarize(engine)
        results[variant]["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"\n{'variant':12} {'test acc %':>10} {'L2 classifier':>14} {'L2 weight net':>14} "
              f"{'seconds':>8}")
        for variant, r in results.items():
            print(f"{variant:12} {r['acc']:10.2f} {r.get('decay_classifier', DECAY0):14.3g} "
                  f"{r.get('decay_weightnet', DECAY0):14.3g} {r['seconds']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
