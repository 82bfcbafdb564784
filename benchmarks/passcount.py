"""A pass-count model of one MLO iteration, timed from a plain training step.

One *MLO iteration* is ``unroll`` steps of the lower problem followed by one step of the upper
problem with a hypergradient. Whatever a library does, it cannot do less than:

- each lower step: draw a batch, 1 forward + 1 backward of the lower loss, 1 optimizer update;
- the upper step: draw a batch, 1 forward + 1 backward of the upper loss (giving both the
  direct gradient and ``v``, the upper loss's gradient with respect to the lower's
  parameters), 1 optimizer update;
- plus the method's own work on the lower loss at the lower's current parameters:

  ========  =========================================================================
  darts     2 forwards + 2 backwards with respect to the upper's parameters only (the
            lower loss's gradient in lambda at theta + eps v and theta - eps v: a finite
            difference; autograd visits only the part of the graph that lambda reaches)
  neumann   1 forward + 1 backward that builds a graph (create_graph=True), then
            ``k`` Hessian-vector products for the series and 1 mixed second-derivative
            product d2L/dlambda dtheta . x to map the result to the upper's parameters
  cg        the same counts as neumann, with ``k`` conjugate-gradient iterations
  ========  =========================================================================

The mixed product is counted with the HVPs in the pass totals (it is one double-backward
through the same graph) but timed on its own, as is the backward in lambda only.
Each primitive is timed here, in process CPU time, in plain PyTorch on the same model, batch
size and thread count as the benchmark programs, so ``bound_seconds`` is the cost of the
minimal pass schedule and ``measured / bound`` is a library's overhead multiple (1.0 = no
overhead). The bound is also
given in *plain steps* (1 plain step = batch + 1 forward + 1 backward + 1 update of the lower).

    python benchmarks/passcount.py                      # both programs, table
    python benchmarks/passcount.py --program hpo --json
    python benchmarks/passcount.py --report benchmarks/results/vs_betty.json   # measured multiples

As a module: :func:`passes` (the counts), :func:`measure_primitives` (the timings) and
:func:`bound` (the two combined).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("darts", "neumann", "cg")
PROGRAMS = ("hpo", "reweight")


@dataclass(frozen=True)
class Passes:
    """Minimum passes of one MLO iteration, split by the loss they run on."""

    batches: int           # batches drawn (lower and upper)
    lower_forward: int     # forwards of the lower loss
    lower_backward: int    # first-order backwards of the lower loss (in theta)
    lower_backward_upper: int  # first-order backwards of the lower loss in lambda only
    lower_backward_graph: int  # backwards that build a graph for second derivatives
    hvp: int               # Hessian-vector products in theta
    mixed: int             # mixed second-derivative products (d2L/dlambda dtheta . x)
    lower_update: int      # optimizer steps of the lower
    upper_forward: int
    upper_backward: int
    upper_update: int

    @property
    def forward(self) -> int:
        """All forward passes."""
        return self.lower_forward + self.upper_forward

    @property
    def backward(self) -> int:
        """All backward passes (first-order and graph-building)."""
        return (self.lower_backward + self.lower_backward_upper + self.lower_backward_graph
                + self.upper_backward)

    @property
    def second_order(self) -> int:
        """Hessian-vector and mixed second-derivative products."""
        return self.hvp + self.mixed


def passes(method: str, unroll: int = 1, hvp_iters: int = 1) -> Passes:
    """The minimum pass counts of one MLO iteration of ``method`` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    fwd, bwd_up, bwd_graph, hvp, mixed = unroll, 0, 0, 0, 0  # the lower steps
    if method == "darts":
        fwd, bwd_up = fwd + 2, 2
    else:  # neumann, cg: one graph-building gradient, k products, one mixed product
        fwd, bwd_graph, hvp, mixed = fwd + 1, 1, hvp_iters, 1
    return Passes(batches=unroll + 1, lower_forward=fwd, lower_backward=unroll,
                  lower_backward_upper=bwd_up, lower_backward_graph=bwd_graph, hvp=hvp,
                  mixed=mixed, lower_update=unroll,
                  upper_forward=1, upper_backward=1, upper_update=1)


# ----------------------------------------------------------------------------- timing

