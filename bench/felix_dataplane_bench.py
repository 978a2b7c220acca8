"""Benchmark: Felix's dataplane programming 1,000 endpoints from cold.

Run as root:  .venv/bin/python bench/felix_dataplane_bench.py [--endpoints N] [--rules R] [--culprit] [--profile]
              .venv/bin/python bench/felix_dataplane_bench.py --groups [N] [--endpoints E] [--remote-members M]

In a throwaway network namespace (``tdp-bench-<pid>``) with N+1 veth pairs,
it times ``Dataplane.start`` + ``apply`` of N endpoints (routes, neighbour
entries, sysctls, chains and ipsets, each endpoint with R inbound and R
outbound ACL rules), then one more endpoint, then a resync with nothing
changed (cached, and after ``forget_kernel_cache``: a full kernel re-read).

The floor, measured in the same run: the filter tables and ipsets the cold
start produced, saved, then loaded into a fresh namespace with ``ipset
restore`` and ``iptables-legacy-restore`` (+ ip6tables).  Figures are printed,
never asserted.  Felix runs with ``IptablesBackend = legacy``, the backend
of that floor (auto would pick nft on a host whose ``iptables`` is nft).

``--groups N`` (N defaults to 10): the shape of issue 10 instead.  The E
local endpoints (IPv4 and IPv6 each, unless ``--ipv4-only``) are in N
groups (endpoint i in g<i % N>), every group with the default rules (in
from the group, out to the group and anywhere), turned into each
endpoint's ACLs by the ACL manager's own ``RuleProcessor`` and read back
as Felix reads an ACLUPDATE; the groups' members are the local endpoints'
addresses (plus ``--remote-members`` addresses of other hosts' endpoints
per group), handed to ``Dataplane.apply(desired, groups)`` as the agent
does.  So Felix shares one ipset per group and family (``felix-4g-<group>``,
``felix-6g-<group>``) between all the endpoints naming it.  Printed: the
kernel state (ipsets and members, from ``ipset list``/``save``), the cold
start, one remote member joining and leaving g0 (a pass after adding /
removing one address; median of ``--repeat``), one more local endpoint in
g0 (its chains, its route and its address in g0's sets), a resync with
nothing changed (its kernel writes must be 0) and one after
``forget_kernel_cache``, against the restore floor of the cold state.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import ipaddress
import logging
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time

from calico import netns
from calico.acl_manager.network_store import GroupSpec
from calico.acl_manager.rule_processor import RuleProcessor
from calico.common.datafiles import default_group_rules
from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from calico.felix.endpoints import acls_from_wire
from calico.felix.ipsets import is_group_set
from calico.felix.kernel_writes import WriteCounter
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


# --- --groups: shared group sets ----------------------------------------------------

def group_endpoint(i: int, groups: int, dual: bool) -> tuple[EndpointSpec, str]:
    """Endpoint i (without ACLs yet) and its group."""
    eid = f"bench{i:06d}-{i:x}"
    addrs = (f"10.{64 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}",) + ((f"fd00:64::{i + 1:x}",) if dual else ())
    return (EndpointSpec(eid, f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}", addrs),
            f"g{i % groups}")


def remote_addrs(g: int, count: int, dual: bool) -> frozenset[str]:
    """Addresses of ``count`` endpoints of other hosts in group g."""
    out = set()
    for k in range(count):
        out.add(f"10.{128 + g // 4}.{(g % 4) * 64 + k // 250}.{k % 250 + 1}")
        if dual:
            out.add(str(ipaddress.IPv6Address(f"fd00:128:{g:x}::{k + 1:x}")))  # canonical, as decoded
    return frozenset(out)


def with_acls(specs: list[tuple[EndpointSpec, str]], remote: dict[str, frozenset[str]]
              ) -> tuple[list[EndpointSpec], dict[str, frozenset[str]]]:
    """Each endpoint's ACLs as the ACL manager computes and Felix reads them
    (default rules: group references), and each group's member addresses."""
    members: dict[str, dict[str, tuple[str, ...]]] = {}
    for spec, group in specs:
        members.setdefault(group, {})[spec.endpoint_id] = spec.addrs
    processor = RuleProcessor()
    batch = {}
    for group, group_members in members.items():
        rules = default_group_rules(group)
        batch[group] = GroupSpec(group, group_members, rules.inbound, rules.outbound)
    processor.update(batch)
    out = []
    for spec, _group in specs:
        acls, problems = acls_from_wire(processor.acls[spec.endpoint_id].to_wire())
        assert not problems, problems
        out.append(dataclasses.replace(spec, acls=acls))
    addrs = {group: frozenset(a for addrs in group_members.values() for a in addrs) | remote.get(group, frozenset())
             for group, group_members in members.items()}
    return out, addrs


