"""``mlodsl graph FILE [-o out.svg|png|dot]``: draw a program's problem hierarchy.

Without ``-o`` (``--out``) it writes ``STEM.svg`` in the current folder.

Problems are laid out by level (level 0 at the bottom, uppers above); each ``depends`` edge
points from the upper to the lower and is labelled with its method and ``every``. ``.dot``
writes Graphviz text (render it with ``dot -Tsvg`` where Graphviz is installed); ``.svg`` and
``.png`` are drawn with matplotlib, so no Graphviz binary is needed. Torch is never imported.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_arguments", "main", "hierarchy", "to_dot", "draw"]


def add_arguments(parser) -> None:
    """The options of ``mlodsl graph``."""
    parser.add_argument("file", metavar="FILE", help="a .mlo program")
    parser.add_argument("-o", "--output", "--out", default=None,
                        help="output file: .svg, .png or .dot (default: STEM.svg in the "
                             "current folder)")


def _method_text(expr, problem, engine) -> str:
    """The edge's method as written; else the problem's, the engine's, or darts()."""
    from mlodsl.compiler.front.fmt import format_expr

    for candidate in (expr, problem.field("hypergrad") if problem is not None else None,
                      engine.field("hypergrad") if engine is not None else None):
        value = getattr(candidate, "value", candidate)
        if value is not None:
            text = format_expr(value)
            return text if "(" in text else text + "()"
    return "darts()"


def hierarchy(program):
    """``(levels, edges)``: ``{problem: level}`` and ``[(upper, lower, label)]`` in source order."""
    from mlodsl.compiler.front.check import dependency_graph, levels

    graph = dependency_graph(program)
    lv = levels(program) or {n: 0 for n in graph.nodes}
    edges = []
    for upper, lower, data in graph.edges(data=True):
        method = _method_text(data.get("method"), program.problem(upper), program.engine)
        every = data.get("every", 1)
        edges.append((upper, lower, method + (f" every {every}" if every != 1 else "")))
    return {n: lv.get(n, 0) for n in graph.nodes}, edges


def to_dot(levels: dict[str, int], edges: list[tuple[str, str, str]], name: str = "mlo") -> str:
    """Graphviz DOT text: one rank per level, uppers on top."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"digraph {q(name)} {{", "  rankdir=TB;", "  node [shape=box, style=rounded];"]
    for level in sorted(set(levels.values()), reverse=True):
        members = " ".join(q(n) + ";" for n in levels if levels[n] == level)
        lines.append(f"  {{ rank=same; {members} }}  // level {level}")
    for upper, lower, label in edges:
        lines.append(f"  {q(upper)} -> {q(lower)} [label={q(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _positions(levels: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Nodes of a level spread evenly on one row; row height = level."""
    rows: dict[int, list[str]] = {}
    for n, lv in levels.items():
        rows.setdefault(lv, []).append(n)
    width = max(len(r) for r in rows.values()) if rows else 1
    pos = {}
    for lv, names in rows.items():
        for i, n in enumerate(names):
            pos[n] = (2.5 * (i + 0.5) * width / len(names), float(lv))  # 2.5: room for labels
    return pos


def draw(levels: dict[str, int], edges: list[tuple[str, str, str]], path: str) -> None:
    """Draw the hierarchy to ``path`` (.svg or .png) with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = _positions(levels)
    width = max((x for x, _ in pos.values()), default=1) + 1.25
    height = max(levels.values(), default=0) + 1
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * width), max(2.5, 1.8 * height)))
    for upper, lower, label in edges:
        (x1, y1), (x2, y2) = pos[upper], pos[lower]
        ax.annotate("", xy=(x2, y2 + 0.18), xytext=(x1, y1 - 0.18),
                    arrowprops=dict(arrowstyle="-|>", color="0.3", lw=1.4))
        # Label nearer the upper: edges into a shared lower converge, labels would collide.
        side = "left" if x2 < x1 - 1e-9 else "right" if x2 > x1 + 1e-9 else "center"
        ax.text(x1 + 0.4 * (x2 - x1), y1 + 0.4 * (y2 - y1), label, ha=side, va="center",
                fontsize=9,
                color="0.15", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none"))
    for n, (x, y) in pos.items():
        ax.text(x, y, f"{n}\nlevel {levels[n]}", ha="center", va="center", fontsize=11,
                bbox=dict(boxstyle="round,pad=0.4", fc="#dbe9f6", ec="#3c6e9f"))
    ax.set_xlim(-0.5, width)
    ax.set_ylim(-0.6, height - 0.4)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args) -> int:
    """Run ``mlodsl graph``; returns the exit status."""
    from mlodsl.cli.check_cmd import check_file
    from mlodsl.diagnostics import render_text

    diags, text, program = check_file(args.file)
    errors = [d for d in diags if d.severity == "error"]
    if errors or program is None:
        sys.stderr.write(render_text(errors or diags, {args.file: text} if text else {}) + "\n")
        return 2
    # The default lands in the current folder, never next to the source (a repository).
    out = Path(args.output) if args.output else Path(Path(args.file).stem + ".svg")
    suffix = out.suffix.lower()
    if suffix not in (".svg", ".png", ".dot", ".gv"):
        sys.stderr.write(f"mlodsl graph: error: unknown output format '{out.suffix}' "
                         "(use .svg, .png or .dot)\n")
        return 2
    levels, edges = hierarchy(program)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".dot", ".gv"):
        out.write_text(to_dot(levels, edges, Path(args.file).stem), encoding="utf-8")
    else:
        draw(levels, edges, str(out))
    print(f"wrote {out}")
    return 0
