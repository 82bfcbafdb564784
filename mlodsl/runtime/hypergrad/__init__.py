"""Hypergradient methods, one module each, registered by name.

A method answers one question: given ``v``, the gradient of an upper's objective with respect
to a lower problem's parameters, what does ``v`` contribute to the gradient with respect to the
parameters of the problems the lower's best response depends on (its "targets")? For implicit
methods this is ``-(d^2 g / d targets d w) H^{-1} v`` with ``g`` the lower's loss and ``H`` its
Hessian; methods differ in how they approximate ``H^{-1} v``.

Chaining over the paths of the dependency DAG lives in one place (:mod:`.chain`), not in the
methods. To add a method: write ``mymethod.py`` with a function decorated by
``@register("mymethod")`` taking ``(request, **arguments)`` and returning one tensor (or None)
per target parameter, and add its signature to ``mlodsl.methods.METHODS``.
"""
from mlodsl.runtime.hypergrad.registry import HypergradRequest, get_method, register

# Importing the modules registers the methods.
from mlodsl.runtime.hypergrad import (  # noqa: F401
    cg, darts, first_order, neumann, reinforce, sama, unroll)

__all__ = ["HypergradRequest", "get_method", "register"]
