"""Run folders that never lose data: one run per folder, a lock, checks before training.

``mlodsl run`` keeps each run in its own folder (``metrics.jsonl``, ``metrics.csv``,
``checkpoints/``, ``summary.json``). This module is the part that guards the folder (torch-free):

* :class:`RunLock` - a lock file (``run.lock``, holding the pid, host and command of its
  owner) taken with ``flock``: a second run on the same folder fails at once with a message
  naming the first; a lock left by a killed run is not held by anyone and is taken over, with
  a note saying whose it was.
* :func:`prepare` - before compiling: a new run refuses a folder that already holds a run
  (``--resume`` continues one instead; nothing is ever overwritten), ``--resume`` refuses a
  folder without checkpoints, temporary files of dead processes are removed, and write access
  is checked, so an unwritable folder is found before training rather than after it.
* :func:`read_metrics` / :func:`truncate_metrics` - ``metrics.jsonl`` is appended to only; a
  line that is not a JSON object (a torn last line, a stray byte) is skipped with a warning that
  names it, never fatal; on resume the records after the checkpoint's iteration are dropped by
  an atomic rewrite that keeps every other line as it was;
* :func:`atomic_write` - replace a file by writing a temporary file in the same folder,
  flushing it to disk and renaming it over the old one: readers see the old file or the new
  one, never a part (used for ``summary.json``, the metrics rewrite on resume, ``mlodsl fmt``).
"""
from __future__ import annotations

import os
import re
import socket
import sys
import time
from pathlib import Path

from mlodsl.diagnostics import MLOError

__all__ = ["RunLock", "prepare", "atomic_write", "RUN_FILES", "holds_a_run",
           "clean_stale_temp_files", "check_writable", "read_metrics", "truncate_metrics",
           "remove_if_empty", "best_checkpoint"]

