"""Cost of each hypergradient method on the seed's HPO program, relative to plain training.

The program: a 784-200-10 MLP without bias (SGD, lr 0.01, momentum 0.9), batch 64, synthetic
MNIST-shaped data, and an upper holding one weight-decay coefficient per weight (Adam, lr 1e-5)
- the program of ``benchmarks/programs/hpo_mlodsl.py``.

For every configuration a fresh child process (so peak memory is its own) measures, in that one
process:

* ``plain_s``: seconds per plain training step of the MLP (forward, backward, ``opt.step()``,
  no mlodsl);
* ``mlo_s``: seconds per MLO iteration with ``Engine`` - ``T`` lower steps then one upper step
  with the method's hypergradient (``T = 1`` for the implicit methods, the unroll length for
  ``unroll``);
* ``ratio = mlo_s / plain_s``;
* ``peak_mb``: the rise of peak memory during the MLO iterations (CPU: the process's peak RSS;
  CUDA: ``torch.cuda.max_memory_allocated``).

``reinforce`` is left out: this program's upper reaches the lower through its parameters, not
by sampling, so the score-function estimator does not apply to it.

    python benchmarks/hypergrad_cost.py            # default run, about 3 minutes on 2 cores
    python benchmarks/hypergrad_cost.py --iters 5  # quicker
    python benchmarks/hypergrad_cost.py --device cuda --out results/hypergrad_cost_cuda.json

On CUDA every time is wall-clock after ``torch.cuda.synchronize()`` (the upper loader's
stamps synchronise too), and each row also has ``cuda_peak_mb``, the absolute
``torch.cuda.max_memory_allocated`` of the MLO iterations (model, data and optimizer state
included), besides ``peak_mb``, its rise above what was allocated before them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import _common  # noqa: E402

#: (label, Config fields of the upper, unroll length T)
CONFIGS = [
    ("darts", dict(type="darts"), 1),
    ("sama", dict(type="sama"), 1),
    ("neumann(3)", dict(type="neumann", neumann_iterations=3), 1),
    ("cg(3)", dict(type="cg", cg_iterations=3), 1),
    ("unroll T=1", dict(type="unroll", first_order=False), 1),
    ("unroll T=1 ckpt", dict(type="unroll", first_order=False, unroll_checkpoint=True), 1),
    ("unroll T=5", dict(type="unroll", first_order=False), 5),
    ("unroll T=5 ckpt", dict(type="unroll", first_order=False, unroll_checkpoint=True), 5),
    ("unroll T=20", dict(type="unroll", first_order=False), 20),
    ("unroll T=20 ckpt", dict(type="unroll", first_order=False, unroll_checkpoint=True), 20),
]


def _child(spec: dict) -> dict:
    """Measure one configuration (runs in its own process)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from mlodsl import Config, Engine, EngineConfig, ImplicitProblem

    _common.setup_process(spec["threads"], 0)  # devices: placed explicitly below
    x, y, _, _ = _common.synthetic_data(0)
    device = torch.device(spec["device"])
    x, y = x.to(device), y.to(device)

    def loader(seed):
        return _common.TimedLoader(x, y, batch_size=64, seed=seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 200, bias=False)
            self.fc2 = nn.Linear(200, 10, bias=False)

        def forward(self, inp):
            return F.log_softmax(self.fc2(F.relu(self.fc1(inp.view(-1, 784)))), dim=1)

    class WeightDecay(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1_wdecay = nn.Parameter(torch.ones(200, 784) * 5e-4)
            self.fc2_wdecay = nn.Parameter(torch.ones(10, 200) * 5e-4)

    def reg(net, wd):
        return ((net.fc1.weight ** 2 * wd.fc1_wdecay).sum()
                + (net.fc2.weight ** 2 * wd.fc2_wdecay).sum()) / 2

    class Classifier(ImplicitProblem):
        def training_step(self, batch):
            inp, target = batch
            return F.cross_entropy(self.module(inp), target) + reg(self.module, self.hpo.module)

    class HPO(ImplicitProblem):
        def training_step(self, batch):
            inp, target = batch
            net = self.classifier.module
            return F.cross_entropy(net(inp), target) + reg(net, self.module)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # -- plain training steps of the same MLP ------------------------------------------------
    net = Net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    plain_loader = loader(1)
    it = iter(())

    def plain_step():
        nonlocal it
        batch = next(it, None)
        if batch is None:  # start another epoch
            it = iter(plain_loader)
            batch = next(it)
        inp, target = batch
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(inp), target).backward()
        opt.step()
    for _ in range(10):
        plain_step()
    sync()
    n_plain = spec["plain_steps"]
    t0 = time.perf_counter()
    for _ in range(n_plain):
        plain_step()
    sync()
    plain_s = (time.perf_counter() - t0) / n_plain

    # -- MLO iterations ----------------------------------------------------------------------
    T = spec["unroll"]
    cls_mod, hpo_mod = Net().to(device), WeightDecay().to(device)
    classifier = Classifier(name="classifier", module=cls_mod,
                            optimizer=torch.optim.SGD(cls_mod.parameters(), lr=0.01,
                                                      momentum=0.9),
                            train_data_loader=loader(2), config=Config(unroll_steps=T))
    hpo_loader = loader(3)
    hpo_loader.sync_cuda = device.type == "cuda"  # its stamps time the MLO iterations
    hpo = HPO(name="hpo", module=hpo_mod,
              optimizer=torch.optim.Adam(hpo_mod.parameters(), lr=1e-5),
              train_data_loader=hpo_loader, config=Config(unroll_steps=T, **spec["config"]))
    warm, iters = spec["warmup"], spec["iters"]
    engine = Engine(config=EngineConfig(train_iters=(warm + iters + 1) * T, valid_step=0),
                    problems=[hpo, classifier],
                    dependencies={"l2u": {classifier: [hpo]}, "u2l": {hpo: [classifier]}},
                    device=device)
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated() / 2**20
    else:
        base = _common.reset_peak_rss()[1]  # freed set-up memory does not count
    engine.run()
    sync()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else _common.peak_rss_mb()) - base
    mlo_s = hpo_loader.seconds_per_batch(warm, iters)
    out = {"plain_s": plain_s, "mlo_s": mlo_s, "ratio": mlo_s / plain_s, "peak_mb": peak,
           "device": str(next(cls_mod.parameters()).device)}
    if spec.get("tensor_memory") and device.type == "cpu":
        # A few more iterations under torch.profiler's memory events: the peak of live CPU
        # tensor bytes above what was live before them (the CPU's max_memory_allocated).
        engine.config.train_iters = engine.global_step + 3 * T
        out["tensor_peak_mb"] = _common.run_with_tensor_memory(engine.run)
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_base_mb"] = base
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=10, help="measured MLO iterations")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--plain-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--only", default=None, help="comma-separated labels to run")
    p.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    p.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="run each child with glibc's MALLOC_MMAP_THRESHOLD_=BYTES: every larger "
                        "allocation is its own mapping, returned when freed, so peak RSS follows "
                        "the live tensors instead of where they landed in the heap (CPU memory "
                        "only: the page faults slow the timings)")
    p.add_argument("--tensor-memory", action="store_true",
                   help="also measure the peak of live CPU tensor bytes over 3 more MLO "
                        "iterations (torch.profiler memory events; independent of the C "
                        "allocator)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _common.emit(_child(json.loads(args.child)))
        return 0

    rows = []
    wanted = set(args.only.split(",")) if args.only else None
    for label, config, T in CONFIGS:
        if wanted and label not in wanted:
            continue
        spec = dict(config=config, unroll=T, iters=args.iters, warmup=args.warmup,
                    plain_steps=args.plain_steps, threads=args.threads, device=args.device,
                    tensor_memory=args.tensor_memory)
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                  capture_output=True, text=True, cwd=str(HERE.parent),
                                  timeout=args.timeout, env=_child_env(args))
            result = _common.parse_result_line(proc.stdout) or {
                "error": _common.error_string(RuntimeError(proc.stderr.strip()[-400:]))}
        except subprocess.TimeoutExpired:  # one hung configuration must not cost the rest
            result = {"error": f"timeout after {args.timeout}s"}
        rows.append({"method": label, "unroll": T, **result})
        print(f"{label}: {result}", file=sys.stderr, flush=True)
        if args.out:  # after every configuration: a run cut short keeps what it measured
            _write(args.out, {"meta": {"partial": True, "device": args.device}, "results": rows})
    torch = __import__("torch")
    meta = {"torch": torch.__version__, "device": args.device,
            "threads": args.threads, "iters": args.iters, "machine": os.uname().machine,
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    if args.mmap_threshold is not None:
        meta["malloc_mmap_threshold"] = args.mmap_threshold
    if args.device.startswith("cuda") and torch.cuda.is_available():
        meta["device_name"] = torch.cuda.get_device_name()
        meta["cuda"] = torch.version.cuda
    report = {"meta": meta, "results": rows}
    print(json.dumps(report, indent=1))
    print()
    columns = [("method", "method"), ("unroll", "T"), ("plain_s", "plain s/step"),
               ("mlo_s", "s/MLO iter"), ("ratio", "ratio"), ("peak_mb", "peak MiB")]
    if any("cuda_peak_mb" in r for r in rows):
        columns.append(("cuda_peak_mb", "max_memory_allocated MiB"))
    if any("tensor_peak_mb" in r for r in rows):
        columns.append(("tensor_peak_mb", "live tensors peak MiB"))
    print(_common.format_table(rows, columns + [("error", "error")]))
    if args.out:
        _write(args.out, report)
    return 0


def _write(path: str, report: dict) -> None:
    """Write the JSON report (the folder is created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1))


def _child_env(args) -> dict | None:
    """The children's environment: ours, with ``--mmap-threshold`` applied."""
    if args.mmap_threshold is None:
        return None
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)}


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


if __name__ == "__main__":
    sys.exit(main())
