"""``mlodsl plot RUN_DIR -o curves.png``: training losses and validation metrics of a run.

Reads the run folder's ``metrics.jsonl`` (written by ``RunWriter``; ``metrics.csv`` is read
when there is no JSON file) and draws, with matplotlib's Agg backend, one panel with each
problem's training loss against the iteration and one panel per validation metric.
Torch is never imported.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

__all__ = ["add_arguments", "main", "load_run", "curves", "figure"]


def add_arguments(parser) -> None:
    """The options of ``mlodsl plot``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (with metrics.jsonl)")
    parser.add_argument("-o", "--output", default=None,
                        help="image file (.png, .svg, .pdf; default RUN_DIR/curves.png)")


def _number(value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if not math.isnan(x) else None


def load_run(run_dir: str | Path) -> list[dict]:
    """The records of a run folder (from metrics.jsonl, else metrics.csv)."""
    d = Path(run_dir)
    if (d / "metrics.jsonl").exists():
        from mlodsl.runtime.run_folder import read_metrics

        # Lines that are not records (a torn last line, a stray byte) are skipped, each named.
        return read_metrics(d / "metrics.jsonl")
    if (d / "metrics.csv").exists():
        with open(d / "metrics.csv", newline="", encoding="utf-8") as f:
            return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return []


def curves(records: list[dict]) -> tuple[dict, dict]:
    """``(train, validation)``: ``{problem: (iterations, losses)}`` and ``{metric: (its, values)}``."""
    train: dict[str, tuple[list, list]] = {}
    valid: dict[str, tuple[list, list]] = {}
    for r in records:
        it = _number(r.get("iteration"))
        if it is None:
            continue
        if r.get("kind") == "train" and _number(r.get("loss")) is not None:
            xs, ys = train.setdefault(str(r.get("problem")), ([], []))
            xs.append(it)
            ys.append(_number(r["loss"]))
        elif r.get("kind") == "validation":
            for k, v in r.items():
                if k in ("kind", "iteration", "problem", "step") or _number(v) is None:
                    continue
                xs, ys = valid.setdefault(k, ([], []))
                xs.append(it)
                ys.append(_number(v))
    return train, valid


def figure(train: dict, valid: dict):
    """The matplotlib figure of :func:`curves`' output: one panel of training losses (a
    one-point series drawn as a marker), one per validation metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (1 if train else 0) + len(valid)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    i = 0
    if train:
        ax = flat[i]
        for name, (xs, ys) in train.items():
            # a one-point series has no line to draw: show it as a marker
            ax.plot(xs, ys, label=name, marker="o" if len(xs) == 1 else None)
        ax.set_title("training loss")
        ax.set_xlabel("iteration")
        ax.legend()
        i += 1
    for metric, (xs, ys) in valid.items():
        ax = flat[i]
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_title(f"validation {metric}")
        ax.set_xlabel("iteration")
        i += 1
    for ax in flat[i:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def main(args) -> int:
    """Run ``mlodsl plot``; returns the exit status."""
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        sys.stderr.write(f"mlodsl plot: error: {run_dir} is not a folder\n")
        return 2
    train, valid = curves(load_run(run_dir))
    if not train and not valid:
        sys.stderr.write(f"mlodsl plot: error: no metrics in {run_dir} (expected metrics.jsonl "
                         "or metrics.csv, written with EngineConfig(run_dir=...))\n")
        return 1
    fig = figure(train, valid)
    import matplotlib.pyplot as plt

    out = Path(args.output) if args.output else run_dir / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out}")
    return 0
