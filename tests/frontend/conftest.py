"""Shared helpers of the front-end tests: the repository root on sys.path, corpus paths."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROGRAMS = ROOT / "tests" / "programs"
GOOD = sorted((PROGRAMS / "good").glob("*.mlo"))
BAD = sorted((PROGRAMS / "bad").glob("*.mlo"))
