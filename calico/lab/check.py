"""``check``: every ordered pair of containers, ICMP and TCP, against policy.

What *should* happen is computed, not written down: the groups' rules come
from the lab's cluster file (or the seed's defaults), the memberships from
the lab's containers, and the per-endpoint ACLs from the ACL manager's own
pure rule processor, so the expectation uses exactly the semantics the
running system uses.  A packet from A to B is allowed when A's outbound
ACLs allow B's address and B's inbound ACLs allow A's (Felix enforces the
first on A's host, the second on B's).

What *does* happen is measured with a real ``ping -c1 -W1`` and a TCP
connect to the container's listener, all pairs in parallel.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import netaddr

from calico.acl_manager.network_store import GroupSpec
from calico.acl_manager.rule_processor import EndpointAcls, RuleProcessor
from calico.common.datafiles import Cluster, default_group_rules
from calico.common.rules import Rule, protocol_name
from calico.lab import probe
from calico.lab.layout import LISTEN_PORT, Layout, host_name
from calico.lab.state import Container

PROTOCOLS = ("icmp", "tcp")


@dataclass(frozen=True)
class Cell:
    expected: dict[str, bool]
    actual: dict[str, bool]

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


def expected_acls(cluster: Cluster, containers: list[Container]) -> dict[str, EndpointAcls]:
    names = sorted({g for c in containers for g in c.groups})
    specs = []
    for name in names:
        rules = cluster.groups.get(name) or default_group_rules(name)
        members = {c.endpoint_id: tuple(c.addrs) for c in containers if name in c.groups}
        specs.append(GroupSpec(name, members, rules.inbound, rules.outbound))
    return RuleProcessor().load(specs)


def _matches(rule: Rule, peer: str, protocol: str, port: int | None, icmp_type: int | None) -> bool:
    if rule.cidr is None or netaddr.IPAddress(peer) not in netaddr.IPNetwork(rule.cidr):
        return False
    if rule.protocol is not None and protocol_name(rule.protocol) != protocol:
        return False
    if rule.port is not None:
        low, high = rule.port if isinstance(rule.port, tuple) else (rule.port, rule.port)
        if port is None or not low <= port <= high:
            return False
    if rule.icmp_type is not None and rule.icmp_type != icmp_type:
        return False
    if rule.icmp_code is not None and rule.icmp_code != 0:
        return False
    return True


def allows(acls: EndpointAcls | None, direction: str, peer: str, protocol: str, port: int | None = None,
           icmp_type: int | None = None) -> bool:
    if acls is None:
        return False  # no ACLs: Felix fails closed
    v6 = ":" in peer
    rules = getattr(acls, f"v{6 if v6 else 4}_{direction}")
    if v6 and protocol == "icmp":
        protocol, icmp_type = "icmpv6", (128 if icmp_type == 8 else icmp_type)
    if any(_matches(r, peer, protocol, port, icmp_type) for r in rules):
        return True
    return getattr(acls, f"{direction}_default") == "allow"


def probe_address(container: Container) -> str:
    """The address check uses: the first IPv4 one, else the first."""
    return next((a for a in container.addrs if ":" not in a), container.addrs[0])


def expected_matrix(cluster: Cluster, containers: list[Container]) -> dict[tuple[str, str], dict[str, bool]]:
    acls = expected_acls(cluster, containers)
    result = {}
    for src in containers:
        for dst in containers:
            if src.name == dst.name:
                continue
            s_ip, d_ip = probe_address(src), probe_address(dst)
            cell = {}
            for protocol, port, icmp_type in (("icmp", None, 8), ("tcp", LISTEN_PORT, None)):
                cell[protocol] = (allows(acls.get(src.endpoint_id), "outbound", d_ip, protocol, port, icmp_type)
                                  and allows(acls.get(dst.endpoint_id), "inbound", s_ip, protocol, port, icmp_type))
            result[(src.name, dst.name)] = cell
    return result


def measure(layout: Layout, containers: list[Container]) -> dict[tuple[str, str], dict[str, bool]]:
    pairs = [(s, d) for s in containers for d in containers if s.name != d.name]

    def one(pair: tuple[Container, Container]) -> dict[str, bool]:
        src, dst = pair
        ns, ip = layout.container_ns(src.name), probe_address(dst)
        return {"icmp": probe.ping(ns, ip), "tcp": probe.tcp_connect(ns, ip, LISTEN_PORT)}

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(pairs)))) as pool:
        results = list(pool.map(one, pairs))
    return {(s.name, d.name): r for (s, d), r in zip(pairs, results)}


def run_check(layout: Layout, cluster: Cluster, containers: list[Container]) -> dict[tuple[str, str], Cell]:
    expected = expected_matrix(cluster, containers)
    actual = measure(layout, containers)
    return {pair: Cell(expected[pair], actual[pair]) for pair in expected}


def wait_until_correct(layout: Layout, cluster: Cluster, containers: list[Container],
                       timeout_s: float = 30.0) -> tuple[bool, dict[tuple[str, str], Cell]]:
    deadline = time.monotonic() + timeout_s
    while True:
        cells = run_check(layout, cluster, containers)
        if all(c.ok for c in cells.values()) or time.monotonic() > deadline:
            return all(c.ok for c in cells.values()), cells
        time.sleep(0.5)


def _mark(allowed: bool) -> str:
    return "+" if allowed else "-"


def format_matrix(containers: list[Container], cells: dict[tuple[str, str], Cell]) -> str:
    """Rows are sources, columns destinations; each cell is ICMP then TCP."""
    names = [c.name for c in containers]
    width = max([len(n) for n in names] + [8])
    header = " " * (width + 2) + "".join(n.rjust(width + 1) for n in names)
    lines = ["from \\ to   (cell = ICMP TCP: + allowed, - blocked; '!' = not what the groups say)", header]
    for src in containers:
        row = f"{src.name.ljust(width)}  "
        for dst in containers:
            if src.name == dst.name:
                text = "."
            else:
                cell = cells[(src.name, dst.name)]
                text = "".join(_mark(cell.actual[p]) for p in PROTOCOLS) + ("!" if not cell.ok else " ")
            row += text.rjust(width + 1)
        lines.append(row)
    wrong = [(pair, cell) for pair, cell in sorted(cells.items()) if not cell.ok]
    lines.append("")
    by_name = {c.name: c for c in containers}
    for (src, dst), cell in wrong:
        for protocol in PROTOCOLS:
            if cell.expected[protocol] != cell.actual[protocol]:
                lines.append(f"UNEXPECTED {src} ({host_name(by_name[src].host)}) -> {dst} "
                             f"({host_name(by_name[dst].host)}) {protocol}: "
                             f"{'allowed' if cell.actual[protocol] else 'blocked'}, groups say "
                             f"{'allow' if cell.expected[protocol] else 'block'}")
    total = len(cells) * len(PROTOCOLS)
    bad = sum(1 for _, c in wrong for p in PROTOCOLS if c.expected[p] != c.actual[p])
    lines.append(f"{total - bad}/{total} probes as expected" + (" - OK" if not bad else " - MISMATCH"))
    return "\n".join(lines)
