"""Tests use what our packages offer, never their private names: a test that reaches `_name` pins how a
module works inside, and breaks when it is changed without its behaviour changing."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("contracts", "ledger", "projections", "services")
TESTS = Path(__file__).parent


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(tree: ast.AST) -> Iterator[str]:
    """Every name a module defines: functions, classes, their methods and attributes, `self.x` and
    assignments, imports bound under an alias."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
            yield from (argument.arg for argument in node.args.args) if not isinstance(node, ast.ClassDef) else ()
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.split(".")[0]


def private_names_of_our_packages() -> set[str]:
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names.update(name for name in defined_names(ast.parse(path.read_text())) if is_private(name))
            names.update(part for part in path.relative_to(ROOT).with_suffix("").parts if is_private(part))
    return names


def private_uses(tree: ast.AST, ours: set[str]) -> Iterator[tuple[int, str]]:
    """Where a test imports a private name from our packages, or reaches an attribute that is one of our
    private names (an attribute of a library's object, say pytest's `node._nodeid`, is not ours)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
            parts = [*node.module.split("."), *(alias.name for alias in node.names)]
            yield from ((node.lineno, f"from {node.module} import {p}") for p in parts if is_private(p))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES and any(map(is_private, alias.name.split("."))):
                    yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.Attribute) and node.attr in ours:
            yield node.lineno, f".{node.attr}"
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "getattr",
            "setattr",
            "delattr",
        ):
            # monkeypatch.setattr(module, "_name", ...) and getattr(obj, "_name") reach in by string
            for argument in node.args[1:2]:
                if isinstance(argument, ast.Constant) and argument.value in ours:
                    yield node.lineno, f'"{argument.value}"'


def test_no_test_reaches_a_private_name_of_our_packages():
    """Every file under tests/ (fixtures and helpers included) uses our packages only by public names."""
    ours = private_names_of_our_packages()
    reaching = [
        f"{path.relative_to(ROOT)}:{line}: {use}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, use in sorted(private_uses(ast.parse(path.read_text()), ours))
    ]
    assert reaching == [], "tests reach private names:\n" + "\n".join(reaching)


def test_the_check_finds_each_way_of_reaching_in():
    """The scan itself: an import, an attribute, a string in setattr; not a library's private attribute."""
    ours = {"_stage", "_held"}
    source = (
        "from projections.replay import _stage\n"
        "import projections._hidden\n"
        "first._held\n"
        "monkeypatch.setattr(replay, '_stage', None)\n"
        "request.node._nodeid\n"
        "from pathlib import _local\n"
    )
    assert [line for line, _ in private_uses(ast.parse(source), ours)] == [1, 2, 3, 4]
