"""Helpers shared by the test tree (programs, problems with closed forms, run helpers).

Import them as ``from tests.support.<module> import ...``; pytest puts the repository root on
``sys.path`` (``pythonpath`` in ``pyproject.toml``), so no test edits ``sys.path`` itself.
"""
