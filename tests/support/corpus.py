"""The front end's test corpus: where the programs are, and their golden diagnostics.

A golden line is ``LINE:COL: severity: message``. Run as a module from the repository root to
(re)write the ``.expected`` file next to each bad program: ``python -m tests.support.corpus``
(review the diff before committing it).
"""
from __future__ import annotations

from pathlib import Path

from mlodsl.compiler.front.check import check
from mlodsl.compiler.front.parse import parse
from mlodsl.diagnostics import MLOError

ROOT = Path(__file__).resolve().parents[2]

PROGRAMS = ROOT / "tests" / "programs"
GOOD = sorted((PROGRAMS / "good").glob("*.mlo"))
BAD = sorted((PROGRAMS / "bad").glob("*.mlo"))


def diagnostics_of(path: Path):
    """Every diagnostic of one file: its syntax errors, or else its check results."""
    try:
        program = parse(path.read_bytes(), path.name)
    except MLOError as err:
        return err.diagnostics
    return check(program)


def golden_lines(path: Path) -> list[str]:
    """The golden lines of one file."""
    out = []
    for d in diagnostics_of(path):
        where = f"{d.span.line}:{d.span.column}" if d.span else "-"
        out.append(f"{where}: {d.severity}: {d.message}")
    return out


if __name__ == "__main__":
    for mlo in BAD:
        mlo.with_suffix(".expected").write_text("\n".join(golden_lines(mlo)) + "\n")
