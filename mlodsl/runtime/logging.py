"""Metrics: kept as a list of dicts on the engine, and printed to the console.

Every record has ``kind`` (``"train"``, ``"validation"`` or ``"info"``) and ``iteration``;
training records also have ``problem``, ``step`` and ``loss`` plus the metrics the problem's
``training_step`` returned. Values are converted to Python numbers only when logged (the one
place a host synchronisation happens for logging).

Sinks see every record: :class:`RunWriter` keeps a run folder (``metrics.jsonl`` and
``metrics.csv``, read by ``mlodsl plot``); :class:`TensorBoardSink` writes TensorBoard events
when the ``tensorboard`` package is installed (:func:`make_sinks` says so clearly otherwise).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from mlodsl.runtime.run_folder import atomic_write, read_metrics, truncate_metrics

__all__ = ["MetricsLog", "to_number", "RunWriter", "TensorBoardSink", "make_sinks"]


def to_number(value: Any) -> Any:
    """A tensor or number as a plain Python float/int (other values are returned as is)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().mean().item() if value.numel() != 1 else value.item()
    return value


def _format(stats: dict) -> str:
    parts = []
    for k, v in stats.items():
        parts.append(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class MetricsLog:
    """The metric history of a run, with sinks (console, files) that see each record."""

    def __init__(self, console: bool = True):
        self.records: list[dict] = []
        self.sinks: list[Callable[[dict], None]] = []
        self.console = console
        #: Whether warnings reach stderr even when ``console`` is off (``--quiet``); the
        #: engine turns it off on ranks other than 0.
        self.show_warnings = True

    def _emit(self, record: dict, line: str, always: bool = False) -> None:
        self.records.append(record)
        for sink in self.sinks:
            sink(record)
        if self.console or always:
            print(line, file=sys.stderr, flush=True)

    def log_problem(self, iteration: int, problem: str, step: int, loss: Any,
                    metrics: dict) -> None:
        """Record a problem's loss and metrics at one of its steps."""
        stats = {"loss": to_number(loss)}
        stats.update({k: to_number(v) for k, v in metrics.items()})
        record = {"kind": "train", "iteration": iteration, "problem": problem, "step": step,
                  **stats}
        self._emit(record, f"[iter {iteration}] [{problem} step {step}] {_format(stats)}")

    def log_validation(self, iteration: int, stats: dict) -> None:
        """Record validation metrics."""
        stats = {k: to_number(v) for k, v in stats.items()}
        record = {"kind": "validation", "iteration": iteration, **stats}
        self._emit(record, f"[iter {iteration}] [validation] {_format(stats)}")

    def info(self, message: str) -> None:
        """Record a message."""
        self._emit({"kind": "info", "message": message}, message)

    def warn(self, message: str) -> None:
        """Record something the user must know (a checkpoint not written, a setting a resume
        does not use); printed even without ``console``."""
        self._emit({"kind": "warning", "message": message}, f"mlodsl: warning: {message}",
                   always=self.show_warnings)

    def validation(self) -> list[dict]:
        """The validation records only."""
        return [r for r in self.records if r["kind"] == "validation"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; "nan" and "inf" read back with float()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class RunWriter:
    """A MetricsLog sink writing a run folder: ``metrics.jsonl`` and ``metrics.csv``.

    ``metrics.jsonl`` gets one JSON object per record, appended and flushed at once (a killed
    run keeps everything logged so far); it is never rewritten in place. ``metrics.csv`` has one
    row per record and a column per key ever seen; it is rewritten (atomically) when a new key
    appears (rare: the first records of a run). On resume call :meth:`truncate_after` with the
    checkpoint's iteration, so that records the interrupted run wrote after its last checkpoint
    are not repeated. ``warn`` reports lines of an existing file that are not records.
    """

    def __init__(self, directory: str | os.PathLike, warn: Callable[[str], None] | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        self._rows: list[dict] = []
        self._columns: list[str] = []
        if self.jsonl.exists():
            self._rows = read_metrics(self.jsonl, warn)
            self._rewrite()

    def holds_records(self) -> bool:
        """Whether the folder already holds training or validation records (another run's)."""
        return any(r.get("kind") in ("train", "validation") for r in self._rows)

    def __call__(self, record: dict) -> None:
        """Append one record to both files."""
        row = {k: _jsonable(v) for k, v in record.items()}
        self._rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if any(k not in self._columns for k in row):
            self._rewrite()
        else:
            with open(self.csv, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self._columns).writerow(row)

    def truncate_after(self, iteration: int) -> None:
        """Drop records of iterations after ``iteration`` (written before an interruption),
        by an atomic rewrite (a kill during it leaves the old file whole)."""
        try:
            truncate_metrics(self.jsonl, iteration)
        except OSError as err:
            from mlodsl.diagnostics import MLOError
            raise MLOError(f"cannot rewrite {self.jsonl} for the resume: "
                           f"{err.strerror or err} (the file is unchanged)", kind="run",
                           hint="free disk space and resume again") from err
        self._rows = [r for r in self._rows
                      if not isinstance(r.get("iteration"), int) or r["iteration"] <= iteration]
        self._rewrite()

    def _rewrite(self) -> None:
        columns = ["kind", "iteration", "problem", "step"]
        for row in self._rows:
            columns.extend(k for k in row if k not in columns)
        self._columns = columns
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write(self.csv, text.getvalue())


class TensorBoardSink:
    """A MetricsLog sink writing TensorBoard scalars (``problem/metric``, ``validation/metric``)."""

    def __init__(self, directory: str | os.PathLike):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(directory))

    def __call__(self, record: dict) -> None:
        """Write the numeric entries of one record."""
        kind = record.get("kind")
        if kind not in ("train", "validation"):
            return
        prefix = record["problem"] if kind == "train" else "validation"
        for key, value in record.items():
            if key in ("kind", "iteration", "problem", "step"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["iteration"])
        self.writer.flush()


def make_sinks(logger_type: str, run_dir: str | None, log: "MetricsLog") -> list[Callable]:
    """Sinks for ``EngineConfig.logger_type``/``run_dir``; a clear message for what is missing.

    ``run_dir`` set: a :class:`RunWriter`. ``logger_type="tensorboard"``: a
    :class:`TensorBoardSink` in ``run_dir`` (default ``runs/``), or an info record saying that
    the ``tensorboard`` package is missing and the run goes on without it.
    """
    sinks: list[Callable] = []
    if run_dir:
        sinks.append(RunWriter(run_dir, log.warn))
    if logger_type == "tensorboard":
        try:
            sinks.append(TensorBoardSink(Path(run_dir or "runs") / "tensorboard"))
        except ImportError:
            log.info("logger_type='tensorboard': the tensorboard package is not installed "
                     "(pip install tensorboard); skipping TensorBoard logging")
    elif logger_type not in ("none", "console", "stdout", None):
        log.info(f"logger_type={logger_type!r} is not supported (use 'tensorboard' or 'none'); "
                 "logging to the console only")
    return sinks
