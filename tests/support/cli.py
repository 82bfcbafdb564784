"""Running the ``mlodsl`` command line in-process, and the test programs it runs."""
from __future__ import annotations

from pathlib import Path

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"
RIDGE = PROGRAMS / "ridge" / "ridge.mlo"  # 5-feature ridge, learned per-weight decays


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``mlodsl.cli.main(argv)``: ``(status, stdout, stderr)``."""
    from mlodsl.cli import main

    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err
