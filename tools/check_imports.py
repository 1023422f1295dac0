#!/usr/bin/env python3
"""Import rules of the sparseprop package, checked from the source (no import is run).

Two rules, over every ``import`` in ``python/sparseprop/`` (lazy imports inside
functions, ``try`` blocks and ``if TYPE_CHECKING`` included):

1. **No import cycle** between modules of the package. An edge A -> B means A names
   B in an import: ``from .b import x``, ``from . import b``, ``import sparseprop.b``.
   ``from . import x`` where ``x`` is not a submodule is an edge to the package's
   ``__init__``. Importing a submodule also runs its parent packages' ``__init__``;
   that implicit step is not an edge (every submodule would "cycle" with ``__init__``).
2. **No private name crosses a module boundary.** A ``_``-prefixed *module*
   (``_C``, ``_backend``, ``pruning._layers``) is package-internal and may be imported
   anywhere inside the package; a ``_``-prefixed *name* defined in a module (a function,
   class, constant) may not be imported by another module, nor read as
   ``module._name`` through an imported module. Dunders (``__version__``) are public.
   A name a module wants to share loses its underscore (in an internal module if it is
   not for users).

Known violations waiting for a planned move are listed in ``PENDING`` with the reason;
they are reported but do not fail, and an entry that no longer occurs fails (so the list
only shrinks). ``--strict`` fails on those too.

Usage: ``python tools/check_imports.py [--strict] [PACKAGE_DIR]``; exit status 1 with one
line per violation, 0 with a one-line summary.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = "sparseprop"
# Compiled extension modules: no .py file, but modules all the same.
EXTENSIONS = {"sparseprop._C"}
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "python" / PACKAGE

# violation key -> why it is allowed for now. Keys: "private <module>.<name> in <importer>",
# "cycle <sorted members, comma-separated>". Empty: the benchmarks' move (issue 12 item 4)
# removed the last ones. CI runs --strict, where PENDING entries fail too.
PENDING: Dict[str, str] = {}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    message: str
    key: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def module_names(root: Path) -> Dict[str, Path]:
    """Dotted module name -> source file, for every .py under the package root."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> Optional[str]:
    """The absolute module named by ``from <...> import``; None if outside the package."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        if not is_package:
            parts = parts[:-1]  # a plain module's "." is its package
        drop = node.level - 1
        if drop > len(parts) - 1:
            return None
        parts = parts[: len(parts) - drop]
        base = ".".join(parts + ([node.module] if node.module else []))
    if base != PACKAGE and not base.startswith(PACKAGE + "."):
        return None
    return base


class _FileImports(ast.NodeVisitor):
    """The package-internal imports of one file, and its reads of ``alias._name``."""

    def __init__(self, module: str, is_package: bool, modules: Set[str]):
        self.module, self.is_package, self.modules = module, is_package, modules
        self.edges: List[Tuple[str, int]] = []            # (target module, line)
        self.private: List[Tuple[str, str, int]] = []     # (from module, name, line)
        self.module_aliases: Dict[str, str] = {}           # local name -> module

    def _is_module(self, name: str) -> bool:
        return name in self.modules or name in EXTENSIONS

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            name = alias.name
            if name != PACKAGE and not name.startswith(PACKAGE + "."):
                continue
            self.edges.append((name, node.lineno))
            # "import a.b" binds "a"; "import a.b as c" binds c to a.b.
            self.module_aliases[alias.asname or name.split(".")[0]] = name if alias.asname else PACKAGE

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve_from(self.module, self.is_package, node)
        if base is None:
            return
        for alias in node.names:
            if alias.name == "*":
                self.edges.append((base, node.lineno))
                continue
            sub = f"{base}.{alias.name}"
            if self._is_module(sub):
                self.edges.append((sub, node.lineno))
                self.module_aliases[alias.asname or alias.name] = sub
            else:
                self.edges.append((base, node.lineno))
                if is_private(alias.name):
                    self.private.append((base, alias.name, node.lineno))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = []
        value: ast.AST = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.module_aliases:
            # Walk "alias.sub.sub.name" down the submodules; the first non-module
            # attribute is a name of the last module reached.
            current = self.module_aliases[value.id]
            for attr in reversed(chain):
                if self._is_module(f"{current}.{attr}"):
                    current = f"{current}.{attr}"
                    continue
                if is_private(attr) and current != self.module:
                    self.private.append((current, attr, node.lineno))
                break
            return  # the inner attributes are this chain's own prefixes
        self.generic_visit(node)


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module, or a self-import (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cycle_path(graph: Dict[str, Set[str]], component: List[str]) -> List[str]:
    """One concrete loop through a component, for the message (breadth-first)."""
    start, members = component[0], set(component)
    parents: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ()) & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return list(reversed(path)) + [start]
                if nxt not in parents:
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return component


def check(root: Path) -> Tuple[List[Violation], int, int]:
    """(violations, modules checked, import edges) for the package at ``root``."""
    modules = module_names(root)
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    where: Dict[Tuple[str, str], Tuple[str, int]] = {}
    violations: List[Violation] = []
    for name, path in modules.items():
        rel = str(path.relative_to(root.parent.parent)) if root.parent.parent in path.parents else str(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        visitor = _FileImports(name, path.name == "__init__.py", set(modules))
        visitor.visit(tree)
        for target, line in visitor.edges:
            if target in modules and target != name or target == name:
                graph[name].add(target)
                where.setdefault((name, target), (rel, line))
        for source, private_name, line in visitor.private:
            if source != name:
                violations.append(Violation(rel, line, f"private name {source}.{private_name} "
                                                       f"used outside its module",
                                            f"private {source}.{private_name} in {name}"))
    for component in _cycles(graph):
        loop = _cycle_path(graph, component)
        steps = []
        for a, b in zip(loop, loop[1:]):
            path, line = where[(a, b)]
            steps.append(f"{a} -> {b} ({path}:{line})")
        first_path, first_line = where[(loop[0], loop[1])]
        members = "" if len(component) == len(loop) - 1 else (
            f" [{len(component)} modules in this circle: {', '.join(component)}]")
        violations.append(Violation(first_path, first_line,
                                    "import cycle: " + "; ".join(steps) + members,
                                    "cycle " + ",".join(component)))
    return violations, len(modules), sum(len(v) for v in graph.values())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT,
                        help="the package directory (default: python/sparseprop)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the PENDING violations too")
    args = parser.parse_args(argv)
    if not (args.root / "__init__.py").is_file():
        parser.error(f"{args.root} is not a package directory (no __init__.py)")
    violations, n_modules, n_edges = check(args.root.resolve())
    pending = {} if args.strict or args.root.resolve() != DEFAULT_ROOT else PENDING
    failing = [v for v in violations if v.key not in pending]
    waiting = [v for v in violations if v.key in pending]
    stale = sorted(set(pending) - {v.key for v in violations})
    for violation in failing:
        print(violation)
    for key in stale:
        print(f"check_imports: PENDING entry no longer occurs, delete it: {key!r}")
    for violation in waiting:
        print(f"pending: {violation}")
    for reason in sorted({pending[v.key] for v in waiting}):
        print(f"pending until {reason}")
    if failing or stale:
        print(f"check_imports: {len(failing)} violation(s), {len(stale)} stale PENDING "
              f"entr{'y' if len(stale) == 1 else 'ies'} in {n_modules} modules")
        return 1
    print(f"check_imports: {n_modules} modules, {n_edges} internal imports, no cycle, "
          f"no private name across modules" + (f" ({len(waiting)} pending)" if waiting else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
