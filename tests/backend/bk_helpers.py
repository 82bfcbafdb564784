"""Paths and small helpers of the back-end tests (a unique module name: bk_helpers)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).resolve().parent / "programs"
HPO = ROOT / "examples" / "hpo" / "hpo.mlo"
HPO_HELDOUT = ROOT / "examples" / "hpo" / "hpo_heldout.mlo"

for _p in (str(ROOT), str(PROGRAMS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def run_cli(argv, capsys):
    """``mlodsl.cli.main(argv)``: ``(status, stdout, stderr)``."""
    from mlodsl.cli import main
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err
