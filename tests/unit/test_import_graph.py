"""The layering of the package, read from its import statements (ast, so
imports inside functions count too).

The rule:

* ``calico.common`` is the shared library: it imports nothing of ``calico``
  outside ``calico.common``.
* The components (the daemons: ``felix``, ``plugin``, ``acl_manager``) and
  the tools (the top-level modules: ``bird`` for calico-bird-config,
  ``bird_runner`` for run_bird, ``attach``, ``status``, ``netns``) import
  their own modules and ``calico.common`` only.  A contract two of them
  share lives in ``calico.common``.
* The lab (``calico.lab``) starts the components as processes and never
  imports them; besides ``calico.common`` it may import the tools it drives
  as an operator would (``LAB_TOOLS``).

A module that fits none of these (a new top-level module, say) fails
``test_every_module_belongs_to_a_known_unit`` until it is placed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "calico"
COMMON = "common"
COMPONENTS = {"felix", "plugin", "acl_manager"}
TOOLS = {"bird", "bird_runner", "attach", "status", "netns"}
LAB = "lab"
LAB_TOOLS = {"netns", "attach", "bird", "status"}
# Known exceptions: importer -> the units it may import against the rule.
# None left (calico.common.health read the components' mains for their health
# flags until the settings registry took them); an entry added here must be
# needed, or test_no_stale_exceptions fails.
KNOWN_EXCEPTIONS: dict[str, set[str]] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """``calico.felix.agent`` -> felix; ``calico.bird`` -> bird; ``calico`` -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every ``calico`` module (or name in one) that ``source`` imports."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from calico import netns` imports calico.netns.
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return {name for name in found if name == "calico" or name.startswith("calico.")}


def package_edges() -> dict[str, set[str]]:
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        edges[module] = imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
    return edges


EDGES = package_edges()


def crossings(allowed: set[str], importers: set[str]) -> list[str]:
    """Imports from a module of ``importers`` into a unit outside ``allowed``
    (its own unit is always allowed), known exceptions left out."""
    bad = []
    for module, imported in EDGES.items():
        own = unit_of(module)
        if own not in importers:
            continue
        for name in sorted(imported):
            target = unit_of(name)
            if target in ("", own) or target in allowed or target in KNOWN_EXCEPTIONS.get(module, ()):
                continue
            bad.append(f"{module} imports {name}")
    return bad


def test_every_module_belongs_to_a_known_unit():
    units = {unit_of(module) for module in EDGES} - {""}
    assert units <= COMPONENTS | TOOLS | {COMMON, LAB}, sorted(units - COMPONENTS - TOOLS - {COMMON, LAB})


def test_common_imports_nothing_outside_common():
    assert crossings(set(), {COMMON}) == []


@pytest.mark.parametrize("unit", sorted(COMPONENTS | TOOLS))
def test_components_and_tools_import_only_themselves_and_common(unit):
    assert crossings({COMMON}, {unit}) == []


def test_the_lab_imports_common_and_the_tools_it_drives_never_a_component():
    assert crossings({COMMON} | LAB_TOOLS, {LAB}) == []


def test_the_package_root_imports_nothing():
    assert EDGES["calico"] == set()


def test_no_stale_exceptions():
    """Each known exception must still be needed, so the list only shrinks."""
    for module, targets in sorted(KNOWN_EXCEPTIONS.items()):
        for target in sorted(targets):
            assert any(unit_of(name) == target for name in EDGES[module]), \
                f"{module} no longer imports {target}: drop it from KNOWN_EXCEPTIONS"


@pytest.mark.parametrize("source, expected", [
    ("from calico.felix.routes import ROUTE_PROTO", {"calico.felix.routes", "calico.felix.routes.ROUTE_PROTO"}),
    ("def f():\n    import calico.status\n", {"calico.status"}),
    ("from calico import netns, status as s", {"calico", "calico.netns", "calico.status"}),
    ("from ..felix import agent", {"calico.felix", "calico.felix.agent"}),
    ("import json\nfrom zmq import REP", set()),
])
def test_the_reader_sees_every_form_of_import(source, expected):
    assert imports_of(source, "calico.plugin.main") == expected


def test_a_sideways_import_is_reported(monkeypatch):
    monkeypatch.setitem(EDGES, "calico.bird", EDGES["calico.bird"] | {"calico.felix.routes"})
    assert crossings({COMMON}, {"bird"}) == ["calico.bird imports calico.felix.routes"]
