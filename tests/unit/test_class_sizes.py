"""No class in the package grows past 200 lines.

A class that long holds several things at once (issue 13: Agent had 35
attributes and seven per-endpoint maps cleaned up by hand); past this size
the next fact it learns belongs in a part of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "calico"
MAX_CLASS_LINES = 200


def class_sizes() -> list[tuple[str, int]]:
    sizes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                sizes.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}",
                              node.end_lineno - first + 1))
    return sizes


def test_the_package_has_classes_to_measure():
    assert len(class_sizes()) > 20


def test_every_class_is_under_the_limit():
    too_long = [f"{where}: {lines} lines" for where, lines in class_sizes() if lines >= MAX_CLASS_LINES]
    assert too_long == []
