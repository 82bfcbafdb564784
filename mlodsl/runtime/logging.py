"""Metrics: kept as a list of dicts on the engine, and printed to the console.

Every record has ``kind`` (``"train"``, ``"validation"`` or ``"info"``) and ``iteration``;
training records also have ``problem``, ``step`` and ``loss`` plus the metrics the problem's
``training_step`` returned. Values are converted to Python numbers only when logged (the one
place a host synchronisation happens for logging).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch

__all__ = ["MetricsLog", "to_number"]


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

    def _emit(self, record: dict, line: str) -> None:
        self.records.append(record)
        for sink in self.sinks:
            sink(record)
        if self.console:
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

    def validation(self) -> list[dict]:
        """The validation records only."""
        return [r for r in self.records if r["kind"] == "validation"]
