"""The front end's test corpus: where the programs are, and their golden diagnostics.

A golden line is ``LINE:COL: severity: message``. Run as a script to (re)write the
``.expected`` file next to each bad program: ``python3 tests/frontend/_front_corpus.py``
(review the diff before committing it).

(Named uniquely rather than kept in conftest.py: several test folders have a conftest.py,
and only one module can be called ``conftest`` at a time.)
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlodsl.compiler.front.check import check  # noqa: E402
from mlodsl.compiler.front.parse import parse  # noqa: E402
from mlodsl.diagnostics import MLOError  # noqa: E402

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
    for mlo in sorted((ROOT / "tests" / "programs" / "bad").glob("*.mlo")):
        mlo.with_suffix(".expected").write_text("\n".join(golden_lines(mlo)) + "\n")
