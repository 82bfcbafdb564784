"""Reading a run back: ``mlodsl.load_run(RUN_DIR)``.

A run folder written by ``mlodsl run`` (or ``plan.run(run_dir=...)``) holds ``summary.json``
(the program, its overrides, the results) and ``checkpoints/``. :func:`load_run` compiles the
same program with the same overrides, restores a checkpoint into it and returns the problems'
modules, trained::

    run = mlodsl.load_run("runs/hpo")          # the best checkpoint, else the last one
    net = run["classifier"]                     # a torch.nn.Module
    run.summary["final_validation"], run.checkpoint, run.plan
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlodsl.diagnostics import MLOError

__all__ = ["LoadedRun", "load_run"]


class LoadedRun(dict):
    """The problems' trained modules by name, with the run's ``summary``, the ``checkpoint``
    file they were read from, and the compiled ``plan`` (whose engine holds the restored state).
    """

    def __init__(self, modules: dict, summary: dict, checkpoint: Path, plan: Any):
        super().__init__(modules)
        self.summary, self.checkpoint, self.plan = summary, checkpoint, plan


def _checkpoint(run_dir: Path, summary: dict, which: str) -> Path:
    from mlodsl.runtime.checkpoint import list_checkpoints

    if which not in ("best", "last"):
        raise MLOError(f"load_run(which={which!r}): use 'best' or 'last'")
    folder = run_dir / "checkpoints"
    best = summary.get("best_checkpoint")
    if which == "best" and best and Path(best).is_file():
        return Path(best)
    found = list_checkpoints(folder)
    if not found:
        raise MLOError(f"{run_dir} has no checkpoint to load (checkpoints/ckpt-*.pt)",
                       hint="checkpoints are written at the end of a run, every "
                            "checkpoint_every iterations, and on Ctrl-C")
    return found[-1]


def load_run(run_dir: str | os.PathLike, which: str = "best") -> LoadedRun:
    """The problems' modules of the run in ``run_dir``, restored from a checkpoint.

    ``which="best"`` takes the checkpoint of the best validation when the run kept one
    (``best_checkpoint`` in its summary), else the last; ``which="last"`` the newest one.
    Raises :class:`~mlodsl.diagnostics.MLOError` when the folder has no summary or checkpoint,
    or when the program no longer compiles.
    """
    from mlodsl.compiler.api import compile as compile_program
    from mlodsl.runtime.checkpoint import load_checkpoint
    from mlodsl.runtime.summary import read_summary

    folder = Path(run_dir)
    try:
        summary = read_summary(folder)
    except (OSError, ValueError) as err:
        raise MLOError(f"{folder} has no readable summary.json ({type(err).__name__})",
                       hint="give the folder of a `mlodsl run` (its --out)") from None
    program = summary.get("program")
    if not program or not Path(program).is_file():
        raise MLOError(f"the program of {folder} ({program}) is not there any more",
                       hint="load_run compiles the run's program again to rebuild its modules")
    path = _checkpoint(folder, summary, which)
    plan = compile_program(program, overrides=list(summary.get("overrides") or []))
    engine = plan.build_engine(checkpoint_dir=str(folder / "checkpoints"), console=False)
    load_checkpoint(engine, path)
    for p in plan.problems.values():
        p.module.eval()
    return LoadedRun({n: p.module for n, p in plan.problems.items()}, summary, path, plan)
