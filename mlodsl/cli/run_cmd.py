"""``mlodsl run FILE [--set T=V]... [--iterations N] [--device D] [--out DIR] [--resume DIR]
[--nproc N]``: compile and train a program.

Trains with a progress bar (the iteration rate, the time left and each problem's last loss),
writes the run folder (default ``runs/<program-stem>-<timestamp>``):

* ``metrics.jsonl`` / ``metrics.csv`` - every logged loss and validation record (appended);
* ``checkpoints/`` - the last checkpoints (every ``checkpoint_every`` iterations, and at the
  end or on Ctrl-C / SIGTERM), from which ``--resume DIR`` continues exactly;
* ``summary.json`` and ``summary.md`` - how the run ended (finished, early-stopped, diverged,
  interrupted, failed), the final and best validation, the final losses, the time and the
  learned hyperparameters of small problems (:mod:`mlodsl.runtime.summary`), written in every
  ending;

and prints the summary (``mlodsl show DIR`` prints it again). The folder is guarded by
:mod:`mlodsl.runtime.run_folder` before anything is compiled: a lock (a second run on it fails
at once), no new run in a folder that holds one, ``--resume`` only from a checkpoint, write
access checked. ``--nproc N`` runs N data-parallel processes on this machine (through
``mlodsl.runtime.distributed.launch``). Exit status: 0, 1 for a run failure (e.g. a loss that
became NaN), 2 for an error in the program, its overrides or the run folder.
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
    for option, target, value in (("--iterations", "iterations", args.iterations),
                                  ("--device", "device", args.device)):
        if value is None:
            continue
        _no_conflict(out, option, ("engine", target), value)
        text = f"engine.{target}={value!r}"
        out.append(parse_override(text, option))
    return out


def _no_conflict(overrides: list, option: str, target: tuple, value) -> None:
    """``--iterations N`` and ``--set engine.iterations=M`` together are an error (which one
    was meant is not ours to guess), unless they say the same."""
    from mlodsl.compiler.ir import Constant
    from mlodsl.compiler.front.overrides import error_at

    for o in overrides:
        same = isinstance(o.value, Constant) and o.value.value == value and \
            type(o.value.value) is type(value)
        if o.target == target and not same:
            raise error_at(o, f"{option} {value} and --set {'.'.join(target)} disagree",
                           f"give one of them ({option} is shorthand for "
                           f"--set {'.'.join(target)}=...)")


def _run_folders(args) -> tuple[str, str | None]:
    """``(run folder, checkpoint folder to resume from or None)``."""
    if args.resume:
        resume = args.resume
        if os.path.isdir(os.path.join(resume, "checkpoints")):
            return (args.out or resume), os.path.join(resume, "checkpoints")
        if os.path.isdir(resume) and any(n.startswith("ckpt-") for n in os.listdir(resume)):
            return (args.out or os.path.dirname(os.path.abspath(resume))), resume
        # Nothing to resume from: run_folder.prepare says so (exit status 2).
        return (args.out or resume), os.path.join(resume, "checkpoints")
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
    from mlodsl.diagnostics import MLOError
    from mlodsl.runtime import run_folder

    if args.nproc < 1:
        raise MLOError(f"--nproc must be >= 1, got {args.nproc}")
    if args.iterations is not None and args.iterations < 1:
        raise MLOError(f"--iterations must be >= 1, got {args.iterations}")
    out, resume = _run_folders(args)
    distributed_child = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.nproc > 1 and not distributed_child:
        return _launch(args, out)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    # Rank 0 owns the folder: locked and checked before compiling, so that a second run on
    # it, or a folder that cannot be written, fails at once.
    lock = run_folder.prepare(out, resume) if main_rank else None
    try:
        if lock is not None and lock.taken_over:
            sys.stderr.write(f"mlodsl: note: {out} was locked by a run that is no longer "
                             f"running ({lock.taken_over}); taking it over\n")
        return _compile_and_run(args, out, resume, main_rank)
    finally:
        if lock is not None:
            lock.release()
            run_folder.remove_if_empty(out)


def _compile_and_run(args, out: str, resume: str | None, main_rank: bool) -> int:
    from mlodsl.cli.compile_cmd import print_warnings
    from mlodsl.compiler.api import compile as compile_program
    from mlodsl.runtime import distributed as dist

    # A distributed child joins its process group in the engine (with the program's
    # timeout); data loaders built while compiling shard by torchrun's RANK/WORLD_SIZE.
    plan = compile_program(args.file, overrides=_overrides(args))
    if main_rank:
        print_warnings(plan)
        sys.stderr.write(f"mlodsl: running {args.file} -> {out}\n")
    try:
        # plan.run writes summary.json in every ending (mlodsl.runtime.summary).
        plan.run(run_dir=out, resume=resume, checkpoint_dir=os.path.join(out, "checkpoints"),
                 progress=not args.quiet, console=not args.quiet)
    except BaseException:
        if main_rank and plan.summary is not None:
            sys.stderr.write(f"mlodsl: {plan.summary['status']} at iteration "
                             f"{plan.summary['stopped_at']}; summary in "
                             f"{os.path.join(out, 'summary.json')}\n")
        raise
    if main_rank:
        from mlodsl.runtime.summary import render_summary
        sys.stdout.write(render_summary(plan.summary) + "\n")
    dist.shutdown()  # every rank leaves the group together (none exits mid-conversation)
    return 0
