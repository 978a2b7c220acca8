"""Benchmark: Felix's dataplane programming 1,000 endpoints from cold.

Run as root:  .venv/bin/python bench/felix_dataplane_bench.py [--endpoints N] [--rules R] [--culprit] [--profile]

In a throwaway network namespace (``tdp-bench-<pid>``) with N+1 veth pairs,
it times ``Dataplane.start`` + ``apply`` of N endpoints (routes, neighbour
entries, sysctls, chains and ipsets, each endpoint with R inbound and R
outbound ACL rules), then one more endpoint, then a resync with nothing
changed (cached, and after ``forget_kernel_cache``: a full kernel re-read).

The floor, measured in the same run: the filter tables and ipsets the cold
start produced, saved, then loaded into a fresh namespace with ``ipset
restore`` and ``iptables-legacy-restore`` (+ ip6tables).  Figures are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import logging
import os
import pstats
import resource
import subprocess
import sys
import time

from calico import netns
from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from calico.felix.state import AclRules, Acls, EndpointSpec


def acl_rules(i: int, count: int, direction: int) -> tuple[Rule, ...]:
    """A realistic mix: mostly group members (any protocol), some single TCP
    and UDP ports, one port range, one ICMP rule, padded to ``count``."""
    rules = [Rule(cidr="0.0.0.0/0", protocol="icmp"),
             Rule(cidr="10.202.0.0/16", protocol="tcp", port=(30000, 30100))]
    rules += [Rule(cidr=f"10.201.{direction}.0/24", protocol="udp", port=5300 + k) for k in range(3)]
    rules += [Rule(cidr=f"10.201.{(i + k) % 256}.0/24", protocol="tcp", port=8000 + k) for k in range(15)]
    k = 0
    while len(rules) < count:
        member = (i * 7 + k) % 60000
        rules.append(Rule(cidr=f"10.{200 + direction}.{member // 250}.{member % 250 + 1}/32"))
        k += 1
    return tuple(rules[:count])


def endpoint(i: int, rules: int) -> EndpointSpec:
    eid = f"bench{i:06d}-{i:x}"
    acl = Acls(v4=AclRules(inbound=acl_rules(i, rules, 0), outbound=acl_rules(i, rules, 1)))
    return EndpointSpec(eid, f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                        (f"10.{64 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}",), acls=acl)


def make_interfaces(ns: str, specs: list[EndpointSpec]) -> None:
    lines = []
    for n, spec in enumerate(specs):
        lines.append(f"link add {spec.interface} type veth peer name peer{n}")
        lines.append(f"link set {spec.interface} up")
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def floor(ns: str) -> dict[str, float]:
    """Load what ``ns`` holds (filter tables, ipsets) into a fresh namespace."""
    sets = netns.run(ns, ["ipset", "save"]).stdout
    rules4 = netns.run(ns, ["iptables-legacy-save", "-t", "filter"]).stdout
    rules6 = netns.run(ns, ["ip6tables-legacy-save", "-t", "filter"]).stdout
    fresh = f"tdp-bench-floor-{os.getpid()}"
    netns.remove(fresh)
    netns.create(fresh)
    try:
        times = {}
        for label, argv, text in (("ipset restore", ["ipset", "restore"], sets),
                                  ("iptables-legacy-restore", ["iptables-legacy-restore"], rules4),
                                  ("ip6tables-legacy-restore", ["ip6tables-legacy-restore"], rules6)):
            started = time.perf_counter()
            subprocess.run(netns.argv(fresh, argv), input=text, text=True, check=True)
            times[label] = time.perf_counter() - started
        times["lines"] = len(sets.splitlines()) + len(rules4.splitlines()) + len(rules6.splitlines())
        return times
    finally:
        netns.remove(fresh)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=50, help="ACL rules per direction per endpoint")
    parser.add_argument("--profile", action="store_true", help="profile the cold start")
    parser.add_argument("--profile-resync", action="store_true", help="profile the resync after forget")
    parser.add_argument("--culprit", action="store_true",
                        help="give one endpoint an IPv6 address as well and disable IPv6 on its tap, so the "
                             "kernel refuses its route: the cold start includes finding it")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, iptables, ipsets)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(relativeCreated)7.0f ms %(name)s: %(message)s")
    ns = f"tdp-bench-{os.getpid()}"
    specs = [endpoint(i, args.rules) for i in range(args.endpoints + 1)]
    culprit = specs[len(specs) // 2].endpoint_id if args.culprit else None
    if culprit:
        middle = specs[len(specs) // 2]
        specs[len(specs) // 2] = dataclasses.replace(middle, addrs=(*middle.addrs, "fd00:b::1"))
    desired = {s.endpoint_id: s for s in specs[:-1]}
    one_more = {s.endpoint_id: s for s in specs}
    netns.remove(ns)
    netns.create(ns)
    try:
        make_interfaces(ns, specs)
        if culprit:
            netns.run(ns, ["sysctl", "-qw", f"net.ipv6.conf.tap{culprit[:11]}.disable_ipv6=1"])
        with netns.entered(ns):
            dp = Dataplane()
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        t_start, _ = timed(dp.start)
        t_cold, missing = timed(dp.apply, desired)
        if profiler:
            profiler.disable()
        assert not missing, f"{len(missing)} interfaces missing"
        assert set(dp.failed) == ({culprit} if culprit else set()), f"failed closed: {sorted(dp.failed)}"
        cold_writes = dp.writes.snapshot()
        counts = {
            "chains": netns.run(ns, ["iptables-legacy-save", "-t", "filter"]).stdout.count("\n:"),
            "rules": netns.run(ns, ["iptables-legacy-save", "-t", "filter"]).stdout.count("\n-A "),
            "sets": len(netns.run(ns, ["ipset", "list", "-n"]).stdout.split()),
            "members": netns.run(ns, ["ipset", "save"]).stdout.count("\nadd "),
        }
        base = floor(ns)
        t_one, _ = timed(dp.apply, one_more)
        writes = dp.writes.total()
        t_resync, _ = timed(dp.apply, one_more)
        resync_writes = dp.writes.total() - writes
        dp.forget_kernel_cache()
        resync_profiler = cProfile.Profile() if args.profile_resync else None
        if resync_profiler:
            resync_profiler.enable()
        t_full, _ = timed(dp.apply, one_more)
        if resync_profiler:
            resync_profiler.disable()
        full_writes = dp.writes.total() - writes
        dp.close()
    finally:
        netns.remove(ns)

    floor_total = base["ipset restore"] + base["iptables-legacy-restore"] + base["ip6tables-legacy-restore"]
    cold_total = t_start + t_cold
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"Felix dataplane benchmark: {args.endpoints} endpoints x {args.rules} inbound + {args.rules} "
          f"outbound ACL rules (IPv4), IPv4+IPv6 tables")
    print(f"  kernel state: {counts['chains']} chains, {counts['rules']} rules, {counts['sets']} ipsets, "
          f"{counts['members']} set members, {args.endpoints} routes + neighbours")
    print(f"  cold start (start + apply):   {cold_total:7.2f} s   (start {t_start:.2f} s)"
          + (f", including finding the endpoint the kernel refuses ({culprit})" if args.culprit else ""))
    print(f"    writes: {cold_writes}")
    print(f"  one more endpoint:            {t_one * 1000:7.1f} ms")
    print(f"  resync, nothing changed:      {t_resync * 1000:7.1f} ms   kernel writes: {resync_writes}")
    print(f"  resync after forget (re-read):{t_full:7.2f} s    kernel writes: {full_writes}")
    print(f"  floor (same rules and sets into a fresh namespace, {base['lines']} lines):")
    print(f"    ipset restore {base['ipset restore']:.2f} s + iptables-legacy-restore "
          f"{base['iptables-legacy-restore']:.2f} s + ip6tables-legacy-restore "
          f"{base['ip6tables-legacy-restore']:.2f} s = {floor_total:.2f} s")
    print(f"  cold start / floor:           {cold_total / floor_total:7.2f}x   (target <= 3x)")
    print(f"  peak RSS of the process running the Dataplane: {self_rss:.0f} MB")
    for prof in (profiler, resync_profiler):
        if prof:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
