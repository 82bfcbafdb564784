"""What a callable loss (``loss = f``) reads, found by tracing it with ``make_fx``.

:func:`traced_reads` runs ``f(problems, batch)`` under ``make_fx`` as a function of every
problem's parameters (substituted functionally, as the runtime does) and returns the problems
whose parameters the loss actually uses.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["traced_reads"]


def traced_reads(fn: Any, problems: Mapping[str, Any], batch: Any) -> list[str]:
    """The problems whose parameters ``fn(problems, batch)`` reads, by tracing it with fx.

    ``problems`` maps names to runtime ``Problem`` objects. The loss is traced with
    ``make_fx`` as a function of every problem's trainable parameters, substituted in the
    modules with :func:`mlodsl.runtime.functional.substitute` (buffers protected, so tracing
    changes no running statistic); a parameter placeholder with a user is a read.
    """
    from types import SimpleNamespace

    from torch.fx.experimental.proxy_tensor import make_fx

    from mlodsl.runtime.functional import ModuleView, substitute

    names = list(problems)
    keys = {n: [k for k, p in problems[n].module.named_parameters() if p.requires_grad]
            for n in names}
    flat = [p.detach() for n in names for k, p in problems[n].module.named_parameters()
            if p.requires_grad]
    spaces = SimpleNamespace(**problems)

    def run(params, batch):
        views, i = [], 0
        for n in names:
            mapping = dict(zip(keys[n], params[i:i + len(keys[n])]))
            i += len(keys[n])
            views.append((problems[n].module, ModuleView(mapping, protect_buffers=True)))
        with substitute(views):
            out = fn(spaces, batch)
        if isinstance(out, Mapping):
            out = out["loss"]
        return out

    rng = torch.get_rng_state()
    try:
        gm = make_fx(run)(flat, batch)
    finally:
        torch.set_rng_state(rng)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"][:len(flat)]
    reads, i = [], 0
    for n in names:
        mine = placeholders[i:i + len(keys[n])]
        i += len(keys[n])
        if any(len(p.users) for p in mine):
            reads.append(n)
    return reads


