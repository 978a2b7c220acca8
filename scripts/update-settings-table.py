#!/usr/bin/env python3
"""Write the settings table of calico.common.settings into README.md, between
its settings-table markers (tests/unit/test_settings_registry.py checks that
it is current).  Run it after adding or changing a setting."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from calico.common.settings import markdown_table  # noqa: E402

START, END = "<!-- settings-table: start (scripts/update-settings-table.py) -->", "<!-- settings-table: end -->"


def updated(text: str) -> str:
    head, start, rest = text.partition(START)
    _old, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"README.md: the markers {START!r} and {END!r} are missing")
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


def main() -> int:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    new = updated(text)
    if new != text:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(new)
        print("README.md: settings table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
