"""``mlodsl run FILE [--set T=V]... [--iterations N] [--device D] [--out DIR] [--resume DIR]
[--nproc N]``: compile and train a program.

Trains with a progress bar (the iteration rate, the time left and each problem's last loss),
writes the run folder (default ``runs/<program-stem>-<timestamp>``):

* ``metrics.jsonl`` / ``metrics.csv`` - every logged loss and validation record;
* ``checkpoints/`` - the last checkpoints (every ``checkpoint_every`` iterations, and at the
  end or on Ctrl-C / SIGTERM), from which ``--resume DIR`` continues exactly;
* ``summary.json`` - the program, the overrides, the iterations run, the time, the parameter
  counts and the final validation metrics;

and prints the final validation metrics. ``--nproc N`` runs N data-parallel processes on this
machine (through ``mlodsl.runtime.distributed.launch``). Exit status: 0, 1 for a run failure
(e.g. a loss that became NaN), 2 for an error in the program or its overrides.
"""
from __future__ import annotations

import os
import sys
import time

__all__ = ["add_arguments", "main", "default_run_dir"]


def add_arguments(parser) -> None:
    """The options of ``mlodsl run``."""
    parser.add_argument("file", metavar="FILE", help="the .mlo program")
    parser.add_argument("--set", action="append", default=[], metavar="NAME.FIELD=VALUE",
                        help="override a field (repeatable): engine.iterations=100, "
                             "hpo.optimizer.lr=1e-4, classifier.batch_size=32, or a let")
    parser.add_argument("--iterations", type=int, metavar="N",
                        help="shorthand for --set engine.iterations=N")
    parser.add_argument("--device", metavar="D", help='shorthand for --set engine.device="D"')
    parser.add_argument("--out", metavar="DIR",
                        help="run folder (default runs/<program-stem>-<timestamp>)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the run in DIR from its last checkpoint")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data-parallel processes on this machine (default 1)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no log lines (the final metrics only)")


def default_run_dir(path: str) -> str:
    """``runs/<program-stem>-<YYYYmmdd-HHMMSS>`` (a suffix keeps it new)."""
    stem = os.path.splitext(os.path.basename(path))[0] or "program"
    base = os.path.join("runs", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    out, k = base, 1
    while os.path.exists(out):
        k += 1
        out = f"{base}-{k}"
    return out


def _overrides(args) -> list:
    from mlodsl.compiler.front.overrides import parse_override

    out = [parse_override(s) for s in args.set]
    if args.iterations is not None:
        out.append(parse_override(f"engine.iterations={args.iterations}", "--iterations"))
    if args.device is not None:
        out.append(parse_override(f"engine.device={args.device!r}", "--device"))
    return out


def _run_folders(args) -> tuple[str, str | None]:
    """``(run folder, checkpoint folder to resume from or None)``."""
    if args.resume:
        resume = args.resume
        if os.path.isdir(os.path.join(resume, "checkpoints")):
            return (args.out or resume), os.path.join(resume, "checkpoints")
        if any(n.startswith("ckpt-") for n in os.listdir(resume)) if os.path.isdir(resume) \
                else False:
            return (args.out or os.path.dirname(os.path.abspath(resume))), resume
        from mlodsl.diagnostics import MLOError
        raise MLOError(f"--resume {resume}: no run folder with checkpoints there",
                       hint="give the folder of an earlier `mlodsl run` (it holds checkpoints/)")
    return (args.out or default_run_dir(args.file)), None


def _launch(args, out: str) -> int:
    """Start ``--nproc`` processes running this same command (each with WORLD_SIZE set)."""
    from mlodsl.runtime.distributed import launch

    argv = ["-m", "mlodsl", "run", args.file, "--out", out]
    for s in args.set:
        argv += ["--set", s]
    if args.iterations is not None:
        argv += ["--iterations", str(args.iterations)]
    if args.device is not None:
        argv += ["--device", args.device]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.quiet:
        argv.append("--quiet")
    return launch(args.nproc, argv)


def main(args) -> int:
    """Run ``mlodsl run``; returns the exit status."""
    from mlodsl.cli.compile_cmd import print_warnings
    from mlodsl.compiler.api import compile as compile_program
    from mlodsl.diagnostics import MLOError

    if args.nproc < 1:
        raise MLOError(f"--nproc must be >= 1, got {args.nproc}")
    if args.iterations is not None and args.iterations < 1:
        raise MLOError(f"--iterations must be >= 1, got {args.iterations}")
    out, resume = _run_folders(args)
    distributed_child = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.nproc > 1 and not distributed_child:
        return _launch(args, out)
    if distributed_child:
        # Join the group before compiling: data loaders are sharded when they are built.
        from mlodsl.runtime import distributed as dist
        dist.setup(None)
    plan = compile_program(args.file, overrides=_overrides(args))
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        print_warnings(plan)
        sys.stderr.write(f"mlodsl: running {args.file} -> {out}\n")
    start = time.perf_counter()
    plan.run(run_dir=out, resume=resume, checkpoint_dir=os.path.join(out, "checkpoints"),
             progress=not args.quiet, console=not args.quiet)
    seconds = time.perf_counter() - start
    if main_rank:
        summary = _summary(plan, args, out, seconds)
        _write_json(os.path.join(out, "summary.json"), summary)
        sys.stdout.write(_final_text(summary) + "\n")
    return 0


def _summary(plan, args, out: str, seconds: float) -> dict:
    from mlodsl.runtime.logging import to_number

    engine = plan.engine
    return {
        "program": os.path.abspath(args.file),
        "run_dir": os.path.abspath(out),
        "overrides": list(args.set) + ([f"engine.iterations={args.iterations}"]
                                       if args.iterations is not None else []),
        "iterations": engine.global_step,
        "seconds": round(seconds, 3),
        "parameters": plan.parameter_counts(),
        "last_loss": {n: to_number(p.last_loss) for n, p in engine.problems.items()
                      if getattr(p, "last_loss", None) is not None},
        "final_validation": plan.final_validation(),
    }


def _write_json(path: str, data: dict) -> None:
    import json
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(clean(data), f, indent=2)
        f.write("\n")


def _final_text(summary: dict) -> str:
    val = summary["final_validation"]
    head = f"done: {summary['iterations']} iterations in {summary['seconds']:.1f} s " \
           f"({summary['run_dir']})"
    if not val:
        losses = " ".join(f"{k}={v:.4g}" for k, v in summary["last_loss"].items())
        return f"{head}\nlast losses: {losses}"
    it = val.get("iteration")
    metrics = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in val.items() if k != "iteration")
    return f"{head}\nfinal validation (iteration {it}): {metrics}"
