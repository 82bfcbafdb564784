"""Where the test programs live, and running the CLI in process."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Data programs: ``good/`` and ``bad/`` (the front end's corpus) and ``imports/`` (programs that
#: import Python modules kept next to them).
PROGRAMS = ROOT / "tests" / "programs"
IMPORTS = PROGRAMS / "imports"
HPO = ROOT / "examples" / "hpo" / "hpo.mlo"
HPO_HELDOUT = ROOT / "examples" / "hpo" / "hpo_heldout.mlo"


def run_cli(argv, capsys):
    """``mlodsl.cli.main(argv)``: ``(status, stdout, stderr)``."""
    from mlodsl.cli import main
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err
