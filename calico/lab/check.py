"""``check``: every ordered pair of containers, ICMP and TCP, against policy.

See docs/lab.md, "The independent evaluator".

What *should* happen is worked out here, independently of the code that
enforces it: from the groups' rules (the lab's cluster file, or the seed's
defaults) and the lab's containers, a small evaluator decides each probe
directly (a rule sourced from group G matches a peer that is in G; one
sourced from a CIDR matches a peer address inside it; then protocol, port
and ICMP type).  It shares nothing with the ACL manager's rule processor or
Felix's rendering, so a bug there shows up as a mismatch instead of being
mirrored in the expectation.  A packet from A to B is allowed when one of
A's groups' outbound rules matches B and one of B's groups' inbound rules
matches A (Felix enforces the first on A's host, the second on B's).

What *does* happen is measured with a real ``ping -c1 -W1`` and a TCP
connect to the container's listener, all pairs in parallel.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import netaddr

from calico.common.datafiles import Cluster, GroupRules, default_group_rules
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


def _group_rules(cluster: Cluster, name: str) -> GroupRules:
    return cluster.groups.get(name) or default_group_rules(name)


def _rule_matches(rule: Rule, peer: Container, peer_ip: str, protocol: str, port: int | None) -> bool:
    """Does an allow rule admit a probe whose other end is ``peer``?"""
    version = 6 if ":" in peer_ip else 4
    if rule.group is not None:
        if rule.group not in peer.groups:
            return False
    elif rule.cidr is None or netaddr.IPAddress(peer_ip) not in netaddr.IPNetwork(rule.cidr):
        return False
    if rule.protocol is None:
        return True
    name = protocol_name(rule.protocol)
    if protocol == "tcp":
        if name != "tcp":
            return False
        if rule.port is None:
            return True
        low, high = rule.port if isinstance(rule.port, tuple) else (rule.port, rule.port)
        return low <= (port or 0) <= high
    # An echo request: ICMP type 8, or ICMPv6 type 128 (code 0).  A rule
    # written for ICMP applies to ICMPv6 echo as well; one for ICMPv6 only there.
    if name == "icmp":
        echo = 8
    elif name == "icmpv6" and version == 6:
        echo = 128
    else:
        return False
    return rule.icmp_type is None or (rule.icmp_type == echo and rule.icmp_code in (None, 0))


def _allowed(rules: list[Rule], default: str, peer: Container, peer_ip: str, protocol: str,
             port: int | None) -> bool:
    return default == "allow" or any(_rule_matches(r, peer, peer_ip, protocol, port) for r in rules)


def probe_allowed(cluster: Cluster, src: Container, dst: Container, protocol: str, port: int | None = None) -> bool:
    """Whether the groups let ``src`` reach ``dst``'s probe address."""
    s_ip, d_ip = probe_address(src), probe_address(dst)
    outbound = any(_allowed(list(_group_rules(cluster, g).outbound), "deny", dst, d_ip, protocol, port)
                   for g in src.groups)
    inbound = any(_allowed(list(_group_rules(cluster, g).inbound), "deny", src, s_ip, protocol, port)
                  for g in dst.groups)
    return outbound and inbound


def probe_address(container: Container) -> str:
    """The address check uses: the first IPv4 one, else the first."""
    return next((a for a in container.addrs if ":" not in a), container.addrs[0])


def expected_matrix(cluster: Cluster, containers: list[Container]) -> dict[tuple[str, str], dict[str, bool]]:
    result = {}
    for src in containers:
        for dst in containers:
            if src.name == dst.name:
                continue
            result[(src.name, dst.name)] = {"icmp": probe_allowed(cluster, src, dst, "icmp"),
                                            "tcp": probe_allowed(cluster, src, dst, "tcp", LISTEN_PORT)}
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
