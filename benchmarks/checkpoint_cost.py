"""What a checkpoint costs, next to what an iteration costs, for the seed's HPO program.

The program: a 784-200-10 MLP classifier (lower, SGD with momentum) under per-parameter
weight decay (upper, Adam), darts hypergradients, synthetic MNIST-shaped data, built with
mlodsl's Python API. Measured in one process:

* seconds per iteration, from a run without checkpoints;
* seconds per checkpoint (``mlodsl.runtime.checkpoint.save_checkpoint``: state gathering,
  ``torch.save``, fsync, atomic rename), from ``--saves`` checkpoints of the trained engine;
* seconds per load (``load_latest``), and the checkpoint file's size;
* the end-to-end overhead of ``checkpoint_every=1`` against no checkpoints.

    python benchmarks/checkpoint_cost.py --iters 40 --saves 10 [--dir /tmp/ckpt]

Prints one JSON line (prefixed ``BENCH_RESULT``) and a table.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import torch
import torch.nn as nn
import torch.nn.functional as F

import _common
from mlodsl import Config, Engine, EngineConfig, ImplicitProblem
from mlodsl.runtime import checkpoint as ckpt


class Net(nn.Module):
    """The seed's 784-200-10 MLP."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 200, bias=False)
        self.fc2 = nn.Linear(200, 10, bias=False)

    def forward(self, x):
        return F.log_softmax(self.fc2(F.relu(self.fc1(x.view(-1, 784)))), dim=1)


class WeightDecay(nn.Module):
    """One weight decay per classifier weight."""

    def __init__(self):
        super().__init__()
        self.fc1_wdecay = nn.Parameter(torch.ones(200, 784) * 5e-4)
        self.fc2_wdecay = nn.Parameter(torch.ones(10, 200) * 5e-4)

    def forward(self):
        return self.fc1_wdecay, self.fc2_wdecay


def _reg(net, decays):
    return sum(torch.sum(w ** 2 * d) / 2 for w, d in zip((net.fc1.weight, net.fc2.weight), decays))


class Classifier(ImplicitProblem):
    """Cross-entropy plus the upper's weighted L2."""

    def training_step(self, batch):
        x, y = batch
        return F.nll_loss(self.module(x), y) + _reg(self.module, self.hpo())


class HPO(ImplicitProblem):
    """The classifier's loss at its current weights."""

    def training_step(self, batch):
        x, y = batch
        return F.nll_loss(self.classifier(x), y) + _reg(self.classifier.module, self())

    def param_callback(self, params):
        for p in params:
            p.data.clamp_(min=1e-8)


def build(iters: int, seed: int, **engine_kwargs) -> Engine:
    """The HPO engine, identical for identical arguments."""
    torch.manual_seed(seed)
    x, y, _, _ = _common.synthetic_data(seed)
    data = torch.utils.data.TensorDataset(x, y)
    loader = lambda s: torch.utils.data.DataLoader(  # noqa: E731
        data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(s))
    net, wd = Net(), WeightDecay()
    classifier = Classifier(name="classifier", module=net,
                            optimizer=torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9),
                            train_data_loader=loader(seed + 1), config=Config(type="darts"))
    hpo = HPO(name="hpo", module=wd, optimizer=torch.optim.Adam(wd.parameters(), lr=1e-5),
              train_data_loader=loader(seed + 2), config=Config(type="darts"))
    engine = Engine(config=EngineConfig(train_iters=iters, valid_step=0, seed=seed,
                                        **engine_kwargs),
                    problems=[hpo, classifier],
                    dependencies={"l2u": {classifier: [hpo]}, "u2l": {hpo: [classifier]}})
    engine.history.console = False
    return engine


def measure(args) -> dict:
    """Run the measurements; return the result dict."""
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="mlodsl-ckpt-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        build(args.warmup, args.seed).run()  # warm caches and allocators
        plain = build(args.iters, args.seed)
        t0 = time.perf_counter()
        plain.run()
        s_iter = (time.perf_counter() - t0) / args.iters

        saves = []
        for _ in range(args.saves):
            t = time.perf_counter()
            ckpt.save_checkpoint(plain, root / "saves", keep=1)
            saves.append(time.perf_counter() - t)
            plain.global_step += 1  # a new file name each time, as in a run
        size = ckpt.list_checkpoints(root / "saves")[-1].stat().st_size

        loads = []
        for _ in range(max(3, args.saves // 3)):
            other = build(args.iters, args.seed)
            t = time.perf_counter()
            ckpt.load_latest(other, root / "saves")
            loads.append(time.perf_counter() - t)

        every = build(args.iters, args.seed, checkpoint_every=1,
                      checkpoint_dir=str(root / "every"), checkpoint_keep=2)
        t0 = time.perf_counter()
        every.run()
        s_iter_ckpt = (time.perf_counter() - t0) / args.iters
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    s_ckpt = _common.median(saves)
    return {
        "program": "hpo (784-200-10 MLP, per-parameter weight decay, darts)",
        "iters": args.iters, "saves": args.saves, "threads": args.threads,
        "torch": torch.__version__, "device": "cpu",
        "seconds_per_iter": s_iter,
        "seconds_per_checkpoint": s_ckpt,
        "seconds_per_load": _common.median(loads),
        "checkpoint_mb": size / 2 ** 20,
        "checkpoint_over_iter": s_ckpt / s_iter,
        "seconds_per_iter_checkpoint_every_1": s_iter_ckpt,
        "overhead_checkpoint_every_1": s_iter_ckpt / s_iter - 1.0,
    }


def main(argv=None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=40, help="iterations timed per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--saves", type=int, default=10, help="checkpoints timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args)
    _common.emit(result)
    rows = [{"what": k, "value": result[k]} for k in (
        "seconds_per_iter", "seconds_per_checkpoint", "seconds_per_load", "checkpoint_mb",
        "checkpoint_over_iter", "seconds_per_iter_checkpoint_every_1",
        "overhead_checkpoint_every_1")]
    print(_common.format_table(rows, [("what", "measure"), ("value", "value")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
