"""A run's results: ``summary.json``, ``summary.md`` and the text printed at the end of a run.

One module owns the summary's content and its files:

* :func:`build_summary` - the summary of an engine's run as plain data: how the run ended
  (``status``: ``finished``, ``early_stopped``, ``diverged``, ``interrupted`` or ``failed``,
  with the iteration it stopped at and, for an error, its message), the final and the best
  validation (and the iteration of the best), each problem's final loss, the wall time, the
  parameter counts and every *learned hyperparameter small enough to print*: the parameters of
  each problem with at most :data:`PRINTABLE` of them, by name;
* :func:`write_summary` - writes ``summary.json`` and ``summary.md`` into the run folder
  (atomically: a reader sees the old file or the new one whole);
* :func:`read_summary` and :func:`render_summary` - read one back and render it as text
  (``mlodsl show``; torch is not imported for these two).

``status`` comes from :func:`ending`, which classifies how ``run()`` returned or raised.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["PRINTABLE", "ending", "build_summary", "write_summary", "read_summary",
           "render_summary", "render_markdown", "best_validation"]

#: Problems with at most this many trainable parameters have them printed in the summary.
PRINTABLE = 100

#: Validation metrics taken to be "higher is better" when no ``early_stop`` names a mode.
_HIGHER_IS_BETTER = ("acc", "auc", "f1", "score", "precision", "recall", "reward", "iou", "map")


def ending(engine: Any, error: BaseException | None) -> tuple[str, str | None]:
    """``(status, message)`` of a run that returned (``error`` None) or raised ``error``.

    ``diverged``: the divergence guard stopped it (a non-finite loss, gradient or parameter);
    ``interrupted``: Ctrl-C or SIGTERM; ``failed``: any other error; ``early_stopped``: it
    returned before its iterations were done; else ``finished``.
    """
    if error is None:
        done = engine is None or engine.global_step >= engine.config.train_iters
        return ("finished" if done else "early_stopped"), None
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return "interrupted", "stopped by Ctrl-C or a signal"
    message = _error_message(error)
    if "NaN or infinite" in message:
        return "diverged", message
    return "failed", message


def _error_message(error: BaseException) -> str:
    diagnostics = getattr(error, "diagnostics", None)
    if diagnostics:
        d = diagnostics[0]  # its position when it has one ("FILE:LINE:COL: error: ...")
        return d.headline() if d.file is not None else d.message
    return f"{type(error).__name__}: {error}"


def _number(value: Any) -> Any:
    """A tensor or number as a plain float/int (NaN and inf kept as floats)."""
    if hasattr(value, "detach"):
        value = value.detach()
        value = value.float().mean().item() if value.numel() != 1 else value.item()
    return value


def _higher_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in _HIGHER_IS_BETTER)


def best_validation(records: list[dict], metric: str | None = None,
                    mode: str | None = None) -> tuple[dict | None, dict | None]:
    """``(best record, {"metric", "mode", "inferred"})`` over the validation ``records``.

    ``metric``/``mode`` are the early-stopping rule's when there is one; otherwise the metric is
    the only one (or the first) and the mode is ``max`` for accuracy-like names (``acc``,
    ``f1``, ``auc``, ...) and ``min`` for anything else (losses, errors), marked ``inferred``.
    """
    valid = [r for r in records if r.get("kind") == "validation"]
    if not valid:
        return None, None
    keys = [k for k in valid[-1] if k not in ("kind", "iteration")]
    inferred = metric is None or metric not in keys
    if inferred:
        if not keys:
            return None, None
        metric = keys[0]
        mode = "max" if _higher_is_better(metric) else "min"
    candidates = [r for r in valid if isinstance(r.get(metric), (int, float))
                  and math.isfinite(r[metric])]
    if not candidates:
        return None, None
    pick = max if mode == "max" else min
    best = pick(candidates, key=lambda r: r[metric])  # the first of equals: the earliest
    return ({k: v for k, v in best.items() if k != "kind"},
            {"metric": metric, "mode": mode, "inferred": inferred})


def _learned(engine: Any) -> tuple[dict, dict]:
    """``(printed, too_large)``: the parameters of small problems by name; counts of the rest."""
    printed, too_large = {}, {}
    for name, problem in engine.problems.items():
        params = [(n, p) for n, p in problem.module.named_parameters() if p.requires_grad]
        count = sum(p.numel() for _, p in params)
        if count > PRINTABLE:
            too_large[name] = count
            continue
        printed[name] = {n: p.detach().float().cpu().reshape(p.shape).tolist() for n, p in params}
    return printed, too_large


def build_summary(engine: Any, *, status: str, message: str | None = None,
                  seconds: float | None = None, program: str | None = None,
                  overrides: list[str] | None = None, run_dir: str | None = None,
                  checkpoints: str | None = None) -> dict:
    """The summary of ``engine``'s run (see the module docstring); plain data for JSON."""
    config = engine.config
    records = list(engine.history.records)
    valid = [r for r in records if r.get("kind") == "validation"]
    final = {k: v for k, v in valid[-1].items() if k != "kind"} if valid else None
    rule = (config.early_stopping_metric, config.early_stopping_mode) \
        if config.early_stopping else (None, None)
    best, best_by = best_validation(records, *rule)
    learned, too_large = _learned(engine)
    summary: dict[str, Any] = {
        "status": status,
        "stopped_at": engine.global_step,
        "iterations": engine.global_step,
        "planned_iterations": config.train_iters,
        "seconds": None if seconds is None else round(seconds, 3),
        "program": program,
        "run_dir": None if run_dir is None else os.path.abspath(run_dir),
        "overrides": list(overrides or []),
        "parameters": {n: sum(q.numel() for q in p.module.parameters() if q.requires_grad)
                       for n, p in engine.problems.items()},
        "last_loss": {n: _number(p.last_loss) for n, p in engine.problems.items()
                      if getattr(p, "last_loss", None) is not None},
        "final_validation": final,
        "best_validation": best,
        "best_iteration": None if best is None else best.get("iteration"),
        "best_by": best_by,
        "learned": learned,
        "not_printed": too_large,
    }
    if message:
        summary["message"] = message
    if checkpoints:
        summary.update(_checkpoint_files(checkpoints))
    return summary


