"""The package's dependency picture, checked on the source (no import is run).

The picture is a tree: ``compiler/ir.py`` at the bottom (with the torch-free tables
``diagnostics``, ``methods`` and ``settings``); ``compiler/front`` on the IR only (torch-free, so
``mlodsl check`` and ``mlodsl fmt`` stay fast); the runtime on no compiler; ``compiler/back`` on
the front half and the runtime; the CLI on everything and nothing on the CLI. No import cycles,
and no module reaches into another object's private attributes.
"""
import ast
import re
from pathlib import Path

import mlodsl

ROOT = Path(mlodsl.__file__).parent

# The torch-free leaves every layer may use.
TABLES = ("mlodsl.diagnostics", "mlodsl.methods", "mlodsl.settings")

# Private names of other objects that the package may use, each with its reason. Keep it small:
# anything of mlodsl's own belongs behind a public method of its owner instead.
ALLOWED_PRIVATE = {
    "torch._foreach_norm": "torch's fused multi-tensor kernel (one launch for all the norms); "
                           "no public spelling exists",
    "torch._foreach_mul": "torch's fused multi-tensor kernel; no public spelling exists",
    "torch._foreach_add_": "torch's fused multi-tensor kernel; no public spelling exists",
    "torch._dynamo": "mark_static_address, torch's documented way to mark a CUDA-graph input "
                     "static (compiled/capture.py); torch.compiler has no spelling of it",
    "os._exit": "ends a hung rank without running cleanup that could hang too (documented in "
                "the os module for exactly this)",
    "_fields": "a namedtuple's public field list (the underscore only avoids clashing with "
               "field names)",
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _import_targets(name: str, f: Path) -> list[str]:
    """Every module name ``name`` imports, at module level or inside functions (absolute)."""
    package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            targets += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets += [base] + [f"{base}.{a.name}" for a in node.names]
    return targets


def _imports(name: str, f: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of mlodsl that ``name`` imports."""
    found = set()
    for t in _import_targets(name, f):
        while t and t not in modules:
            t = t.rsplit(".", 1)[0] if "." in t else ""
        if t and t != name:
            found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {n: _imports(n, f, modules) for n, f in modules.items()}


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every mlodsl module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _bad_reach(allowed_from, forbidden: tuple[str, ...]) -> list[str]:
    graph = _graph()
    bad = []
    for name in sorted(graph):
        if allowed_from(name):
            hits = sorted(m for m in _reach(graph, name) if _under(m, *forbidden))
            if hits:
                bad.append(f"{name} reaches {hits}")
    return bad


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle of ``graph`` as ``[a, b, ..., a]``, or None. A package's ``__init__``
    importing its own submodules (and them importing the package) is how Python packages
    work, not a cycle between modules."""
    def related(a, b):
        return a.startswith(b + ".") or b.startswith(a + ".")
    edges = {n: {m for m in deps if not related(n, m)} for n, deps in graph.items()}
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles_between_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_and_ignores_a_package_and_its_modules():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"p": {"p.x"}, "p.x": {"p"}, "q": {"p.x"}}) is None


def test_the_ir_and_the_tables_import_no_layer_above_them():
    bad = _bad_reach(lambda n: n == "mlodsl.compiler.ir" or n in TABLES,
                     ("mlodsl.compiler.front", "mlodsl.compiler.back", "mlodsl.compiler.api",
                      "mlodsl.runtime", "mlodsl.cli"))
    assert not bad, "\n".join(bad)


def test_the_front_half_imports_no_back_half_runtime_or_cli():
    bad = _bad_reach(lambda n: _under(n, "mlodsl.compiler.front"),
                     ("mlodsl.compiler.back", "mlodsl.compiler.api", "mlodsl.runtime",
                      "mlodsl.cli"))
    assert not bad, "\n".join(bad)


def test_the_front_half_and_the_tables_never_import_torch():
    graph, modules = _graph(), _modules()
    bad = []
    for name in sorted(graph):
        if not (_under(name, "mlodsl.compiler.front") or name == "mlodsl.compiler.ir"
                or name in TABLES):
            continue
        for m in sorted({name} | _reach(graph, name)):
            if any(_under(t, "torch") for t in _import_targets(m, modules[m])):
                bad.append(f"{name} imports torch (through {m})")
    assert not bad, "\n".join(bad)