#: The files (and folder) whose presence means that a folder holds a run.
RUN_FILES = ("metrics.jsonl", "metrics.csv", "summary.json", "checkpoints")
LOCK_NAME = "run.lock"
# Temporary files we write: ".NAME.PID.tmp" (checkpoints, summary, metrics, probes).
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file in the same folder, fsync,
    rename). On failure the temporary file is removed and ``path`` is as it was; the OSError
    propagates. ``mode`` sets the new file's permission bits (default: those of the old file)."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = None
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The lock of one run folder, held for the life of the run (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        #: Set by :meth:`acquire` when it took over the lock of a process that had died.
        self.taken_over: str | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise MLOError (exit status 2) naming the run that holds it."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise MLOError(
                    f"run folder {self.folder} is in use by another run ({owner})",
                    hint="wait for it to finish, or choose another folder with --out") from None
            except OSError:  # no flock here (some network file systems): trust the pid
                owner = _read_owner(fd)
                pid = _owner_pid(owner)
                if pid and pid != os.getpid() and _alive(pid):
                    os.close(fd)
                    raise MLOError(f"run folder {self.folder} is in use by another run "
                                   f"({owner})", hint="choose another folder with --out") \
                        from None
            # The file may have been removed by its previous owner between open and flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_owner(fd)
        if previous:
            self.taken_over = previous
        record = (f"pid {os.getpid()} on {socket.gethostname()}, started "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode("utf-8", "replace") + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (the lock file is removed)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _owner_pid(owner: str) -> int | None:
    m = re.match(r"pid (\d+)", owner)
    return int(m.group(1)) if m else None


def holds_a_run(folder: str | os.PathLike) -> list[str]:
    """The run files present in ``folder`` (an empty ``checkpoints/`` does not count)."""
    d = Path(folder)
    found = []
    for name in RUN_FILES:
        p = d / name
        if p.is_dir():
            if any(not f.name.startswith(".") for f in p.iterdir()):
                found.append(name + "/")
        elif p.exists():
            found.append(name)
    return found


def clean_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove our temporary files (``.NAME.PID.tmp``) whose process is gone; return them."""
    removed = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for f in d.iterdir():
        m = _TEMP.match(f.name)
        if not m or not f.is_file():
            continue
        pid = int(m.group(1))
        # Ours are stale too: this process writes its temporary files one at a time.
        if pid == os.getpid() or not _alive(pid):
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed


def check_writable(folder: str | os.PathLike, what: str = "the run folder") -> None:
    """Create ``folder`` if needed and write a probe file there, or raise MLOError (status 2)."""
    folder = Path(folder)
    probe = folder / f".write-test.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as err:
        raise MLOError(f"cannot write to {what} {folder}: {err.strerror or err}",
                       hint="choose a writable folder (--out DIR, checkpoint_dir=...)") from err


def prepare(out: str | os.PathLike, resume: str | os.PathLike | None) -> RunLock:
    """Lock and check the run folder ``out`` before anything is compiled or trained.

    ``resume`` is the checkpoint folder to continue from (None for a new run). Returns the held
    lock (release it when the run ends); raises MLOError (exit status 2) for a folder in use, a
    new run in a folder that holds one, a resume without checkpoints, or a folder that cannot be
    written.
    """
    out = Path(out)
    if resume is not None:
        ckpts = Path(resume)
        if not ckpts.is_dir() or not any(_CKPT.match(f.name) for f in ckpts.iterdir()):
            raise MLOError(f"--resume: no checkpoint in {ckpts} to continue from",
                           hint="a run writes checkpoints every engine.checkpoint_every "
                                "iterations, on Ctrl-C/SIGTERM and at the end; without one, "
                                "start a new run (without --resume)")
    if out.exists() and not out.is_dir():
        raise MLOError(f"--out {out}: a file is in the way of the run folder")
    check_writable(out)
    lock = RunLock(out).acquire()
    try:
        present = holds_a_run(out)
        if resume is None and present:
            raise MLOError(
                f"run folder {out} already holds a run ({', '.join(present)}); a new run "
                "never overwrites one",
                hint=f"continue it with --resume {out}, or choose another folder with --out")
        for folder in (out, out / "checkpoints"):
            clean_stale_temp_files(folder)
        check_writable(out / "checkpoints", "the checkpoint folder")
    except BaseException:
        lock.release()
        raise
    return lock


def remove_if_empty(out: str | os.PathLike) -> None:
    """Remove a run folder that a run created but never used (its compile failed)."""
    out = Path(out)
    try:
        if set(os.listdir(out)) - {"checkpoints"}:
            return  # the run wrote something: the folder stays whole
        for folder in (out / "checkpoints", out):
            folder.rmdir()  # only ever succeeds on an empty folder
    except OSError:
        pass


_CKPT = re.compile(r"^ckpt-\d+\.pt$")


def best_checkpoint(directory: str | os.PathLike) -> tuple[Path, dict] | None:
    """The checkpoint ``best.txt`` names in a checkpoint folder (kept besides the newest ones
    for its validation metric), with that metric; None when there is none (any more)."""
    d = Path(directory)
    try:
        name, metric, mode, value = (d / "best.txt").read_text(encoding="utf-8").split()
        best = (d / name, {"name": metric, "mode": mode, "value": float(value)})
    except (OSError, ValueError):
        return None
    return best if _CKPT.match(name) and best[0].exists() else None


def _parse_line(raw: bytes) -> tuple[dict | None, str | None]:
    """``(record, None)`` for a JSON object line, ``(None, why)`` for anything else."""
    import json

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 (byte {err.start + 1})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not JSON ({err.msg})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, None


def read_metrics(path: str | os.PathLike, warn=None) -> list[dict]:
    """The records of a ``metrics.jsonl`` file; other lines are skipped, each reported through
    ``warn(message)`` (default: a line on stderr) as ``FILE:LINE: skipped ...``."""
    warn = warn or (lambda m: sys.stderr.write(f"mlodsl: warning: {m}\n"))
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            record, why = _parse_line(raw.strip())
            if record is None:
                warn(f"{path}:{number}: skipped a line that is {why}")
                continue
            out.append(record)
    return out


def truncate_metrics(path: str | os.PathLike, iteration: int) -> None:
    """Drop the records of iterations after ``iteration`` (logged after the checkpoint a
    resume starts from), by an atomic rewrite; every other line is kept byte for byte."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    with open(path, "rb") as f:
        for raw in f:
            record, _ = _parse_line(raw.strip())
            it = record.get("iteration") if record is not None else None
            if isinstance(it, int) and not isinstance(it, bool) and it > iteration:
                continue
            if raw.strip():
                kept.append(raw.rstrip(b"\r\n") + b"\n")  # a torn last line ends here
    atomic_write(path, b"".join(kept))
