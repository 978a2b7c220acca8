"""The two iptables backends, and where Felix's chains are.

The kernel holds *legacy* (x_tables) and *nft* (nf_tables) iptables side by
side, each with its own ``-save``/``-restore`` tools.  Felix picks one
(``calico.felix.backend_check``); the lab and the tests, which do not know
which one a Felix chose, read both with ``felix_table``.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Callable

from calico.common.kernel_names import CHAIN_PREFIX

LEGACY, NFT = "legacy", "nft"
BACKENDS = (LEGACY, NFT)
Which = Callable[[str], "str | None"]
Runner = Callable[..., subprocess.CompletedProcess]


def tool(backend: str, version: int, suffix: str = "") -> str:
    """``iptables-nft-save`` and the like: ``suffix`` is "", "-save" or "-restore"."""
    if backend not in BACKENDS:
        raise ValueError(f"iptables backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return f"{'iptables' if version == 4 else 'ip6tables'}-{backend}{suffix}"


def table_section(save_text: str, table: str = "filter") -> str:
    """One table's part of save output (``*table`` to its ``COMMIT``)."""
    lines, inside = [], False
    for line in save_text.splitlines():
        if line.startswith("*"):
            inside = line == f"*{table}"
        if inside:
            lines.append(line)
            if line == "COMMIT":
                inside = False
    return "\n".join(lines) + ("\n" if lines else "")


def felix_table(version: int = 4, table: str = "filter", runner: Runner = subprocess.run,
                which: Which = shutil.which) -> tuple[str | None, str]:
    """(backend, that table's save text) of the backend holding Felix's chains
    in ``table``, or (None, "") where neither does.  A backend whose tool is
    missing, fails or hangs counts as holding nothing."""
    for backend in BACKENDS:
        command = tool(backend, version, "-save")
        if which(command) is None:
            continue
        try:  # no -t: reading every table creates none
            result = runner([command], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode != 0:
            continue
        text = table_section(result.stdout, table)
        if f"\n:{CHAIN_PREFIX}" in text:
            return backend, text
    return None, ""
