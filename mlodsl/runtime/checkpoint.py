"""Checkpoints: the engine's complete state in one file, written atomically, read safely.

A checkpoint is the engine's :class:`~mlodsl.runtime.state.TrainingState` in the layout of
:meth:`~mlodsl.runtime.state.TrainingState.to_checkpoint`. What it holds (everything a resumed run needs to take exactly the steps the
uninterrupted run would have taken):

* per problem: module, optimizer, scheduler and gradient-scaler state, the step counter, and
  the data position (:class:`~mlodsl.runtime.data.BatchStream` state, including the random
  state its epoch was shuffled from);
* the schedule's counters, the global iteration, early-stopping state, per-edge method state,
  Betty's ``roll_back`` caches and the metric history;
* every random state: torch CPU and CUDA, Python's ``random``, numpy's global generator (one
  set per rank in a distributed run).

Files are ``ckpt-00000042.pt`` in the checkpoint folder; each is written to a temporary file,
flushed to disk and renamed into place, so a run killed mid-write leaves the previous
checkpoint intact. Only the last ``checkpoint_keep`` are kept. Loading uses
``torch.load(weights_only=True)``: only tensors and plain containers are stored.

A checkpoint is taken only between iterations, and only when no problem is in the middle of an
unrolled window (its fast weights carry an autograd graph that cannot be saved): the engine
then defers it to the next iteration that ends a window.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime import distributed as dist
from mlodsl.runtime.state import FORMAT_VERSION, TrainingState

__all__ = ["save_checkpoint", "load_latest", "load_checkpoint", "list_checkpoints",
           "engine_state", "load_engine_state", "can_checkpoint"]

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


# ----------------------------------------------------------------------------- engine state

def can_checkpoint(engine) -> bool:
    """Whether the engine is between unrolled windows (no fast weights pending) and between
    accumulated updates (no gradients kept for a later update)."""
    return all(not p.unrolled_window.is_open and not p.has_pending_gradients
               for p in engine.problems.values())


def engine_state(engine) -> dict:
    """The engine's complete state (see the module docstring). Collective when distributed."""
    state = engine.training_state()
    return state.to_checkpoint(dist.gather_objects(state.local_part()))


def load_engine_state(engine, state: dict) -> None:
    """Restore the engine from :func:`engine_state`'s dict (in place)."""
    if state.get("format") != FORMAT_VERSION:
        raise MLOError(f"checkpoint format {state.get('format')!r} is not {FORMAT_VERSION}",
                       kind="run")
    engine.load_training_state(TrainingState.from_checkpoint(state, dist.rank()))


# ----------------------------------------------------------------------------- files

def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoint files in ``directory``, oldest (lowest iteration) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), f) for f in d.iterdir() if (m := _NAME.match(f.name))]
    return [f for _, f in sorted(found)]


def save_checkpoint(engine, directory: str | os.PathLike | None = None,
                    keep: int | None = None) -> Path | None:
    """Write the engine's state to ``directory`` (default ``checkpoint_dir``); return the path.

    Collective in a distributed run (call it on every rank); only rank 0 writes, and the other
    ranks return None. Keeps the last ``keep`` (default ``checkpoint_keep``; 0 keeps all).
    """
    directory = directory if directory is not None else engine.config.checkpoint_dir
    if directory is None:
        raise MLOError("save_checkpoint needs a directory (or EngineConfig.checkpoint_dir)")
    if not can_checkpoint(engine):
        raise MLOError("cannot checkpoint in the middle of an unrolled window or between "
                       "accumulated updates (Config(gradient_accumulation=...))", kind="run")
    state = engine_state(engine)
    if not dist.is_main():
        return None
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"ckpt-{engine.global_step:08d}.pt"
    tmp = d / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)  # atomic on POSIX: readers see the old set or the new file whole
    _fsync_dir(d)
    keep = engine.config.checkpoint_keep if keep is None else keep
    if keep and keep > 0:
        for old in list_checkpoints(d)[:-keep]:
            old.unlink(missing_ok=True)
    return final


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(engine, path: str | os.PathLike) -> None:
    """Restore the engine from one checkpoint file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MLOError(f"cannot read checkpoint {path}: {type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}", kind="run") from err
    load_engine_state(engine, state)


def load_latest(engine, directory: str | os.PathLike) -> bool:
    """Restore the engine from the newest readable checkpoint in ``directory``.

    Returns False when there is none (a fresh start). A file that cannot be read (e.g. cut
    short by a full disk) is skipped in favour of the one before it.
    """
    errors = []
    for path in reversed(list_checkpoints(directory)):
        try:
            load_checkpoint(engine, path)
        except MLOError as err:
            if "does not match" in str(err):
                raise
            errors.append(str(err))
            continue
        engine.history.info(f"resumed from {path} at iteration {engine.global_step}")
        return True
    if errors:
        raise MLOError("no readable checkpoint in " + str(directory) + ": " + "; ".join(errors),
                       kind="run")
    return False
