"""
Tests that the package keeps its shape: the data path reads top to bottom,
imports point one way, and the pure modules stay free of Twisted.

The rules are read from the source with L{ast}, not from what happens to be
imported at run time, so an import inside a function counts as much as one
at the top of a module (only imports under C{if TYPE_CHECKING:} are left
out: they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import harbor

PACKAGE = Path(harbor.__file__).parent

# The layers, lowest first.  A module may import modules of its own layer
# and of the layers below it, never above: so the embedding and command
# line faces sit on the service, the service on the SMTP protocol, the
# protocol on delivery, and delivery on routing, the store and the hooks,
# which rest on the shared vocabulary of _syntax.  A module's layer is that
# of the longest prefix listed for it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("harbor._syntax", "harbor._logging", "harbor._awaitable"),
    ("harbor.address",),
    ("harbor.routing", "harbor.limits", "harbor.filters", "harbor.access", "harbor.proxyheader"),
    ("harbor.store", "harbor.tls", "harbor.auth", "harbor.ownership", "harbor.metrics", "harbor.health", "harbor.drain"),
    # The pure half of the web interface reads the store's messages.
    ("harbor.web.sanitize", "harbor.web.render", "harbor.web.timeline"),
    ("harbor.hooks.config",),
    ("harbor.config",),
    ("harbor.hooks", "harbor.hooks.backlog", "harbor.hooks.attempts", "harbor.dnsbl", "harbor.policyhook"),
    ("harbor.delivery",),
    (
        "harbor.smtp._framing",
        "harbor.smtp._errors",
        "harbor.smtp._replies",
        "harbor.smtp._events",
        "harbor.smtp._parse",
        "harbor.smtp._sasl",
        "harbor.smtp._deadline",
    ),
    ("harbor.smtp._session",),
    ("harbor.smtp",),
    ("harbor.web",),
    ("harbor.preflight", "harbor._workers", "harbor.service"),
    ("harbor.tap", "harbor.api", "harbor.cli"),
)

# Modules with no I/O of their own and no Twisted: they can be read, and
# tested, without a reactor (h11's discipline).
PURE = (
    "harbor._syntax",
    "harbor.access",
    "harbor.address",
    "harbor.routing",
    "harbor.limits",
    "harbor.filters",
    "harbor.proxyheader",
    "harbor.config",
    "harbor.hooks.config",
    "harbor.hooks.backlog",
    "harbor.store.names",
    "harbor.store.lanes",
    "harbor.store.headers",
    "harbor.store.reader",
    "harbor.store.mime",
    "harbor.store.search",
    "harbor.store.summaries",
    "harbor.store.browse",
    "harbor.store.changes",
    "harbor.web",
    "harbor.web.render",
    "harbor.web.sanitize",
    "harbor.web.timeline",
    "harbor.smtp._framing",
    "harbor.smtp._errors",
    "harbor.smtp._replies",
    "harbor.smtp._events",
    "harbor.smtp._parse",
    "harbor.smtp._sasl",
    "harbor.smtp._deadline",
    "harbor.smtp._session",
)


def modules() -> Iterator[tuple[str, Path]]:
    """
    Every module of the package but its tests, by dotted name.
    """
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = relative.parts
        if "test" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _typeCheckingBlock(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )


def importsOf(name: str, path: Path) -> set[str]:
    """
    The modules C{name} imports anywhere in its source (relative imports
    resolved), but those under C{if TYPE_CHECKING:}.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if _typeCheckingBlock(node):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            # "from harbor.store import writer" imports harbor.store.writer.
            found.update(f"{base}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return found


def layerOf(module: str) -> int | None:
    """
    The index in L{LAYERS} of C{module}'s longest listed prefix.
    """
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


class LayeringTests(SynchronousTestCase):
    """
    Tests for the import rules of the L{harbor} package.
    """

    def setUp(self) -> None:
        self.graph = {name: importsOf(name, path) for name, path in modules()}

    def harborImports(self, name: str) -> set[str]:
        """
        The package's own modules that C{name} imports (a name imported from
        a module, C{from harbor.x import f}, counts only if it is one).
        """
        return {m for m in self.graph[name] if m in self.graph and m != name}

    def test_everyModuleHasALayer(self) -> None:
        """
        Each module of the package is placed in a layer, so that a new one
        cannot slip past the rules.
        """
        self.assertEqual([name for name in self.graph if name != "harbor" and layerOf(name) is None], [])

    def test_importsPointDown(self) -> None:
        """
        No module imports one from a higher layer.
        """
        upward = []
        for name in self.graph:
            mine = layerOf(name)
            for imported in self.harborImports(name):
                theirs = layerOf(imported)
                if mine is not None and theirs is not None and theirs > mine:
                    upward.append(f"{name} -> {imported}")
        self.assertEqual(sorted(upward), [])

    def test_noCircle(self) -> None:
        """
        No module reaches itself through its imports.
        """
        circles = []
        for start in self.graph:
            seen: set[str] = set()
            stack = [(start, [start])]
            while stack:
                current, trail = stack.pop()
                for imported in self.harborImports(current):
                    if imported == start:
                        circles.append(" -> ".join([*trail, start]))
                    elif imported not in seen:
                        seen.add(imported)
                        stack.append((imported, [*trail, imported]))
        self.assertEqual(circles, [])

    def test_pureModulesImportNoTwisted(self) -> None:
        """
        The pure modules import nothing from Twisted, directly or through
        the package's own modules they import.
        """
        impure = []
        for name in PURE:
            self.assertIn(name, sorted(self.graph), f"{name} is listed as pure but does not exist")
            reached = {name}
            stack = [name]
            while stack:
                for imported in self.harborImports(stack.pop()):
                    if imported not in reached:
                        reached.add(imported)
                        stack.append(imported)
            for module in sorted(reached):
                twisted = sorted(m for m in self.graph[module] if m == "twisted" or m.startswith("twisted."))
                if twisted:
                    impure.append(f"{name} (via {module}): {twisted[0]}")
        self.assertEqual(impure, [])

    def test_importsFound(self) -> None:
        """
        The import reader sees top-level, function-local and relative
        imports, so the rules above are not vacuous.
        """
        source = PACKAGE / "config.py"
        found = importsOf("harbor.config", source)
        self.assertIn("harbor._syntax", found)
        self.assertIn("harbor.routing", found)
