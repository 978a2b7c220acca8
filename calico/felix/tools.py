"""Running iptables/ipset command-line tools: argument lists, stdin, one error line.

Used for reading (``iptables-legacy-save`` or ``iptables-nft-save``) and
for bulk writes (``iptables-legacy-restore --noflush``, every nft write
with ``iptables-nft-restore --noflush``, ``ipset restore``).  A child process
inherits the calling thread's network namespace, so these act where the
Dataplane is bound as long as they are called inside its namespace.

Every run is reported to the callables in ``observers`` (the tool's file
name, and whether it succeeded): Felix's metrics count iptables-restore,
iptables-save and ipset runs and their errors there, whichever backend's
tool it is.
"""

from __future__ import annotations

import os
import subprocess
from typing import Callable, Sequence

Runner = Callable[..., subprocess.CompletedProcess]
# Told of every run: (tool file name, succeeded).  Set up by Felix's main.
observers: list[Callable[[str, bool], None]] = []


class ToolError(RuntimeError):
    """A tool exited non-zero; the message names it and quotes its stderr."""


def run_tool(argv: Sequence[str], stdin: str | None = None, runner: Runner = subprocess.run,
             timeout: float = 120.0) -> str:
    try:
        result = runner(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout)
    except Exception:
        _report(argv[0], False)
        raise
    _report(argv[0], result.returncode == 0)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()
        raise ToolError(f"{argv[0]} failed ({result.returncode}): {' / '.join(detail[:3])}")
    return result.stdout


def _report(tool: str, ok: bool) -> None:
    for observer in observers:
        try:
            observer(os.path.basename(tool), ok)
        except Exception:  # counting must never fail a write
            pass