def _problem(program: str, batch_size: int, seed: int):
    """Plain-PyTorch twin of a benchmark program's two losses.

    Returns ``(lower_params, upper_params, lower_loss(batch), upper_loss(batch), loader,
    lower_opt, upper_opt)`` with the same layers, optimizers and batch size as
    ``benchmarks/programs/<program>_*.py``.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    import _common

    x, y, _, _ = _common.synthetic_data(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 200, bias=False), nn.ReLU(),
                        nn.Linear(200, 10, bias=False), nn.LogSoftmax(dim=1))
    if program == "hpo":
        upper = nn.ParameterList([nn.Parameter(torch.ones(200, 784) * 5e-4),
                                  nn.Parameter(torch.ones(10, 200) * 5e-4)])

        def lower_loss(batch):
            xb, yb = batch
            reg = sum(torch.sum(w.pow(2) * d) / 2
                      for w, d in zip((net[1].weight, net[3].weight), upper))
            return F.cross_entropy(net(xb), yb) + reg

        upper_loss = lower_loss  # the seed's HPO: the same loss at both levels
        upper_lr = 1e-5
    elif program == "reweight":
        upper = nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 1), nn.Sigmoid())

        def lower_loss(batch):
            xb, yb = batch
            loss = F.cross_entropy(net(xb), yb, reduction="none")
            return torch.mean(upper(loss.detach().unsqueeze(1)).squeeze(1) * loss)

        def upper_loss(batch):
            xb, yb = batch
            return F.cross_entropy(net(xb), yb)

        upper_lr = 1e-3
    else:
        raise ValueError(f"unknown program {program!r}")
    loader = _common.TimedLoader(x, y, batch_size=batch_size, seed=seed)
    lower_opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    upper_opt = torch.optim.Adam(upper.parameters(), lr=upper_lr)
    return (list(net.parameters()), list(upper.parameters()), lower_loss, upper_loss, loader,
            lower_opt, upper_opt)


def _median_seconds(fn: Callable[[], object], reps: int, warmup: int,
                    clock: Callable[[], float] = time.process_time) -> float:
    """Median duration of ``fn()``; process CPU time by default (steady on a shared machine,
    and what the benchmark programs report as ``cpu_seconds_per_iter``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def measure_primitives(program: str = "hpo", threads: int = 1, batch_size: int = 64,
                       seed: int = 0, reps: int = 200, warmup: int = 20) -> dict[str, float]:
    """Median seconds of each primitive of :class:`Passes`, and of the plain step.

    Every primitive is timed as the difference between two realistic loops that draw a fresh
    batch each time (a backward cannot run without its forward, and timing a primitive alone in
    a hot loop flatters it), so that a lower step in the model costs exactly one plain step:
    ``batches + lower_forward + lower_backward + lower_update == plain_step``.
    """
    import torch

    import _common

    _common.setup_process(threads, seed)
    lp, up, lower_loss, upper_loss, loader, lower_opt, upper_opt = _problem(
        program, batch_size, seed)
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    vec = [torch.randn_like(p) for p in lp]

    def lower(stage):
        b = next_batch()
        if stage == "batch":
            return
        loss = lower_loss(b)
        if stage == "forward":
            return
        if stage == "backward_upper":
            torch.autograd.grad(loss, up)
            return
        if stage in ("graph", "hvp", "mixed"):
            g = torch.autograd.grad(loss, lp, create_graph=True)
            if stage == "hvp":
                torch.autograd.grad(g, lp, grad_outputs=vec)
            elif stage == "mixed":
                torch.autograd.grad(g, up, grad_outputs=vec)
            return
        lower_opt.zero_grad()
        loss.backward(inputs=lp)
        if stage == "step":
            lower_opt.step()

    def upper(stage):
        b = next_batch()
        loss = upper_loss(b)
        if stage == "forward":
            return
        upper_opt.zero_grad()
        lower_opt.zero_grad()
        loss.backward(inputs=lp + up)  # direct gradient and v in one backward
        if stage == "step":
            upper_opt.step()

    raw = {f"lower_{s}": _median_seconds(lambda s=s: lower(s), reps, warmup)
           for s in ("batch", "forward", "backward", "backward_upper", "step", "graph", "hvp",
                     "mixed")}
    raw.update({f"upper_{s}": _median_seconds(lambda s=s: upper(s), reps, warmup)
                for s in ("forward", "backward", "step")})
    d = lambda a, b: max(raw[a] - raw[b], 0.0)  # noise can make a difference negative
    return {
        "batches": raw["lower_batch"],
        "lower_forward": d("lower_forward", "lower_batch"),
        "lower_backward": d("lower_backward", "lower_forward"),
        "lower_update": d("lower_step", "lower_backward"),
        "lower_backward_upper": d("lower_backward_upper", "lower_forward"),
        "lower_backward_graph": d("lower_graph", "lower_forward"),
        "hvp": d("lower_hvp", "lower_graph"),
        "mixed": d("lower_mixed", "lower_graph"),
        "upper_forward": d("upper_forward", "lower_batch"),
        "upper_backward": d("upper_backward", "upper_forward"),
        "upper_update": d("upper_step", "upper_backward"),
        "plain_step": raw["lower_step"],
    }


def bound(primitives: dict[str, float], method: str, unroll: int = 1,
          hvp_iters: int = 1) -> dict[str, object]:
    """Pass counts of ``method`` and their cost: seconds and plain steps."""
    p = passes(method, unroll, hvp_iters)
    seconds = sum(getattr(p, k) * primitives[k] for k in asdict(p))
    return {"method": method, "unroll": unroll, "hvp_iters": hvp_iters,
            "forward": p.forward, "backward": p.backward, "hvp": p.second_order,
            "passes": asdict(p), "bound_seconds": seconds,
            "bound_plain_steps": seconds / primitives["plain_step"]}


def model(program: str, threads: int = 1, unrolls=(1, 5), hvp_iters: int = 1,
          primitives: dict[str, float] | None = None) -> dict[str, object]:
    """The whole model for one program: primitives and a bound per method and unroll."""
    prims = primitives or measure_primitives(program, threads)
    rows = [bound(prims, m, k, hvp_iters) for m in METHODS for k in unrolls]
    return {"program": program, "threads": threads, "primitives": prims, "bounds": rows}


def report_table(report: dict) -> str:
    """The pass counts and bound of each row of a ``vs_betty.py`` report, with the measured
    CPU time of both libraries as multiples of the bound."""
    import _common

    rows = []
    for r in report["rows"]:
        p = r.get("passes") or {}
        ms = lambda s: s * 1e3 if s is not None else None  # noqa: E731
        rows.append({
            "config": f"{r['program']} {r['method']} u{r['unroll']}",
            "fwd": p.get("lower_forward", 0) + p.get("upper_forward", 0) if p else None,
            "bwd": (p.get("lower_backward", 0) + p.get("lower_backward_upper", 0)
                    + p.get("lower_backward_graph", 0) + p.get("upper_backward", 0))
            if p else None,
            "hvp": p.get("hvp", 0) + p.get("mixed", 0) if p else None,
            "bound_ms": ms(r.get("bound_seconds")), "steps": r.get("bound_plain_steps"),
            "mlodsl_ms": ms(r["mlodsl"]["cpu_seconds_per_iter"]),
            "betty_ms": ms(r["betty"]["cpu_seconds_per_iter"]),
            "m": r.get("mlodsl_over_bound"), "b": r.get("betty_over_bound"),
        })
    return _common.format_table(rows, [
        ("config", "config"), ("fwd", "fwd"), ("bwd", "bwd"), ("hvp", "hvp+mixed"),
        ("bound_ms", "bound cpu ms"), ("steps", "plain steps"),
        ("mlodsl_ms", "mlodsl cpu ms"), ("m", "mlodsl/bound"),
        ("betty_ms", "betty cpu ms"), ("b", "betty/bound")], floatfmt=".3g")


def main(argv=None) -> int:
    """Print the pass-count model (a table, or JSON with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", choices=PROGRAMS, action="append",
                    help="program(s) to model (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hvp-iters", type=int, default=1)
    ap.add_argument("--unroll", type=int, action="append", help="default: 1 and 5")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--report", metavar="JSON",
                    help="print the bound against the times in a vs_betty.py report instead")
    args = ap.parse_args(argv)
    import _common

    if args.report:
        print(report_table(json.loads(Path(args.report).read_text())))
        return 0

    out = [model(p, args.threads, tuple(args.unroll or (1, 5)), args.hvp_iters)
           for p in args.program or PROGRAMS]
    if args.json:
        print(json.dumps(out))
        return 0
    for m in out:
        prims = m["primitives"]
        print(f"## {m['program']} (threads={m['threads']}): plain step "
              f"{prims['plain_step'] * 1e3:.3f} ms")
        print("   primitives (ms): " + ", ".join(
            f"{k}={v * 1e3:.3f}" for k, v in prims.items() if k != "plain_step"))
        rows = [dict(r, bound_ms=r["bound_seconds"] * 1e3) for r in m["bounds"]]
        print(_common.format_table(rows, [
            ("method", "method"), ("unroll", "unroll"), ("forward", "fwd"),
            ("backward", "bwd"), ("hvp", "hvp"), ("bound_ms", "bound ms"),
            ("bound_plain_steps", "plain steps")]))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
