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
checkpoint intact. Only the last ``checkpoint_keep`` are kept (and the best one, when the run
validates). Loading uses ``torch.load(weights_only=True)``: only tensors and plain containers
are stored.

Checkpoints are verified when loaded: each carries a checksum of its whole content (every
tensor's bytes and every value, :func:`state_checksum`), and a description of the program it
belongs to (each problem's parameter and buffer shapes, its optimizer's class and parameter
groups). A corrupted file is refused (and :func:`load_latest` falls back to an older one, saying
so); a checkpoint of another program is refused with a message naming what differs. A write that
fails (a full disk) leaves no partial file and raises :class:`CheckpointWriteError`.

A checkpoint is taken only between iterations, and only when no problem is in the middle of an
unrolled window (its fast weights carry an autograd graph that cannot be saved): the engine
then defers it to the next iteration that ends a window.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from mlodsl.diagnostics import MLOError
from mlodsl.runtime import distributed as dist
from mlodsl.runtime.run_folder import best_checkpoint, clean_stale_temp_files
from mlodsl.runtime.state import FORMAT_VERSION, TrainingState

__all__ = ["save_checkpoint", "load_latest", "load_checkpoint", "list_checkpoints",
           "engine_state", "load_engine_state", "can_checkpoint", "state_checksum",
           "CheckpointWriteError", "CheckpointMismatch", "read_checkpoint"]

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointWriteError(MLOError):
    """A checkpoint could not be written (full disk, no permission): the run may go on."""


# ----------------------------------------------------------------------------- engine state

def can_checkpoint(engine) -> bool:
    """Whether the engine is between unrolled windows (no fast weights pending) and between
    accumulated updates (no gradients kept for a later update)."""
    return all(not p.unrolled_window.is_open and not p.has_pending_gradients
               for p in engine.problems.values())


def engine_state(engine) -> dict:
    """The engine's complete state (see the module docstring). Collective when distributed.

    Besides the training state's layout it holds ``meta``, a description of the program
    (:func:`describe_program`), and ``checksum``, of everything else (:func:`state_checksum`).
    """
    state = engine.training_state()
    saved = state.to_checkpoint(dist.gather_objects(state.local_part()))
    saved["meta"] = describe_program(engine)
    if saved["ranks"] is not None:  # only the writing rank pays for the checksum
        saved["checksum"] = state_checksum(saved)
    return saved


def describe_program(engine) -> dict:
    """What a checkpoint must match to be loaded: per problem, the shapes of the module's
    state, the optimizer's class and the sizes of its parameter groups; and the seed and
    validation metric the run was started with (reported, not enforced, on resume)."""
    problems = {}
    for name, p in engine.problems.items():
        problems[name] = {
            "module": {k: list(v.shape) for k, v in p.module.state_dict().items()
                       if isinstance(v, torch.Tensor)},
            "optimizer": type(p.optimizer).__name__,
            "groups": [len(g["params"]) for g in p.optimizer.param_groups],
        }
    meta = {"problems": problems, "seed": engine.config.seed}
    metric = _validation_metric(engine)
    if metric is not None:
        meta["metric"] = metric
    return meta


def _validation_metric(engine) -> dict | None:
    """The metric that ranks checkpoints, when this iteration validated and reported it."""
    records = engine.history.validation()
    name = engine.config.early_stopping_metric
    if not records or records[-1].get("iteration") != engine.global_step:
        return None
    value = records[-1].get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        return None
    return {"name": name, "mode": engine.config.early_stopping_mode, "value": float(value)}


def state_checksum(state: dict) -> str:
    """A BLAKE2b digest of the whole state (``checksum`` itself left out): tensors by dtype,
    shape and bytes, other values by ``repr``, dicts in a fixed key order."""
    h = hashlib.blake2b(digest_size=32)
    _digest({k: v for k, v in state.items() if k != "checksum"}, h)
    return "blake2b:" + h.hexdigest()


def _digest(obj: Any, h) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj) if isinstance(obj, list) else b"U%d" % len(obj))
        for item in obj:
            _digest(item, h)
    else:
        h.update(repr(obj).encode())
    h.update(b";")


def _verify(state: Any, path) -> None:
    """Refuse a checkpoint whose content is not what was written (corrupted, not ours)."""
    if not isinstance(state, dict) or "format" not in state:
        raise MLOError(f"{path} is not an mlodsl checkpoint", kind="run")
    if state.get("format") != FORMAT_VERSION:
        raise MLOError(f"{path}: checkpoint format {state.get('format')!r} is not "
                       f"{FORMAT_VERSION}", kind="run")
    # Files written before checksums have none: they load unverified.
    if "checksum" in state and state["checksum"] != state_checksum(state):
        raise MLOError(f"{path} is corrupted: its content does not match its checksum",
                       kind="run")


