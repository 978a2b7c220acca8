"""Entering a network namespace, and what this one holds: shared by Felix,
the attach tool, the status tool, BIRD's config and the lab.

``setns`` moves only the calling *thread*: Linux namespaces are per thread,
and threads started from there (ZeroMQ's I/O threads included) inherit it.
pyroute2 is imported only when addresses are asked for, so the modules that
need just ``setns`` load without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

NETNS_DIR = "/var/run/netns"
THREAD_NETNS = "/proc/thread-self/ns/net"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move this thread into the network namespace open as ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body (in this thread only) inside namespace ``name``.

    ``name`` is a name in /var/run/netns or, if it contains a slash, the
    path of a namespace file (``/proc/PID/ns/net``, a bind mount).
    Sockets opened in the body stay in that namespace after it ends."""
    target = os.open(name if "/" in name else os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        own = os.open(THREAD_NETNS, os.O_RDONLY)
    except OSError:
        os.close(target)
        raise
    try:
        setns(target)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(target)
        os.close(own)


def owned_addresses() -> set[str]:
    """Every address configured in this network namespace (netlink)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {addr.get_attr("IFA_ADDRESS") for addr in ipr.get_addr()} - {None}
