"""A small Python-API program shared by the runtime, CLI and CUDA tests (and their subprocesses).

``build(...)`` returns an engine for a bilevel HPO program (a per-parameter weight decay over
a small MLP) on synthetic data, fully determined by its arguments. Run as a module
(``python -m tests.support.mlp_hpo``) it trains one and saves the final parameters: the
SIGKILL-and-resume test runs it in a subprocess.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from mlodsl import Config, Engine, EngineConfig, ImplicitProblem
from mlodsl.runtime.data import make_loader


class Net(nn.Module):
    """A 20-16-3 MLP."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Decay(nn.Module):
    """Per-parameter weight decay for Net's first layer."""

    def __init__(self):
        super().__init__()
        self.wd = nn.Parameter(torch.full((16, 20), 1e-2))

    def forward(self):
        return self.wd


class Lower(ImplicitProblem):
    """Cross-entropy plus the upper's weighted L2."""

    def training_step(self, batch):
        x, y = batch
        reg = (self.module.fc1.weight ** 2 * self.upper()).sum() / 2
        return F.cross_entropy(self.module(x), y) + reg


class Upper(ImplicitProblem):
    """Validation-style loss of the lower, at the lower's current parameters."""

    def training_step(self, batch):
        x, y = batch
        loss = F.cross_entropy(self.lower(x), y)
        return {"loss": loss, "acc": (self.lower(x).argmax(1) == y).float().mean()}

    def param_callback(self, params):
        for p in params:
            p.data.clamp_(min=0.0)


class HPOEngine(Engine):
    """Validation on a fixed held-out set."""

    def validation(self):
        x, y = self.valid_data
        return {"loss": F.cross_entropy(self.lower(x), y).item(),
                "acc": (self.lower(x).argmax(1) == y).float().mean().item()}


def dataset(n: int = 96, seed: int = 123):
    """A learnable 3-class data set of n points in 20 dimensions."""
    protos = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = protos[y] + 1.5 * torch.randn(n, 20, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def build(iters: int = 20, seed: int = 0, engine_kwargs=None, lower_opt=None,
          shuffle: bool = True, batch_size: int = 16, upper_data=None, lower_data=None,
          scheduler=None, upper_config=None, lower_config=None):
    """A bilevel engine, identical for identical arguments."""
    torch.manual_seed(seed)
    net, decay = Net(), Decay()
    opt = lower_opt(net) if lower_opt else torch.optim.SGD(net.parameters(), lr=0.1,
                                                           momentum=0.9)
    lower = Lower(name="lower", module=net, optimizer=opt,
                  scheduler=scheduler(opt) if scheduler else None,
                  train_data_loader=lower_data if lower_data is not None else
                  make_loader(dataset(), batch_size, shuffle=shuffle, seed=seed + 1),
                  config=lower_config or Config())
    upper = Upper(name="upper", module=decay,
                  optimizer=torch.optim.Adam(decay.parameters(), lr=1e-3),
                  train_data_loader=upper_data if upper_data is not None else
                  torch.utils.data.DataLoader(dataset(64, seed=7), batch_size=batch_size,
                                              shuffle=shuffle),
                  config=upper_config or Config(type="darts", unroll_steps=2))
    cfg = dict(train_iters=iters, valid_step=5, seed=seed)
    cfg.update(engine_kwargs or {})
    engine = HPOEngine(config=EngineConfig(**cfg), problems=[upper, lower],
                       dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}})
    vx, vy = dataset(60, seed=99).tensors
    engine.valid_data = (vx, vy)
    return engine


def params_of(engine) -> dict[str, torch.Tensor]:
    """Every problem's parameters, by qualified name (detached copies)."""
    return {f"{n}.{k}": v.detach().clone() for n, p in engine.problems.items()
            for k, v in p.module.named_parameters()}


def main(argv=None) -> int:
    """Train (optionally resuming from and checkpointing to a folder); save the parameters."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--slow", type=float, default=0.0, help="seconds to sleep per iteration")
    args = ap.parse_args(argv)
    kw = {"valid_step": 5}
    if args.ckpt:
        kw.update(checkpoint_every=1, checkpoint_dir=args.ckpt, resume_from=args.ckpt,
                  checkpoint_keep=2)
    engine = build(args.iters, engine_kwargs=kw)
    if args.slow:
        import time

        engine.on_iteration_end = lambda: (time.sleep(args.slow),
                                           print(f"ITER {engine.global_step}", flush=True))
    engine.history.console = False
    engine.run()
    torch.save(params_of(engine), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
