"""Checkpoints: the engine's complete state in one file, written atomically, read safely.

What a checkpoint holds (everything a resumed run needs to take exactly the steps the
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
import random
import re
from pathlib import Path
from typing import Any

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime import distributed as dist

__all__ = ["save_checkpoint", "load_latest", "load_checkpoint", "list_checkpoints",
           "engine_state", "load_engine_state", "can_checkpoint"]

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- random state

def rng_state() -> dict:
    """Every global random state of this process, as tensors and plain containers."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    return state


def set_rng_state(state: dict) -> None:
    """Restore random states written by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    # Only onto the same number of GPUs: elsewhere CUDA streams start from the seed instead.
    if "cuda" in state and torch.cuda.is_available() and \
            len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["cached"]))


# ----------------------------------------------------------------------------- engine state

def can_checkpoint(engine) -> bool:
    """Whether the engine is between unrolled windows and between accumulated updates."""
    return all(p._fast is None and not p.has_pending_gradients for p in engine.problems.values())


def _local_state(engine) -> dict:
    """What differs between ranks: random states and data positions."""
    return {"rng": rng_state(),
            "data": {name: p.data_state() for name, p in engine.problems.items()}}


def engine_state(engine) -> dict:
    """The engine's complete state (see the module docstring). Collective when distributed."""
    ranks = dist.gather_objects(_local_state(engine))
    problems = {}
    for name, p in engine.problems.items():
        problems[name] = {
            "module": p.module.state_dict(),
            "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict() if hasattr(p.scheduler, "state_dict") else None,
            "count": p._count,
        }
    return {
        "format": FORMAT_VERSION,
        "global_step": engine.global_step,
        "problems": problems,
        "schedule": engine.schedule.state_dict(),
        "precision": engine.precision.state_dict(),
        "early_stopping": {"best": getattr(engine, "_es_best", None),
                           "bad": getattr(engine, "_es_bad", 0)},
        "method_states": [[u, l, s] for (u, l), s in engine._method_states.items()],
        "roll_back": engine._roll_back_cache,
        "history": list(engine.history.records),
        "ranks": ranks,  # None on ranks other than 0, which do not write
    }


def load_engine_state(engine, state: dict) -> None:
    """Restore the engine from :func:`engine_state`'s dict (in place)."""
    if state.get("format") != FORMAT_VERSION:
        raise MLOError(f"checkpoint format {state.get('format')!r} is not {FORMAT_VERSION}",
                       kind="run")
    missing = set(engine.problems.keys()) - set(state["problems"])
    if missing:
        raise MLOError("the checkpoint does not match this program: it has no state for "
                       f"problem(s) {', '.join(sorted(missing))}", kind="run")
    for name, p in engine.problems.items():
        saved = state["problems"][name]
        p.module.load_state_dict(saved["module"])
        p.optimizer.load_state_dict(saved["optimizer"])
        if saved["scheduler"] is not None and hasattr(p.scheduler, "load_state_dict"):
            p.scheduler.load_state_dict(saved["scheduler"])
        p._count = int(saved["count"])
    engine.global_step = int(state["global_step"])
    engine.schedule.load_state_dict(state["schedule"])
    engine.precision.load_state_dict(state["precision"])
    es = state["early_stopping"]
    if es["best"] is not None:
        engine._es_best = es["best"]
    engine._es_bad = int(es["bad"])
    # Checkpoints load onto the CPU (map_location): a method's tensors (e.g. reinforce's
    # baseline) go back to the device their edge's lower runs on, wherever they were saved.
    engine._method_states = {(u, l): _to_device(s, _problem_device(engine, l))
                             for u, l, s in state["method_states"]}
    engine._roll_back_cache = dict(state["roll_back"])
    engine.history.records[:] = list(state["history"])
    ranks = state["ranks"]
    mine = ranks[dist.rank()] if dist.rank() < len(ranks) else ranks[0]
    # Data first: replaying an epoch's shuffle moves torch's global RNG, restored after.
    for name, p in engine.problems.items():
        if name in mine["data"] and p._stream is not None:
            p._stream.load_state_dict(mine["data"][name])
    set_rng_state(mine["rng"])


def _problem_device(engine, name: str):
    """The device problem ``name`` runs on (None when the engine does not know it)."""
    problem = engine.problems.get(name)
    return getattr(problem, "device", None) if problem is not None else None


def _to_device(obj: Any, device) -> Any:
    """``obj`` with every tensor inside it (dicts, lists, tuples nest) moved to ``device``."""
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


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
        raise MLOError("cannot checkpoint in the middle of an unrolled window", kind="run")
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
