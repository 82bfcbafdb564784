"""Betty and mlodsl on the same Betty-style program: do they agree?

One program in Betty's idiom (an environment sampling tasks, problems without data loaders
that define ``get_batch``, ``on_inner_loop_start`` resetting the inner weights to the meta
weights, ``param_callback()`` with Betty's signature, a custom ``train_step`` that steps the
leaves itself, a validation that fine-tunes with gradients, gradient accumulation on the upper)
is run with ``betty.*`` imports by a Python that has Betty 0.2.1, and with ``mlodsl.*`` imports
by this one. Each run prints its hook calls (who, at which step count), its step counts and its
final parameters; this script compares them.

    python benchmarks/vs_betty.py --setup     # once: benchmarks/.betty-venv with Betty 0.2.1
    python benchmarks/betty_parity.py
    python benchmarks/betty_parity.py --betty-python /path/to/venv/bin/python --method cg

Exit status 0 when every run agrees (parameters to ``--tol``), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def program(lib: str, method: str, accumulation: int, iterations: int) -> dict:
    """Run the program with ``lib``'s imports; return its hook log, counts and parameters."""
    import torch
    import torch.nn.functional as F
    if lib == "betty":
        from betty.configs import Config, EngineConfig
        from betty.engine import Engine
        from betty.envs import Env
        from betty.problems import ImplicitProblem
    else:
        from mlodsl.configs import Config, EngineConfig
        from mlodsl.engine import Engine
        from mlodsl.envs import Env
        from mlodsl.problems import ImplicitProblem

    torch.manual_seed(0)
    x_all = torch.randn(16, 3)
    y_all = x_all @ torch.tensor([[1.0], [-2.0], [0.5]])
    log: list = []

    class Tasks(Env):
        def step(self, k):
            self.batch = (x_all + 0.1 * k, y_all)

    class Outer(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.mse_loss(self.inner(x), y)

        def get_batch(self):
            return self.env.batch

        def on_inner_loop_start(self):
            log.append(["outer", self.count])

    class Inner(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            reg = sum(((a - b) ** 2).sum()
                      for a, b in zip(self.parameters(), self.outer.parameters()))
            return F.mse_loss(self.module(x), y) + 0.5 * reg

        def get_batch(self):
            return self.env.batch

        def on_inner_loop_start(self):
            log.append(["inner", self.count])
            self.module.load_state_dict(self.outer.module.state_dict())

        def param_callback(self):
            log.append(["param_callback", self.count])

    class TaskEngine(Engine):
        def train_step(self):
            if self.global_step % 3 == 1:
                self.env.step(self.global_step)
            for leaf in self.leaves:
                leaf.step(global_step=self.global_step)

        def validation(self):
            net = torch.nn.Linear(3, 1)
            net.load_state_dict(self.outer.module.state_dict())
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            opt.zero_grad()
            F.mse_loss(net(x_all), y_all).backward()
            opt.step()
            return {"fine_tuned": F.mse_loss(net(x_all), y_all).item()}

    torch.manual_seed(1)
    outer_net, inner_net = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    knobs = {"cg": {"cg_iterations": 1}, "neumann": {"neumann_iterations": 5,
                                                     "neumann_alpha": 0.1}}.get(method, {})
    outer = Outer(name="outer", module=outer_net,
                  optimizer=torch.optim.SGD(outer_net.parameters(), lr=0.05),
                  config=Config(gradient_accumulation=accumulation))
    inner = Inner(name="inner", module=inner_net,
                  optimizer=torch.optim.SGD(inner_net.parameters(), lr=0.1),
                  config=Config(type=method, unroll_steps=3, **knobs))
    engine = TaskEngine(problems=[outer, inner],
                        config=EngineConfig(train_iters=iterations, valid_step=6),
                        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
                        env=Tasks())
    engine.run()
    params = [v for net in (outer_net, inner_net) for v in
              torch.cat([p.detach().reshape(-1) for p in net.parameters()]).tolist()]
    return {"log": log, "counts": [outer.count, inner.count], "params": params,
            "paths": [[p.name for p in path] for path in outer.paths],
            "leaves": [p.name for p in engine.leaves]}


def run_side(python: str, lib: str, args) -> dict:
    """Run this file as ``--side lib`` with ``python``; its JSON result."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [python, str(Path(__file__)), "--side", lib, "--method", args.method,
           "--accumulation", str(args.accumulation), "--iterations", str(args.iterations)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{lib} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """Compare the two runs (or, with ``--side``, be one of them)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=("betty", "mlodsl"), help=argparse.SUPPRESS)
    ap.add_argument("--method", default="darts", choices=("darts", "neumann", "cg"))
    ap.add_argument("--accumulation", type=int, default=1, help="the outer's "
                    "gradient_accumulation")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--betty-python", default=str(HERE / ".betty-venv" / "bin" / "python"),
                    help="a Python that can import Betty 0.2.1")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args(argv)
    if args.side:
        print(json.dumps(program(args.side, args.method, args.accumulation, args.iterations)))
        return 0
    if not Path(args.betty_python).exists():
        print(f"no Betty interpreter at {args.betty_python} (run benchmarks/vs_betty.py "
              "--setup, or pass --betty-python)", file=sys.stderr)
        return 2
    betty = run_side(args.betty_python, "betty", args)
    ours = run_side(sys.executable, "mlodsl", args)
    ok = True
    for key in ("log", "counts", "paths", "leaves"):
        same = betty[key] == ours[key]
        ok &= same
        print(f"{key:8} {'same' if same else 'DIFFERENT'}"
              + ("" if same else f"\n  betty:  {betty[key]}\n  mlodsl: {ours[key]}"))
    diff = max(abs(a - b) for a, b in zip(betty["params"], ours["params"]))
    ok &= diff <= args.tol
    print(f"params   largest difference {diff:.2e} (tolerance {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
