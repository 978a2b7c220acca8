"""Every pointer from the code into docs/ names a file and heading that exist."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
# docs/NAME.md, optionally followed by , "Heading" (one heading per pointer).
REFERENCE = re.compile(r'docs/([A-Za-z0-9_-]+\.md)(?:,\s*"([^"]+)")?')


def headings(path: pathlib.Path) -> set[str]:
    return {line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")}


def references() -> list[tuple[str, str, str | None]]:
    found = []
    for source in sorted((ROOT / "calico").rglob("*.py")):
        text = source.read_text()
        for match in REFERENCE.finditer(" ".join(text.split())):
            found.append((str(source.relative_to(ROOT)), match.group(1), match.group(2)))
    return found


def test_code_points_into_docs_somewhere():
    assert any(name == "protocol.md" for _, name, _ in references())


def test_every_docs_reference_resolves():
    bad = []
    for source, name, heading in references():
        path = ROOT / "docs" / name
        if not path.is_file():
            bad.append(f"{source}: docs/{name} does not exist")
        elif heading is not None and heading not in headings(path):
            bad.append(f"{source}: docs/{name} has no heading {heading!r}")
    assert bad == []
