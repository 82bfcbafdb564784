"""Helpers of the example tests: ``mlodsl check``, a short CLI run, a short compiled run.

The examples live under ``examples/`` at the repository root (importable: pytest's ``pythonpath``),
so the Python-API twins import as ``examples.NAME.NAME_python``.
"""
from __future__ import annotations

import json
import math
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def example_path(name: str) -> str:
    """Path of ``examples/NAME/NAME.mlo``."""
    return os.path.join(ROOT, "examples", name, f"{name}.mlo")


def assert_check_clean(path: str, capsys) -> None:
    """``mlodsl check PATH`` exits 0 and prints no warning."""
    from mlodsl.cli import main

    rc = main(["check", path])
    out = capsys.readouterr()
    text = out.out + out.err
    assert rc == 0, text
    assert "warning" not in text.lower(), text


def _finite_numbers(record: dict) -> list[float]:
    values = [v for k, v in record.items()
              if k not in ("iteration", "kind", "step", "problem") and isinstance(v, (int, float))]
    assert values, f"no metric in {record}"
    assert all(math.isfinite(v) for v in values), record
    return values


def cli_run(path: str, out_dir, iterations: int = 20, extra: tuple = ()) -> dict:
    """``mlodsl run PATH --iterations N --out DIR``; check the run folder; return the summary."""
    from mlodsl.cli import main

    rc = main(["run", path, "--iterations", str(iterations), "--out", str(out_dir), "--quiet",
               *extra])
    assert rc == 0
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert records, "metrics.jsonl is empty"
    for r in records:
        _finite_numbers(r)
    with open(os.path.join(out_dir, "summary.json")) as f:
        return json.load(f)


def compile_run(path: str, iterations: int = 20, overrides=None):
    """``mlodsl.compile(PATH).run(iterations=N)``; check the history; return ``(plan, history)``."""
    import mlodsl

    plan = mlodsl.compile(path, overrides=overrides)
    history = plan.run(iterations=iterations)
    assert history, "empty history"
    validations = [r for r in history if r.get("kind") == "validation"]
    assert validations, f"no validation record in {history}"
    for r in validations:
        _finite_numbers(r)
    return plan, history
