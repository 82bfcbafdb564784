"""The examples in mlodsl's docstrings run and print what they show.

Every module of the package whose source holds a ``>>>`` example is imported and run through
:mod:`doctest` (modules without examples are not imported here, so optional dependencies stay
optional). The modules are found by walking the package, so a moved or new module is covered
without editing this file.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import mlodsl


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(mlodsl.__path__, prefix="mlodsl."):
        spec = importlib.util.find_spec(info.name)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(".py") and ">>>" in Path(origin).read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_the_package_has_examples():
    # A broken walk (a renamed package, an import error) must not pass as "nothing to run".
    assert len(MODULES) >= 5, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=False)
    assert result.attempted > 0, f"{name}: '>>>' in the source but no example found"
    # doctest prints each failure (expected and got) to stdout, which pytest shows
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
