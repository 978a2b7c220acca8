"""Where a lab keeps everything, and what it names things.

See docs/lab.md, "Files and processes".

A lab is identified by two values: its directory (``--lab-dir`` or
``CALICO_LAB_DIR``, default /var/run/calico-lab) and its namespace prefix
(``CALICO_LAB_PREFIX``, default ``clab-``).  Every namespace the lab makes
starts with the prefix, and every file it writes, every process's config,
log and pid file, lives under the directory, so ``down`` can find all of it
again after a crash with no other memory.  Tests use their own prefix and
directory, so they never meet a user's lab or each other.

Addressing, fixed so that logs and matrices read the same every time:

* fabric 10.240.0.0/24 (and fd00:240::/64 for IPv6 next hops): host i is
  10.240.0.(10+i), named ``host-i``;
* with ``--subnets S`` (S >= 2), S fabrics 10.240.k.0/24 (fd00:240:k::/64),
  host i on fabric (i-1) mod S at 10.240.k.(10+i), and a router namespace
  at 10.240.k.1 on each, which also leads to the "outside" namespace
  (203.0.113.2, beyond the router at 203.0.113.1; outside every pool);
* containers get whatever address ``add`` is given, inside the pool.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEFAULT_LAB_DIR = "/var/run/calico-lab"
DEFAULT_PREFIX = "clab-"
PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,11}-")
CONTAINER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,23}")
FABRIC_NET = "10.240.0.0/24"
FABRIC_PREFIXLEN = 24
FABRIC6_PREFIXLEN = 64
MAX_HOSTS = 200
MAX_SUBNETS = 8
ROUTER_IP = "10.240.{}.1"
HOSTS_NET = "10.240.0.0/16"
OUTSIDE_NET = "203.0.113.0/24"
OUTSIDE_ROUTER_IP = "203.0.113.1"
OUTSIDE_IP = "203.0.113.2"
LISTEN_PORT = 7777


class LabError(RuntimeError):
    """A lab operation that cannot go on; str() is one line."""


@dataclass(frozen=True)
class Layout:
    lab_dir: str
    prefix: str

    @classmethod
    def from_env(cls, lab_dir: str | None = None, prefix: str | None = None) -> "Layout":
        lab_dir = os.path.abspath(lab_dir or os.environ.get("CALICO_LAB_DIR") or DEFAULT_LAB_DIR)
        prefix = prefix or os.environ.get("CALICO_LAB_PREFIX") or DEFAULT_PREFIX
        if not PREFIX_RE.fullmatch(prefix):
            raise LabError(f"bad lab prefix {prefix!r} (want a lower-case letter, up to 11 more letters/digits, then '-')")
        return cls(lab_dir, prefix)

    # Namespaces.
    @property
    def fabric_ns(self) -> str:
        return f"{self.prefix}fabric"

    def host_ns(self, index: int) -> str:
        return f"{self.prefix}{host_name(index)}"

    @property
    def router_ns(self) -> str:
        return f"{self.prefix}router"

    @property
    def outside_ns(self) -> str:
        return f"{self.prefix}outside"

    def container_ns(self, name: str) -> str:
        return f"{self.prefix}c-{name}"

    def owns_ns(self, ns_name: str) -> bool:
        return ns_name.startswith(self.prefix)

    # Files.
    @property
    def data_dir(self) -> str:
        """Host 1's data directory: the cluster file and every endpoint file."""
        return os.path.join(self.lab_dir, "data")

    @property
    def cluster_file(self) -> str:
        return os.path.join(self.data_dir, "felix.txt")

    @property
    def secret_file(self) -> str:
        """The lab's cluster secret: every component's keys derive from it."""
        return os.path.join(self.lab_dir, "cluster.secret")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.lab_dir, "logs")

    @property
    def pid_dir(self) -> str:
        return os.path.join(self.lab_dir, "pids")

    @property
    def state_file(self) -> str:
        return os.path.join(self.lab_dir, "state.json")

    def host_dir(self, index: int) -> str:
        return os.path.join(self.lab_dir, host_name(index))

    def bird_socket(self, index: int) -> str:
        return os.path.join(self.host_dir(index), "bird.ctl")

    def log_file(self, label: str) -> str:
        """The component's own log."""
        return os.path.join(self.log_dir, f"{label}.log")

    def out_file(self, label: str) -> str:
        """The process's standard output and error (start-up failures, crashes)."""
        return os.path.join(self.log_dir, f"{label}.out")

    def pid_file(self, label: str) -> str:
        return os.path.join(self.pid_dir, f"{label}.pid")


def host_name(index: int) -> str:
    return f"host-{index}"


def subnet_of(index: int, subnets: int = 1) -> int:
    """The fabric host ``index`` is on: round robin over the subnets."""
    return (index - 1) % subnets


def host_ip(index: int, subnets: int = 1) -> str:
    return f"10.240.{subnet_of(index, subnets)}.{10 + index}"


def host_ip6(index: int, subnets: int = 1) -> str:
    return f"fd00:240:{subnet_of(index, subnets)}::{10 + index:x}"


def host_index(text: str, count: int) -> int:
    """``host-2`` or ``2`` -> 2, checked against the lab's host count."""
    digits = text[len("host-"):] if text.startswith("host-") else text
    if not re.fullmatch(r"[0-9]{1,4}", digits) or not 1 <= int(digits) <= count:
        raise LabError(f"no host {text!r} in this lab (hosts: host-1 .. host-{count})")
    return int(digits)


def check_container_name(name: str) -> str:
    if not CONTAINER_NAME_RE.fullmatch(name):
        raise LabError(f"bad container name {name!r} (want 1-24 of A-Z a-z 0-9 _ -, starting with a letter or digit)")
    return name
