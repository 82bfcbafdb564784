"""Meta-Weight-Net data reweighting on long-tailed, label-noisy digits, with the Python API.

The twin of ``reweighting.mlo``: the same problems, data and hyperparameters, written with
mlodsl's Betty-style Python API. Variants:

* ``--variant baseline``: the classifier alone, every example weighted equally;
* ``--variant darts``: Meta-Weight-Net with the ``darts()`` hypergradient (the ``.mlo`` file's);
* ``--variant neumann``: the same with ``neumann(iterations=3)``.

Run ``python -m examples.reweighting.reweighting_python --variant all --seed 0``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from examples.reweighting.parts import (Net, WeightNet, accuracy, digits, meta_digits,
                                        noisy_digits, reweighted_ce)
from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.problems import ImplicitProblem
from mlodsl.runtime.data import make_loader

#: Hyperparameters shared with ``reweighting.mlo`` (keep the two in step).
SIZES = [64, 100, 10]
LR, MOMENTUM, BATCH = 0.01, 0.9, 64
META_LR, META_BATCH = 1e-3, 100
VARIANTS = ("baseline", "darts", "neumann")


class Classifier(ImplicitProblem):
    """Lower level: per-sample cross-entropy weighted by the weight net."""

    def training_step(self, batch):
        x, y = batch
        return reweighted_ce(self.module(x), y, self.reweight)


class PlainClassifier(ImplicitProblem):
    """The baseline: plain (unweighted) cross-entropy on the noisy data."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.module(x), y)


class Reweight(ImplicitProblem):
    """Upper level: the classifier's cross-entropy on the clean meta set."""

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.classifier(x), y)


class ReweightEngine(Engine):
    """Validation: test accuracy of the classifier."""

    def validation(self):
        return accuracy(self.classifier, digits("test"))



def build(variant: str, iterations: int, seed: int, valid_step: int = 0) -> ReweightEngine:
    """Build the engine of one variant (``baseline``, ``darts`` or ``neumann``)."""
    torch.manual_seed(seed)
    net = Net(SIZES)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    train = make_loader(noisy_digits(), BATCH, seed=seed)
    if variant == "baseline":
        problems = [PlainClassifier(name="classifier", module=net, optimizer=opt,
                                    train_data_loader=train, config=Config())]
        deps = {}
    else:
        weigher = WeightNet()
        method = dict(type="darts") if variant == "darts" else dict(
            type="neumann", neumann_iterations=3, neumann_alpha=1.0)
        reweight = Reweight(name="reweight", module=weigher,
                            optimizer=torch.optim.Adam(weigher.parameters(), lr=META_LR),
                            train_data_loader=make_loader(meta_digits(), META_BATCH, seed=seed + 1),
                            config=Config(**method))
        classifier = Classifier(name="classifier", module=net, optimizer=opt,
                                train_data_loader=train, config=Config())
        problems = [reweight, classifier]
        deps = {"u2l": {reweight: [classifier]}, "l2u": {classifier: [reweight]}}
    config = EngineConfig(train_iters=iterations, valid_step=valid_step, seed=seed)
    return ReweightEngine(config=config, problems=problems, dependencies=deps)


@torch.no_grad()
def weight_profile(engine) -> dict:
    """Mean learned weight of the training examples whose label is clean vs corrupted."""
    if "reweight" not in engine.problems:
        return {}
    x, noisy, clean = noisy_digits(with_clean=True).tensors
    losses = F.cross_entropy(engine.classifier(x), noisy, reduction="none")
    w = engine.reweight(losses)
    bad = noisy != clean
    return {"w_clean": w[~bad].mean().item(), "w_noisy": w[bad].mean().item()}


def summarize(engine) -> dict:
    """Test accuracy of a finished run, plus the weight profile when there is a weight net."""
    out = dict(engine.validation())
    out.update(weight_profile(engine))
    return out


def main(argv=None) -> int:
    """Run the chosen variants and print their test accuracy (a table, or JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest for these tiny models)")
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
        print(f"\n{'variant':10} {'test acc %':>10} {'w clean':>8} {'w noisy':>8} {'seconds':>8}")
        for variant, r in results.items():
            print(f"{variant:10} {r['acc']:10.2f} {r.get('w_clean', 1.0):8.3f} "
                  f"{r.get('w_noisy', 1.0):8.3f} {r['seconds']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
