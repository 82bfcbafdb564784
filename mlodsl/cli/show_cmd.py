"""``mlodsl show RUN_DIR [--json]``: print a run's summary (its results).

Reads the run folder's ``summary.json`` (written by ``mlodsl run`` and ``plan.run(run_dir=...)``
in every ending) and prints it as text: how the run ended, the final and best validation, the
final losses and the learned hyperparameters of small problems. ``--json`` prints the file's
content. Torch is never imported. Exit status 2 when the folder has no readable summary.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser) -> None:
    """The options of ``mlodsl show``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (with summary.json)")
    parser.add_argument("--json", action="store_true", help="print summary.json as JSON")


def main(args) -> int:
    """Run ``mlodsl show``; returns the exit status."""
    from mlodsl.diagnostics import MLOError
    from mlodsl.runtime.summary import read_summary, render_summary

    run_dir = Path(args.run_dir)
    if not (run_dir / "summary.json").is_file():
        what = "is not a folder" if not run_dir.is_dir() else "has no summary.json"
        raise MLOError(f"{run_dir} {what}",
                       hint="give the folder of a `mlodsl run` (its --out, or "
                            "runs/<program>-<time>)")
    try:
        summary = read_summary(run_dir)
    except (OSError, ValueError) as err:
        raise MLOError(f"cannot read {run_dir / 'summary.json'}: {err}") from None
    if not isinstance(summary, dict):
        raise MLOError(f"{run_dir / 'summary.json'} does not hold a run summary")
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        sys.stdout.write(render_summary(summary) + "\n")
    return 0
