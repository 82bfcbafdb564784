"""Per-parameter weight decay by bilevel optimization: the seed's program, ported and corrected.

Written with mlodsl's Python API, which mirrors Betty's (only the imports differ). Three runs:

* ``--variant seed``: the seed's formulation. Both levels minimise the same training loss,
  L2 term included. The upper can lower that loss directly by shrinking every coefficient, so
  the weight decays are driven to their clamp (1e-8): the program learns "no regularisation".
* ``--variant heldout``: the upper minimises the classifier's cross-entropy on a held-out
  validation split (no L2 term), the textbook hyperparameter-optimization objective.
* ``--variant baseline``: a fixed weight decay of 5e-4, no upper problem.

Run ``python -m examples.hpo.hpo_python --variant all`` to see all three on the digits data,
or ``--mnist DIR`` with MNIST's IDX files in DIR (784-200-10 net).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from examples.hpo.parts import Net, WeightDecay, accuracy, digits, mnist, weighted_l2
from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine
from mlodsl.problems import ImplicitProblem
from mlodsl.runtime.data import make_loader


class Classifier(ImplicitProblem):
    """Lower level: cross-entropy plus the per-parameter L2 term set by ``hpo``."""

    def training_step(self, batch):
        x, target = batch
        out = self.module(x)
        return F.cross_entropy(out, target) + weighted_l2(self.module, self.hpo())


class FixedDecayClassifier(ImplicitProblem):
    """The baseline: one weight decay of 5e-4 for every parameter, nothing above it."""

    def training_step(self, batch):
        x, target = batch
        l2 = sum(p.pow(2).sum() for p in self.module.parameters()) * 5e-4 / 2
        return F.cross_entropy(self.module(x), target) + l2


class HPO(ImplicitProblem):
    """Upper level of the seed: the same training loss as the classifier, L2 term included."""

    def training_step(self, batch):
        x, target = batch
        out = self.classifier(x)
        loss = F.cross_entropy(out, target) + weighted_l2(self.classifier, self())
        acc = (out.argmax(dim=1) == target).float().mean() * 100
        return {"loss": loss, "acc": acc}

    def param_callback(self, params):
        for p in params:
            p.data.clamp_(min=1e-8)  # weight decays stay positive


class HeldOutHPO(HPO):
    """Upper level judged on held-out data: validation cross-entropy, no L2 term."""

    def training_step(self, batch):
        x, target = batch
        out = self.classifier(x)
        acc = (out.argmax(dim=1) == target).float().mean() * 100
        return {"loss": F.cross_entropy(out, target), "acc": acc}


class HPOEngine(Engine):
    """Validation: test accuracy of the classifier, and the best so far."""

    test_set = None

    def validation(self):
        acc = accuracy(self.classifier, self.test_set)["acc"]
        self.best_acc = max(getattr(self, "best_acc", -1.0), acc)
        return {"acc": acc, "best_acc": self.best_acc}



def build(variant: str, data, sizes, iterations: int, seed: int, valid_step: int,
          device: str = "cpu", log_step: int = -1) -> HPOEngine:
    """Build the engine of one variant (``seed``, ``heldout`` or ``baseline``)."""
    torch.manual_seed(seed)
    train, val, test = data
    net = Net(sizes)
    classifier_opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    problems, deps = [], {}
    if variant == "baseline":
        classifier = FixedDecayClassifier(
            name="classifier", module=net, optimizer=classifier_opt,
            train_data_loader=make_loader(train, 64, seed=seed), config=Config(), device=device)
        problems = [classifier]
    else:
        classifier = Classifier(
            name="classifier", module=net, optimizer=classifier_opt,
            train_data_loader=make_loader(train, 64, seed=seed), config=Config(), device=device)
        decay = WeightDecay(net, init=5e-4)
        upper_cls, upper_data = (HPO, train) if variant == "seed" else (HeldOutHPO, val)
        hpo = upper_cls(
            name="hpo", module=decay, optimizer=torch.optim.Adam(decay.parameters(), lr=1e-5),
            train_data_loader=make_loader(upper_data, 64, seed=seed + 1),
            config=Config(type="darts", step=1, log_step=log_step, retain_graph=True),
            device=device)
        problems = [hpo, classifier]
        deps = {"u2l": {hpo: [classifier]}, "l2u": {classifier: [hpo]}}
    HPOEngine.test_set = test
    config = EngineConfig(train_iters=iterations, valid_step=valid_step, seed=seed)
    return HPOEngine(config=config, problems=problems, dependencies=deps)


def summarize(engine: HPOEngine) -> dict:
    """Final test accuracy, best accuracy and weight-decay statistics of a finished run."""
    out = dict(engine.validation())
    if "hpo" in engine.problems:
        flat = torch.cat([d.detach().flatten() for d in engine.hpo.module()])
        out.update(decay_mean=flat.mean().item(), decay_min=flat.min().item(),
                   decay_max=flat.max().item(),
                   decay_at_clamp=(flat <= 1e-8 + 1e-12).float().mean().item())
    return out


def main(argv=None) -> int:
    """Run the chosen variants and print their test accuracy (a table and JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=["seed", "heldout", "baseline", "all"], default="all")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--valid-step", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mnist", metavar="DIR", help="use MNIST IDX files from DIR instead of digits")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print only JSON")
    args = ap.parse_args(argv)

    if args.mnist:
        data = tuple(mnist(args.mnist, s) for s in ("train", "val", "test"))
        sizes = [784, 200, 10]
    else:
        data = tuple(digits(s) for s in ("train", "val", "test"))
        sizes = [64, 200, 10]
    variants = ["baseline", "seed", "heldout"] if args.variant == "all" else [args.variant]
    results = {}
    for variant in variants:
        start = time.perf_counter()
        engine = build(variant, data, sizes, args.iterations, args.seed, args.valid_step,
                       args.device)
        engine.history.console = not args.json
        if not args.json and len(variants) > 1:  # whose validation log follows
            print(f"== variant {variant} ==", file=sys.stderr, flush=True)
        engine.run()
        results[variant] = summarize(engine)
        results[variant]["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"\n{'variant':10} {'test acc %':>10} {'best %':>8} {'mean decay':>11} "
              f"{'at clamp':>9} {'seconds':>8}")
        for variant, r in results.items():
            print(f"{variant:10} {r['acc']:10.2f} {r['best_acc']:8.2f} "
                  f"{r.get('decay_mean', 5e-4):11.3g} {r.get('decay_at_clamp', 0.0):9.1%} "
                  f"{r['seconds']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
