"""Progress display: a rich bar on a terminal, plain lines elsewhere.

Shows the iteration, iterations per second, the time left and each problem's last loss.
Reading a loss is a host synchronisation, so the display refreshes at most every
``min_interval`` seconds, whatever the iteration rate.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["ProgressReporter", "make_progress"]


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _losses(engine) -> str:
    parts = []
    for name, p in engine.problems.items():
        loss = getattr(p, "last_loss", None)
        if loss is None:
            continue
        try:
            value = float(loss.detach().float()) if hasattr(loss, "detach") else float(loss)
        except (TypeError, ValueError, RuntimeError):
            continue
        parts.append(f"{name}={value:.4g}")
    return " ".join(parts)


class ProgressReporter:
    """Plain-line progress: one line per refresh on ``stream`` (default stderr)."""

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None,
                 min_interval: float = 2.0):
        self.total, self.start = total, start
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self._t0 = time.perf_counter()
        self._last = 0.0

    def rate(self, step: int) -> float:
        """Iterations per second since the reporter started."""
        elapsed = time.perf_counter() - self._t0
        return (step - self.start) / elapsed if elapsed > 0 else 0.0

    def text(self, engine) -> str:
        """``iter 120/5000 (2.4%) 31.2 it/s ETA 2:36 classifier=0.41 hpo=0.52``."""
        step = engine.global_step
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        pct = 100.0 * step / self.total if self.total else 100.0
        eta_s = _fmt_seconds(eta) if eta == eta else "?"
        return (f"iter {step}/{self.total} ({pct:.1f}%) {rate:.1f} it/s ETA {eta_s} "
                f"{_losses(engine)}").rstrip()

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, engine, force: bool = False) -> None:
        """Print a line when ``min_interval`` has passed (or ``force``)."""
        now = time.perf_counter()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        print(self.text(engine), file=self.stream, flush=True)


class RichProgress(ProgressReporter):
    """A rich progress bar (on a terminal); console output is printed above it."""

    def __init__(self, total: int, start: int = 0, min_interval: float = 0.2):
        super().__init__(total, start, min_interval=min_interval)
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(
            TextColumn("[bold]iter"), MofNCompleteColumn(), BarColumn(),
            TextColumn("{task.fields[rate]} it/s"), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"), redirect_stderr=True, redirect_stdout=True,
            transient=False)
        self._task = self._progress.add_task("mlo", total=total, completed=start,
                                             rate="-", losses="")

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def update(self, engine, force: bool = False) -> None:
        """Move the bar; refresh the rate and losses when ``min_interval`` has passed."""
        now = time.perf_counter()
        fields = {}
        if force or now - self._last >= self.min_interval:
            self._last = now
            fields = {"rate": f"{self.rate(engine.global_step):.1f}", "losses": _losses(engine)}
        self._progress.update(self._task, completed=engine.global_step, **fields)


def make_progress(total: int, start: int = 0, stream: TextIO | None = None) -> ProgressReporter:
    """A rich bar when ``stream`` (default stderr) is a terminal, plain lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        try:
            return RichProgress(total, start)
        except ImportError:  # pragma: no cover - rich is a dependency
            pass
    return ProgressReporter(total, start, stream=stream)
