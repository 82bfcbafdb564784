"""The compiler's front half: ``.mlo`` text to a checked IR, without torch or networkx.

Each module has one job:

* :mod:`~mlodsl.compiler.front.files` - reading a program file (size limit, errors as
  diagnostics);
* :mod:`~mlodsl.compiler.front.lexing` - the Lark parser and the indentation-free lexer;
* :mod:`~mlodsl.compiler.front.syntax` - syntax errors as diagnostics with hints;
* :mod:`~mlodsl.compiler.front.build` - the parse tree to IR (:mod:`mlodsl.compiler.ir`);
* :mod:`~mlodsl.compiler.front.parse` - the entry points ``parse`` and ``parse_expression``;
* :mod:`~mlodsl.compiler.front.sources` - which text (program or override) each node came from;
* :mod:`~mlodsl.compiler.front.names` - the built-in names a program may use;
* :mod:`~mlodsl.compiler.front.values` - static checks of field values and method calls;
* :mod:`~mlodsl.compiler.front.graph` - the few graph algorithms the checker needs;
* :mod:`~mlodsl.compiler.front.settings` - the header ``problem P <key=value, ...>`` (Betty
  ``Config`` keys) and what contradicts it;
* :mod:`~mlodsl.compiler.front.check` - every static check of a program;
* :mod:`~mlodsl.compiler.front.overrides` - ``--set TARGET=VALUE`` edits of the IR;
* :mod:`~mlodsl.compiler.front.override_values` - what an override's value may be (data, not
  code);
* :mod:`~mlodsl.compiler.front.fmt` - the canonical formatter.

The front half depends only on the IR, :mod:`mlodsl.diagnostics` and the torch-free tables
(:mod:`mlodsl.methods`, :mod:`mlodsl.settings`); ``mlodsl check`` and ``mlodsl fmt`` run on it alone.
"""
