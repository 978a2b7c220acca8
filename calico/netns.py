"""Small helpers for named network namespaces (the lab and the tests).

Namespaces are managed with iproute2 through argument lists (never a shell
string).  ``entered`` (from ``calico.common.netns``) moves only the calling
*thread* into a namespace, so a test can run a ZeroMQ peer inside a
namespace without a subprocess.
"""

from __future__ import annotations

import os
import subprocess
from typing import Sequence

from calico.common.netns import NETNS_DIR, entered  # noqa: F401  (the lab's and tests' netns.entered)


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def create(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
    run(name, ["ip", "link", "set", "lo", "up"])


def remove(name: str) -> None:
    """Delete a namespace if it exists (idempotent, for clean-up paths)."""
    if exists(name):
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def argv(name: str | None, command: Sequence[str]) -> list[str]:
    """The argument list that runs ``command`` inside namespace ``name``."""
    if name is None:
        return list(command)
    return ["ip", "netns", "exec", name, *command]


def run(name: str | None, command: Sequence[str], check: bool = True,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv(name, command), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} in {name or 'root namespace'} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}")
    return result


def sysctl(name: str | None, key: str, value: str) -> None:
    run(name, ["sysctl", "-q", "-w", f"{key}={value}"])