class CheckpointMismatch(MLOError):
    """A readable checkpoint that belongs to another program (never fallen back from)."""


def check_matches(engine, state: dict, path) -> None:
    """Raise :class:`CheckpointMismatch` naming what differs between the checkpoint and the
    engine's program (problems, parameter shapes, optimizers)."""
    saved = state.get("meta", {}).get("problems")
    mine = describe_program(engine)["problems"]
    if saved is None:  # format 1: problem names only
        saved = {n: None for n in state["problems"]}
    diffs = []
    only_mine = sorted(set(mine) - set(saved))
    only_saved = sorted(set(saved) - set(mine))
    if only_mine:
        diffs.append("problem(s) " + ", ".join(only_mine) + " not in the checkpoint")
    if only_saved:
        diffs.append("problem(s) " + ", ".join(only_saved) + " only in the checkpoint")
    for name in sorted(set(mine) & set(saved)):
        a, b = saved[name], mine[name]
        if a is None:
            continue
        if a["optimizer"] != b["optimizer"]:
            diffs.append(f"problem '{name}': optimizer {a['optimizer']} in the checkpoint, "
                         f"{b['optimizer']} in this program")
        elif a["groups"] != b["groups"]:
            diffs.append(f"problem '{name}': optimizer parameter groups of {a['groups']} "
                         f"tensors in the checkpoint, {b['groups']} in this program")
        for key in list(b["module"]) + [k for k in a["module"] if k not in b["module"]]:
            sa, sb = a["module"].get(key), b["module"].get(key)
            if sa != sb:
                diffs.append(f"problem '{name}': '{key}' "
                             + (f"has shape {sa} in the checkpoint, {sb} in this program"
                                if sa is not None and sb is not None else
                                "is only in the checkpoint" if sb is None else
                                "is not in the checkpoint"))
    if diffs:
        shown = diffs[:6] + ([f"... and {len(diffs) - 6} more"] if len(diffs) > 6 else [])
        raise CheckpointMismatch(
            f"the checkpoint{' ' + str(path) if str(path) else ''} does not match this "
            "program: " + "; ".join(shown),
            kind="program", hint="resume with the program (and overrides) that wrote it, or "
                                 "start a new run in another folder")


def unhonoured_settings(engine, state: dict) -> list[str]:
    """Settings of this program that resuming from ``state`` replaces with the checkpoint's:
    optimizer hyperparameters (e.g. a ``--set`` of a learning rate) and the seed."""
    notes = []
    for name, p in engine.problems.items():
        saved = state["problems"].get(name, {}).get("optimizer", {}).get("param_groups", [])
        for i, (now, then) in enumerate(zip(p.optimizer.param_groups, saved)):
            for key, value in now.items():
                if key in ("params", "initial_lr") or key not in then or (
                        p.scheduler is not None and key in _SCHEDULED):
                    continue
                old = then[key]
                if key == "lr" and "initial_lr" in now and "initial_lr" in then:
                    value, old = now["initial_lr"], then["initial_lr"]  # a scheduler moves lr
                if not _same_setting(value, old):
                    group = f" (group {i})" if len(saved) > 1 else ""
                    notes.append(f"problem '{name}': the optimizer's {key}={value!r}{group} "
                                 f"is not used: the resumed optimizer keeps the checkpoint's "
                                 f"{key}={old!r}")
    seed = state.get("meta", {}).get("seed", engine.config.seed)
    if seed != engine.config.seed:
        notes.append(f"seed={engine.config.seed!r} is not used: the random state is the "
                     f"checkpoint's (seeded with {seed!r})")
    return notes


# Hyperparameters that schedulers move as they go (OneCycleLR, CyclicLR): not comparable.
_SCHEDULED = frozenset({"momentum", "betas", "max_lr", "min_lr", "base_momentum",
                        "max_momentum", "base_lr"})


def _same_setting(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))
        except (TypeError, RuntimeError):
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    return a == b


