"""Import hygiene of the house (docs/architecture.md).

- ``ribnode.node`` (and the Celery plumbing ``ribnode serve`` uses, and the QA console it
  serves) never imports torch, diffusers or onnxruntime: the listener starts fast and a model
  bug cannot take it down.
- ``ribnode.node`` never imports ``ribnode.workers``, directly or through another module: the
  composition root (``ribnode.cli``) passes the task queue in.
- The runtime models (``ribnode.models``) never import torch or diffusers.
- No import circle anywhere in ``src/``, counting every ``import`` statement (those inside
  functions and under ``TYPE_CHECKING`` too).

The module graph is read from the source (AST), not from what one run happens to import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("torch", "diffusers", "onnxruntime")
MODULES = [
    "ribnode.cli",
    "ribnode.node",
    "ribnode.node.listener",
    "ribnode.node.completion",
    "ribnode.node.broker",
    "ribnode.node.routing",
    "ribnode.node.spool",
    "ribnode.node.recovery",
    "ribnode.node.cli",
    "ribnode.node.http",
    "ribnode.node.http.app",
    "ribnode.ledger.store",
    "ribnode.ledger.dispatch",
    "ribnode.ledger.deliveries",
    "ribnode.models.fingerprint",
    "ribnode.workers.app",
    "ribnode.workers.queue",
    "ribnode.console.app",
    "ribnode.console.syslog",
    "ribnode.console.cli",
]


def source_modules(root: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Every module under ``root``: its dotted name -> (file, is a package)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, package)
    return modules


def _imported_names(name: str, package: bool, tree: ast.AST) -> Iterator[tuple[str, list[str]]]:
    """(imported module, the names taken from it) of every import statement, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                anchor = name.split(".") if package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [alias.name for alias in node.names]


def _known(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module of ``modules`` that ``name`` resolves to (itself or its nearest parent)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = SRC) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The module graph of ``root``: module -> the modules of ``root`` it imports, and module ->
    the top-level packages from outside ``root`` it imports. ``from pkg import name`` is an
    edge to ``pkg.name`` when that is a module, else to ``pkg``."""
    modules = source_modules(root)
    inside: dict[str, set[str]] = {m: set() for m in modules}
    outside: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, package) in modules.items():
        for base, names in _imported_names(name, package, ast.parse(path.read_text(), str(path))):
            targets = [f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names] or [base]
            for target in targets:
                known = _known(target, modules)
                if known is None:
                    outside[name].add(target.split(".")[0])
                elif known != name:
                    inside[name].add(known)
    return inside, outside


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (``[a, b, ..., a]``), or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def import_chain(graph: dict[str, set[str]], start: str, wanted: str) -> list[str] | None:
    """The shortest import chain from ``start`` to a module in package ``wanted``, or None."""
    previous: dict[str, str | None] = {start: None}
    queue = [start]
    for module in queue:
        if module == wanted or module.startswith(wanted + "."):
            chain = [module]
            while (before := previous[chain[-1]]) is not None:
                chain.append(before)
            return chain[::-1]
        for target in sorted(graph.get(module, ())):
            if target not in previous:
                previous[target] = module
                queue.append(target)
    return None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_node_imports_no_heavy_library() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        f"print(','.join(sorted(h for h in {HEAVY!r} if h in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"


def test_node_never_imports_the_workers() -> None:
    graph, _ = import_graph()
    chains = [import_chain(graph, m, "ribnode.workers") for m in sorted(graph) if _in(m, "ribnode.node")]
    found = [" -> ".join(chain) for chain in chains if chain]
    assert found == [], "ribnode.node reaches ribnode.workers:\n" + "\n".join(found)


def test_runtime_models_never_import_torch_or_diffusers() -> None:
    graph, outside = import_graph()
    models = sorted(m for m in graph if _in(m, "ribnode.models"))
    offenders = []
    for importer in sorted(m for m in graph if outside[m] & {"torch", "diffusers"}):
        chain = next((c for m in models if (c := import_chain(graph, m, importer))), None)
        if chain:
            offenders.append(
                " -> ".join(chain) + f" -> {', '.join(sorted(outside[importer] & {'torch', 'diffusers'}))}"
            )
    assert offenders == [], "ribnode.models reaches torch or diffusers:\n" + "\n".join(offenders)
    code = (
        "import importlib, sys\n"
        f"for m in {models!r}: importlib.import_module(m)\n"
        "print(','.join(sorted(h for h in ('torch', 'diffusers', 'ribnode_lab') if h in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing ribnode.models loaded: {result.stdout.strip()}"


def test_no_import_circle_in_src() -> None:
    graph, _ = import_graph()
    assert "ribnode.node.listener" in graph and "ribnode.ledger.store" in graph["ribnode.node.listener"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The guards above would miss nothing they claim to check: a circle closed by an import
    inside a function, a relative import and ``from pkg import module`` are all edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..a import x\n    import torch\n")
    graph, outside = import_graph(tmp_path)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"} and outside["pkg.sub.c"] == {"torch"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    assert import_chain(graph, "pkg.sub.b", "pkg.a") == ["pkg.sub.b", "pkg.sub.c", "pkg.a"]
