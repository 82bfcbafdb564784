"""The compiler's back half: a checked IR to an :class:`~mlodsl.compiler.back.plan.ExecutionPlan`.

Each module has one job:

* :mod:`~mlodsl.compiler.back.resolve` - imports and built-in names, methods chosen per edge;
* :mod:`~mlodsl.compiler.back.interpret` - the expression interpreter over the IR;
* :mod:`~mlodsl.compiler.back.loss_graph` - ``loss(...) = expr`` to a ``torch.fx`` graph;
* :mod:`~mlodsl.compiler.back.tracing` - what a callable loss reads, traced with ``make_fx``;
* :mod:`~mlodsl.compiler.back.slicing` - gradient slices of loss graphs;
* :mod:`~mlodsl.compiler.back.instantiate` - the user's objects from a checked program;
* :mod:`~mlodsl.compiler.back.lower` - a checked program to an execution plan;
* :mod:`~mlodsl.compiler.back.plan` - the execution plan (describe, to_json, run);
* :mod:`~mlodsl.compiler.back.adapters` - the runtime classes a compiled program plugs in.

The back half depends on the front half and on the runtime; the runtime never imports it.
"""