def test_the_runtime_imports_nothing_from_the_compiler_or_cli():
    bad = _bad_reach(lambda n: _under(n, "mlodsl.runtime"), ("mlodsl.compiler", "mlodsl.cli"))
    assert not bad, "\n".join(bad)


def test_the_back_half_imports_no_cli():
    bad = _bad_reach(lambda n: _under(n, "mlodsl.compiler"), ("mlodsl.cli",))
    assert not bad, "\n".join(bad)


def test_nothing_outside_the_cli_imports_the_cli():
    # ``python -m mlodsl`` is the CLI's own entry point.
    bad = [f"{n} imports {sorted(d for d in deps if _under(d, 'mlodsl.cli'))}"
           for n, deps in sorted(_graph().items())
           if not _under(n, "mlodsl.cli") and n != "mlodsl.__main__"
           and any(_under(d, "mlodsl.cli") for d in deps)]
    assert not bad, "\n".join(bad)


def _private_reach_ins(source: str, where: str) -> list[str]:
    """``x._name`` (or ``getattr(x, "_name")``) where ``x`` is not ``self``, ``cls``,
    ``super()`` or a class of the same module, and the use is not in ``ALLOWED_PRIVATE``."""
    tree = ast.parse(source)
    own_classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    found = []

    def private(attr) -> bool:
        return isinstance(attr, str) and attr.startswith("_") and not attr.startswith("__")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and (owner.id in ("self", "cls")
                                                or owner.id in own_classes):
                continue
            if isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "super":
                continue
            if ast.unparse(node) in ALLOWED_PRIVATE or node.attr in ALLOWED_PRIVATE:
                continue
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and private(node.args[1].value) \
                and node.args[1].value not in ALLOWED_PRIVATE:
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_private_attribute_of_another_object_is_used():
    found = [hit for f in sorted(_modules().values())
             for hit in _private_reach_ins(f.read_text(), str(f.relative_to(ROOT.parent)))]
    assert not found, "\n".join(found)


def test_every_allowed_private_use_still_exists():
    # An allowlist entry no code needs any more is removed, so the list stays the true set.
    text = "\n".join(f.read_text() for f in _modules().values())
    stale = [k for k in ALLOWED_PRIVATE if k not in text]
    assert not stale, stale


def test_the_private_attribute_check_finds_a_reach_in():
    source = ("class A:\n    def f(self, other):\n        self._a = A._b + super()._c\n"
              "        return other._window, getattr(other, '_count'), torch._foreach_norm\n")
    hits = [h.split(": ", 1)[1] for h in _private_reach_ins(source, "probe.py")]
    assert sorted(hits) == sorted(["other._window", "getattr(other, '_count')"])


def _homes_table() -> set[str]:
    """The paths the first column of docs/architecture.md's "Homes" table names (braces
    expanded: ``runtime/{a,b}.py`` is ``runtime/a.py`` and ``runtime/b.py``)."""
    text = (ROOT.parent / "docs" / "architecture.md").read_text()
    table = text.split("## Homes", 1)[1].split("\n## ", 1)[0]
    paths = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        for path in re.findall(r"`([^`]+)`", line.split(" | ", 1)[0]):
            m = re.fullmatch(r"(.*)\{(.*)\}(.*)", path)
            paths |= {m[1] + part + m[3] for part in m[2].split(",")} if m else {path}
    return paths


def test_the_architecture_doc_names_every_module_and_only_modules_that_exist():
    listed = _homes_table()
    repo = ROOT.parent
    missing = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(repo).as_posix()
        if f.name == "__init__.py" and rel != "mlodsl/__init__.py":
            continue
        folders = {p.as_posix() + "/" for p in f.relative_to(repo).parents}
        if rel not in listed and not folders & listed:
            missing.append(rel)
    assert not missing, f"docs/architecture.md's Homes table lacks a row for {missing}"
    gone = sorted(p for p in listed if not (repo / p).exists())
    assert not gone, f"docs/architecture.md's Homes table names what no longer exists: {gone}"