def kernel_sets(ns: str) -> dict[str, int]:
    """Felix's ipsets in ``ns``: name -> members (ipset list, ipset save)."""
    names = netns.run(ns, ["ipset", "list", "-n"]).stdout.split()
    sizes = {name: 0 for name in names}
    for line in netns.run(ns, ["ipset", "save"]).stdout.splitlines():
        if line.startswith("add "):
            name = line.split(" ", 2)[1]
            sizes[name] = sizes.get(name, 0) + 1
    return sizes


def writes_since(counter: WriteCounter, before: dict[str, int]) -> str:
    now = counter.snapshot()
    diff = {k: now[k] - before[k] for k in now if now[k] != before[k]}
    return ", ".join(f"{k} {v}" for k, v in diff.items()) or "none"


def bench_groups(args: argparse.Namespace) -> int:
    dual = not args.ipv4_only
    ns = f"tdp-bench-{os.getpid()}"
    raw = [group_endpoint(i, args.groups, dual) for i in range(args.endpoints + 1)]
    remote = {f"g{g}": remote_addrs(g, args.remote_members, dual) for g in range(args.groups)}
    everyone, groups_plus = with_acls(raw, remote)      # with the extra local endpoint (in g0)
    cold_specs, groups = with_acls(raw[:-1], remote)   # the cold state
    desired = {s.endpoint_id: s for s in cold_specs}
    one_more = {s.endpoint_id: s for s in everyone}
    extra = everyone[-1]
    assert raw[-1][1] == f"g{args.endpoints % args.groups}"
    extra_group = raw[-1][1]
    netns.remove(ns)
    netns.create(ns)
    try:
        make_interfaces(ns, everyone)
        with netns.entered(ns):
            dp = Dataplane(iptables_backend="legacy")  # the backend the floor below is measured on
        t_start, _ = timed(dp.start)
        t_cold, missing = timed(dp.apply, desired, groups)
        assert not missing, f"{len(missing)} interfaces missing"
        assert not dp.failed, f"failed closed: {sorted(dp.failed)}"
        cold_writes = dp.writes.snapshot()
        sets = kernel_sets(ns)
        saved = netns.run(ns, ["iptables-legacy-save", "-t", "filter"]).stdout
        saved6 = netns.run(ns, ["ip6tables-legacy-save", "-t", "filter"]).stdout
        counts = {
            "chains": saved.count("\n:") + saved6.count("\n:"),
            "rules": saved.count("\n-A ") + saved6.count("\n-A "),
        }
        base = floor(ns)

        # One remote member joins g0 (and leaves again): one address more in
        # the group's members, nothing else.
        join_times, leave_times = [], []
        join_writes = leave_writes = ""
        sets_after_join: dict[str, int] = {}
        for k in range(args.repeat):
            joined = dict(groups, g0=groups["g0"] | {f"10.99.{k // 250}.{k % 250 + 1}"})
            before = dp.writes.snapshot()
            t, _ = timed(dp.apply, desired, joined)
            join_times.append(t)
            join_writes = writes_since(dp.writes, before)
            if k == 0:
                sets_after_join = kernel_sets(ns)
            before = dp.writes.snapshot()
            t, _ = timed(dp.apply, desired, groups)
            leave_times.append(t)
            leave_writes = writes_since(dp.writes, before)

        # One more local endpoint, in its group: its route, chains, dispatch
        # rules, and its addresses in its group's shared sets.
        before = dp.writes.snapshot()
        t_local, _ = timed(dp.apply, one_more, groups_plus)
        local_writes = writes_since(dp.writes, before)

        written = dp.writes.total()
        t_resync, _ = timed(dp.apply, one_more, groups_plus)
        resync_writes = dp.writes.total() - written
        dp.forget_kernel_cache()
        t_full, _ = timed(dp.apply, one_more, groups_plus)
        full_writes = dp.writes.total() - written - resync_writes
        dp.close()
    finally:
        netns.remove(ns)

    group_sets = {name: n for name, n in sets.items() if is_group_set(name)}
    floor_total = base["ipset restore"] + base["iptables-legacy-restore"] + base["ip6tables-legacy-restore"]
    cold_total = t_start + t_cold
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    family = "IPv4+IPv6" if dual else "IPv4"
    print(f"Felix dataplane benchmark, groups: {args.endpoints} local endpoints ({family} addresses) in "
          f"{args.groups} groups with the default rules (in from the group, out to the group and anywhere)"
          + (f", {args.remote_members} remote members per group" if args.remote_members else ""))
    print(f"  kernel state: {counts['chains']} chains, {counts['rules']} rules (IPv4+IPv6 tables), "
          f"{args.endpoints} endpoints' routes + neighbours")
    print(f"  ipsets: {len(sets)} in all, {sum(sets.values())} members; {len(group_sets)} shared group sets "
          f"({', '.join(sorted(group_sets)[:4])}{', ...' if len(group_sets) > 4 else ''}) holding "
          f"{sum(group_sets.values())} members; {len(sets) - len(group_sets)} other sets holding "
          f"{sum(sets.values()) - sum(group_sets.values())} members")
    print(f"  cold start (start + apply):   {cold_total:7.2f} s   (start {t_start:.2f} s)")
    print(f"    writes: {cold_writes}")
    print(f"  one remote member joins g0:   {statistics.median(join_times) * 1000:7.1f} ms median, "
          f"{max(join_times) * 1000:.1f} ms max of {args.repeat}   kernel writes: {join_writes}")
    print(f"  ... and leaves again:         {statistics.median(leave_times) * 1000:7.1f} ms median, "
          f"{max(leave_times) * 1000:.1f} ms max of {args.repeat}   kernel writes: {leave_writes}")
    print(f"    (after the first join: felix-4g-g0 held {sets_after_join.get('felix-4g-g0', 0)} members "
          f"(cold: {sets.get('felix-4g-g0', 0)}), {len(sets_after_join)} ipsets in all)")
    print(f"  one more local endpoint in {extra_group} ({extra.endpoint_id}): {t_local * 1000:7.1f} ms   "
          f"kernel writes: {local_writes}")
    print(f"  resync, nothing changed:      {t_resync * 1000:7.1f} ms   kernel writes: {resync_writes}")
    print(f"  resync after forget (re-read):{t_full:7.2f} s    kernel writes: {full_writes}")
    print(f"  floor (same rules and sets into a fresh namespace, {base['lines']} lines):")
    print(f"    ipset restore {base['ipset restore']:.2f} s + iptables-legacy-restore "
          f"{base['iptables-legacy-restore']:.2f} s + ip6tables-legacy-restore "
          f"{base['ip6tables-legacy-restore']:.2f} s = {floor_total:.2f} s")
    print(f"  cold start / floor:           {cold_total / floor_total:7.2f}x   (target <= 3x)")
    print(f"  peak RSS of the process running the Dataplane: {self_rss:.0f} MB")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=50, help="ACL rules per direction per endpoint")
    parser.add_argument("--profile", action="store_true", help="profile the cold start")
    parser.add_argument("--profile-resync", action="store_true", help="profile the resync after forget")
    parser.add_argument("--culprit", action="store_true",
                        help="give one endpoint an IPv6 address as well and disable IPv6 on its tap, so the "
                             "kernel refuses its route: the cold start includes finding it")
    parser.add_argument("--groups", type=int, nargs="?", const=10, default=None, metavar="N",
                        help="issue 10's shape: the endpoints in N groups (10 if N is not given) with the "
                             "default group rules, sharing one ipset per group and family")
    parser.add_argument("--remote-members", type=int, default=0,
                        help="with --groups: addresses of other hosts' endpoints in each group (%(default)s)")
    parser.add_argument("--ipv4-only", action="store_true", help="with --groups: IPv4 addresses only")
    parser.add_argument("--repeat", type=int, default=5, help="with --groups: joins and leaves timed (%(default)s)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, iptables, ipsets)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(relativeCreated)7.0f ms %(name)s: %(message)s")
    if args.groups is not None:
        return bench_groups(args)
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
            dp = Dataplane(iptables_backend="legacy")  # the backend the floor below is measured on
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