def load_engine_state(engine, state: dict, path: Any = None) -> None:
    """Restore the engine from :func:`engine_state`'s dict (in place); ``path`` names it in
    messages."""
    if state.get("format") != FORMAT_VERSION:
        raise MLOError(f"checkpoint format {state.get('format')!r} is not {FORMAT_VERSION}",
                       kind="run")
    where = path if path is not None else ""
    check_matches(engine, state, where)
    try:
        engine.load_training_state(TrainingState.from_checkpoint(state, dist.rank()))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        # What the description cannot see (a hand-made or very old file): still a clear
        # refusal, never a bare KeyError.
        raise CheckpointMismatch(
            f"the checkpoint{' ' + str(where) if str(where) else ''} does not match this "
            f"program: loading it failed ({type(err).__name__}: {' '.join(str(err).split())})",
            kind="program",
            hint="resume with the program (and overrides) that wrote it") from err


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
    ranks return None. Keeps the newest ``keep`` (default ``checkpoint_keep``; 0 keeps all),
    and the best one by the validation metric (:func:`describe_program`) besides. A write that
    fails (a full disk, no permission) leaves no partial file and raises
    :class:`CheckpointWriteError`; the engine's state is untouched.
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
    final = d / f"ckpt-{engine.global_step:08d}.pt"
    tmp = d / f".{final.name}.{os.getpid()}.tmp"
    out = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(d)  # of runs killed mid-write
        with open(tmp, "wb") as f:
            out = _Recording(f)
            torch.save(state, out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # atomic on POSIX: readers see the old set or the new file whole
        _fsync_dir(d)
    except (OSError, RuntimeError) as err:  # torch's writer turns I/O errors into RuntimeError
        cause = out.error if out is not None and out.error is not None else err
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = getattr(cause, "strerror", None) or f"{type(cause).__name__}: {cause}"
        raise CheckpointWriteError(f"could not write checkpoint {final}: {reason}",
                                   kind="run") from err
    keep = engine.config.checkpoint_keep if keep is None else keep
    if keep and keep > 0:
        _prune(d, keep, state["meta"].get("metric"), engine.global_step)
    return final


class _Recording:
    """A file wrapper that remembers the OSError a write raised (torch reports it vaguely)."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        """Write ``data``; remember an OSError before re-raising it."""
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        """Flush the underlying file."""
        try:
            self._f.flush()
        except OSError as err:
            self.error = err
            raise


def _prune(d: Path, keep: int, metric: dict | None, step: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and the best by the validation metric."""
    best = best_checkpoint(d)
    if metric is not None and _better(metric, best[1] if best else None):
        best = (d / f"ckpt-{step:08d}.pt", metric)
    for old in list_checkpoints(d)[:-keep]:
        if best is not None and old == best[0]:
            continue
        try:
            old.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - a file another process holds; kept, harmless
            pass
    if best is not None:
        try:
            (d / "best.txt").write_text(f"{best[0].name} {best[1]['name']} {best[1]['mode']} "
                                        f"{best[1]['value']!r}\n", encoding="utf-8")
        except OSError:  # only a record of which file to keep; the next save rewrites it
            pass


def _better(new: dict, old: dict | None) -> bool:
    if old is None or old["name"] != new["name"] or old["mode"] != new["mode"]:
        return True
    return new["value"] < old["value"] if new["mode"] == "min" else new["value"] > old["value"]


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The verified state in one checkpoint file (MLOError if unreadable or corrupted)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MLOError(f"cannot read checkpoint {path}: {type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}", kind="run") from err
    _verify(state, path)
    return state


def load_checkpoint(engine, path: str | os.PathLike) -> list[str]:
    """Restore the engine from one checkpoint file; return the settings of this program that
    the resume does not use (:func:`unhonoured_settings`), for the caller to report."""
    state = read_checkpoint(path)
    check_matches(engine, state, path)
    notes = unhonoured_settings(engine, state)
    load_engine_state(engine, state, path)
    return notes


def load_latest(engine, directory: str | os.PathLike) -> bool:
    """Restore the engine from the newest usable checkpoint in ``directory``.

    Returns False when there is none (a fresh start). A file that cannot be read or fails its
    checksum (cut short by a full disk, corrupted) is skipped in favour of the one before it,
    with a warning; a checkpoint of another program is refused. Settings of this program that
    the resume replaces by the checkpoint's are reported as warnings.
    """
    errors = []
    for path in reversed(list_checkpoints(directory)):
        try:
            notes = load_checkpoint(engine, path)
        except CheckpointMismatch:
            raise
        except MLOError as err:
            errors.append(err.diagnostics[0].message)
            continue
        for message in errors:
            engine.history.warn(f"{message}; falling back to the older {path.name}")
        for note in notes:
            engine.history.warn(f"resuming from {path.name}: {note}")
        engine.history.info(f"resumed from {path} at iteration {engine.global_step}")
        return True
    if errors:
        raise MLOError("no readable checkpoint in " + str(directory) + " (each one is "
                       "unreadable or corrupted): " + "; ".join(errors),
                       kind="run")
    return False
