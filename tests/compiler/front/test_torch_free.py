"""The front half of the compiler and the settings tables import neither torch nor networkx."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import mlodsl.compiler.front as front


def test_every_front_module_is_torch_free():
    names = [f"mlodsl.compiler.front.{m.name}" for m in pkgutil.iter_modules(front.__path__)]
    assert "mlodsl.compiler.front.check" in names and len(names) >= 10
    code = ("import importlib, sys\n"
            f"for name in {names + ['mlodsl.settings', 'mlodsl.methods']!r}:\n"
            "    importlib.import_module(name)\n"
            "heavy = sorted(m for m in ('torch', 'networkx') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
