"""Helpers shared by the test tree (programs, problems with closed forms, run helpers).

Import them as ``from tests.support.<module> import ...``; pytest puts the repository root on
``sys.path`` (``pythonpath`` in ``pyproject.toml``), so no test edits ``sys.path`` itself.

- ``paths``: where the test programs and examples live; ``run_cli`` (the CLI in process).
- ``corpus``: the front end's good/bad program corpus and its golden diagnostics.
- ``toy_problems``: tiny quadratic problems and engines for the runtime's structure tests.
- ``hg_problems``: ridge HPO with a closed-form hypergradient (float64), ``rel_err``.
- ``mlp_hpo``: a bilevel MLP weight-decay program (also run as a module in subprocesses).
- ``reweighting``: per-example weight logits above an ``nn.Linear``: each method's
  hypergradient in any dtype and precision, for the mixed-precision tests.
- ``example_runs``: ``mlodsl check``/``run``/``compile`` helpers for the examples' tests.
- ``cuda``: the device under test, the stray-CPU-tensor trap and the CUDA tests' programs.
"""
