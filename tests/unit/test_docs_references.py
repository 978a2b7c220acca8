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


# The design note that used to live outside the repository; a pointer to it
# leads nowhere in a clone.
OLD_DESIGN_POINTER = re.compile(r"\bDESIGN\b(?:\s+section\b|\s*:)")
# A Markdown link's target: [text](target) (an anchor after # is ignored).
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A repository path written in backquotes in a page: `calico/felix/routes.py`.
REPO_PATH = re.compile(r"`((?:calico|tests|bench|docker|scripts)/[A-Za-z0-9_./-]*)`")


def docs_pages() -> list[pathlib.Path]:
    return sorted((ROOT / "docs").glob("*.md"))


def linked_pages(page: pathlib.Path) -> set[pathlib.Path]:
    """The files a Markdown page links to, resolved against its folder."""
    return {(page.parent / target).resolve() for target in LINK.findall(page.read_text())
            if "://" not in target}


def test_old_design_pointer_pattern_catches_both_forms():
    assert OLD_DESIGN_POINTER.search("Keys as in the original (DESIGN section 3).")
    assert OLD_DESIGN_POINTER.search("interfaces named tap* (DESIGN:\nFelix owns the taps)")
    assert not OLD_DESIGN_POINTER.search('see docs/architecture.md, "Configuration"')


def test_no_pointer_into_the_old_design_document_remains():
    bad = [f"{source.relative_to(ROOT)}:{number}: {line.strip()}"
           for source in sorted((ROOT / "calico").rglob("*.py"))
           for number, line in enumerate(source.read_text().splitlines(), 1)
           if OLD_DESIGN_POINTER.search(line)]
    assert bad == []


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    assert docs_pages(), "docs/ holds no page"
    linked = linked_pages(ROOT / "README.md")
    for page in docs_pages():
        linked |= linked_pages(page) - {page.resolve()}
    orphans = [str(page.relative_to(ROOT)) for page in docs_pages() if page.resolve() not in linked]
    assert orphans == []


def test_every_link_between_the_pages_resolves():
    bad = []
    for page in [ROOT / "README.md", *docs_pages()]:
        for target in linked_pages(page):
            if target.suffix == ".md" and not target.is_file():
                bad.append(f"{page.relative_to(ROOT)} links to {target.relative_to(ROOT)}, which does not exist")
    assert bad == []


def test_every_repository_path_a_page_names_exists():
    bad = [f"docs/{page.name} names {path}, which does not exist"
           for page in docs_pages()
           for path in REPO_PATH.findall(page.read_text())
           if not (ROOT / path).exists()]
    assert bad == []
