"""Running iptables/ipset command-line tools: argument lists, stdin, one error line.

Used for reading (``iptables-legacy-save``) and for bulk writes
(``iptables-legacy-restore --noflush``, ``ipset restore``).  A child process
inherits the calling thread's network namespace, so these act where the
Dataplane is bound as long as they are called inside its namespace.
"""

from __future__ import annotations

import subprocess
from typing import Callable, Sequence

Runner = Callable[..., subprocess.CompletedProcess]


class ToolError(RuntimeError):
    """A tool exited non-zero; the message names it and quotes its stderr."""


def run_tool(argv: Sequence[str], stdin: str | None = None, runner: Runner = subprocess.run,
             timeout: float = 120.0) -> str:
    result = runner(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()
        raise ToolError(f"{argv[0]} failed ({result.returncode}): {' / '.join(detail[:3])}")
    return result.stdout