def _checkpoint_files(directory: str) -> dict:
    """The newest checkpoint and the best one (when the run keeps one) in ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        return {}
    numbered = re.compile(r"^ckpt-(\d+)\.pt$")
    found = sorted((int(m.group(1)), f) for f in d.iterdir() if (m := numbered.match(f.name)))
    found = [f for _, f in found]
    best = sorted(f for f in d.iterdir() if "best" in f.name and f.suffix == ".pt"
                  and not f.name.startswith("."))
    out = {}
    if found:
        out["last_checkpoint"] = str(found[-1].resolve())
    from mlodsl.runtime.run_folder import best_checkpoint

    kept = best_checkpoint(d)  # the one checkpoint_keep keeps for its validation metric
    if kept is not None:
        out["best_checkpoint"] = str(kept[0].resolve())
    elif best:
        out["best_checkpoint"] = str(best[-1].resolve())
    return out


# ----------------------------------------------------------------------------- files

def _clean(value: Any) -> Any:
    """JSON-safe: NaN and inf as strings ("nan", "inf" read back with float())."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    from mlodsl.runtime.run_folder import atomic_write

    atomic_write(path, text)  # a failed write leaves neither a partial nor a temporary file


def write_summary(run_dir: str | os.PathLike, summary: dict) -> Path:
    """Write ``summary.json`` and ``summary.md`` into ``run_dir``; return the JSON file's path."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "summary.json"
    _write_atomic(path, json.dumps(_clean(summary), indent=2) + "\n")
    _write_atomic(d / "summary.md", render_markdown(summary))
    return path


def read_summary(run_dir: str | os.PathLike) -> dict:
    """The ``summary.json`` of a run folder (``FileNotFoundError`` when there is none)."""
    with open(Path(run_dir) / "summary.json", encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- text

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _metrics(record: dict) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k != "iteration")


def _headline(s: dict) -> str:
    status, at = s.get("status", "finished"), s.get("stopped_at", s.get("iterations"))
    seconds = s.get("seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    where = f" ({s['run_dir']})" if s.get("run_dir") else ""
    if status == "finished":
        return f"done: {s.get('iterations')} iterations{took}{where}"
    if status == "early_stopped":
        best = s.get("best_iteration")
        return (f"early-stopped at iteration {at}" + (f", best at {best}" if best else "")
                + f"{took}{where}")
    if status == "diverged":
        return f"diverged at iteration {at}{took}{where}"
    if status == "interrupted":
        return f"interrupted at iteration {at}{took}{where}"
    return f"failed at iteration {at}{took}{where}"


def _learned_lines(s: dict) -> list[str]:
    lines = []
    for problem, params in (s.get("learned") or {}).items():
        for name, value in params.items():
            lines.append(f"{problem}.{name} = {_fmt(value)}")
    return lines


def render_summary(s: dict) -> str:
    """The summary as a few lines of text (the end of ``mlodsl run``, ``mlodsl show``)."""
    lines = [_headline(s)]
    if s.get("message") and s.get("status") not in ("finished", "early_stopped"):
        lines.append(f"reason: {s['message']}")
    final, best = s.get("final_validation"), s.get("best_validation")
    if final:
        lines.append(f"final validation (iteration {final.get('iteration')}): {_metrics(final)}")
    if best:
        by = s.get("best_by") or {}
        lines.append(f"best validation (iteration {best.get('iteration')}, "
                     f"{by.get('mode', 'min')} {by.get('metric', '')}): {_metrics(best)}")
    if s.get("last_loss"):
        lines.append("final losses: " + " ".join(f"{k}={_fmt(v)}"
                                                 for k, v in s["last_loss"].items()))
    learned = _learned_lines(s)
    if learned:
        lines.append("learned:")
        lines += ["  " + line for line in learned]
    if s.get("not_printed"):
        lines.append("not printed (over %d parameters): " % PRINTABLE + ", ".join(
            f"{k} ({v:,})" for k, v in s["not_printed"].items())
            + "; mlodsl.load_run(RUN_DIR) returns the modules")
    return "\n".join(lines)


def render_markdown(s: dict) -> str:
    """The summary as Markdown (``summary.md``)."""
    out = [f"# {Path(s.get('program') or 'run').name}", "", f"**{_headline(s)}**", ""]
    if s.get("message") and s.get("status") not in ("finished", "early_stopped"):
        out += [f"Reason: `{s['message']}`", ""]
    rows = [("final validation", s.get("final_validation")),
            ("best validation", s.get("best_validation"))]
    if any(r for _, r in rows):
        out += ["| | iteration | metrics |", "| --- | --- | --- |"]
        out += [f"| {label} | {r.get('iteration')} | {_metrics(r)} |" for label, r in rows if r]
        out.append("")
    if s.get("last_loss"):
        out += ["| problem | parameters | final loss |", "| --- | --- | --- |"]
        out += [f"| {k} | {s.get('parameters', {}).get(k, '')} | {_fmt(v)} |"
                for k, v in s["last_loss"].items()]
        out.append("")
    learned = _learned_lines(s)
    if learned:
        out += ["Learned:", "", *[f"- `{line}`" for line in learned], ""]
    if s.get("overrides"):
        out += ["Overrides: " + ", ".join(f"`{o}`" for o in s["overrides"]), ""]
    return "\n".join(out)
