"""The package's dependency picture: no import cycles, the runtime independent of the compiler,
no module reaching into another object's private attributes."""
import ast
from pathlib import Path

import mlodsl

ROOT = Path(mlodsl.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, f: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of mlodsl that ``name`` imports, at module level or inside functions."""
    package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(f.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                found.add(t)
    return found


def _graph():
    modules = _modules()
    return {n: _imports(n, f, modules) for n, f in modules.items()}


def test_no_import_cycles_between_modules():
    graph = _graph()
    # A package's __init__ importing its own submodules (and them importing the package) is
    # how Python packages work, not a cycle between modules.
    def related(a, b):
        return a.startswith(b + ".") or b.startswith(a + ".")
    edges = {n: {m for m in deps if not related(n, m)} for n, deps in graph.items()}
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in edges.get(n, ()):
            if state.get(m) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(edges):
        if n not in state:
            visit(n)


def test_the_runtime_imports_nothing_from_the_compiler_or_cli():
    for name, deps in _graph().items():
        if name.startswith("mlodsl.runtime"):
            bad = sorted(d for d in deps if d.startswith(("mlodsl.compiler", "mlodsl.cli")))
            assert not bad, f"{name} imports {bad}"


def test_no_private_attribute_of_another_object_is_read_in_the_runtime():
    found = []
    for name, f in _modules().items():
        if not name.startswith("mlodsl.runtime"):
            continue
        tree = ast.parse(f.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and node.attr != "_fields":
                owner = node.value
                if isinstance(owner, ast.Name) and (owner.id in ("self", "cls")
                                                    or owner.id in imported):
                    continue
                found.append(f"{f.name}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                    "getattr", "setattr", "hasattr") and len(node.args) > 1 \
                    and isinstance(node.args[1], ast.Constant) \
                    and str(node.args[1].value).startswith("_") \
                    and not str(node.args[1].value).startswith("__") \
                    and node.args[1].value != "_fields":
                found.append(f"{f.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)
