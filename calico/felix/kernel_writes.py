"""A count of every write Felix's dataplane makes to the kernel.

Each writer bumps one field per kernel write (an iptables commit, an ipset or
netlink request, a sysctl file write).  Tests inject one and assert that a
pass with nothing to change leaves it untouched; the benchmark prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class WriteCounter:
    iptables_commits: int = 0  # python-iptables commits and iptables-restore runs
    ipset_requests: int = 0  # pyroute2 ipset requests
    ipset_restores: int = 0  # `ipset restore` runs
    route_requests: int = 0  # netlink route and neighbour changes
    sysctl_writes: int = 0
    tunnel_requests: int = 0  # tunl0 link and address changes (IP-in-IP)

    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
