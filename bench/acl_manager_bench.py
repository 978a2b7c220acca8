"""ACL manager benchmark: 10,000 endpoints in 100 groups (prints figures, asserts nothing).

The network: endpoint i is in group g(i % 100); every tenth endpoint is also
in the next group; every fifth has an IPv6 address too.  Groups g00-g69 have
the default rules (in from the group, out to the group and anywhere); g70-g99
have rules with ports, ranges, CIDRs and references to other groups.

1. The pure core (``calico.acl_manager``), no sockets:
   - parse the 100 GROUPUPDATE messages;
   - compute every endpoint's ACLs from scratch (``RuleProcessor.load``);
   - the same, one group at a time, and as one batch (the process applies
     whatever one wake-up reads as one batch);
   - serialise every ACLUPDATE;
   - one endpoint joins one group: time, endpoints reconsidered, ACLUPDATEs
     and membership messages;
   - one endpoint joins a single group of 1,000 and of 4,000 members (the
     seed's shape: everyone in one group): every byte the ACL manager
     publishes for it, on all topics (``--join-sizes``).
2. The real ``calico-acl-manager`` process over ZeroMQ on loopback (skip with
   ``--no-process``): this script plays the plugin and a Felix subscribed to
   every topic, and times the burst to the 10,000th ACLUPDATE and a join to
   its last ACLUPDATE.

Run: ``.venv/bin/python bench/acl_manager_bench.py``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from calico.acl_manager.memberships import Memberships
from calico.acl_manager.network_store import GroupSpec, parse_group_update
from calico.acl_manager.publisher import aclupdate_body
from calico.acl_manager.rule_processor import RuleProcessor
from calico.common import messages, security
from calico.common.datafiles import default_group_rules
from calico.common.rules import parse_rule_list

GROUPS = 100
ENDPOINTS = 10_000
PLUGIN_HOST = "127.0.2.11"   # within the ACL manager tests' 127.0.2.0/24, apart from the tests
ACL_HOST = "127.0.2.12"


def endpoint_ip(i: int) -> list[str]:
    ips = [f"10.{1 + i // 65536}.{(i // 256) % 256}.{i % 256}"]
    if i % 5 == 0:
        ips.append(f"fd00::{i:x}")
    return ips


def group_rules(g: int) -> dict:
    name = f"g{g:02d}"
    if g < 70:
        return default_group_rules(name).to_wire()
    inbound = (f"group:{name} tcp 80; group:g{(g + 1) % GROUPS:02d} tcp 8000-8080; 10.0.0.0/8 tcp 22; "
               f"group:g{g - 70:02d} icmp 8; 2001:db8::/32 udp 53")
    outbound = f"group:{name}; group:g{(g + 7) % GROUPS:02d} tcp 443; 0.0.0.0/0 udp 53; ::/0"
    return {"inbound": [r.to_wire() for r in parse_rule_list(inbound)],
            "outbound": [r.to_wire() for r in parse_rule_list(outbound)],
            "inbound_default": "deny", "outbound_default": "deny"}


def network(extra: dict[str, dict[str, list[str]]] | None = None) -> list[dict]:
    members: dict[int, dict[str, list[str]]] = {g: {} for g in range(GROUPS)}
    for i in range(ENDPOINTS):
        members[i % GROUPS][f"ep{i:05d}"] = endpoint_ip(i)
        if i % 10 == 0:
            members[(i + 1) % GROUPS][f"ep{i:05d}"] = endpoint_ip(i)
    msgs = []
    for g in range(GROUPS):
        group_members = dict(members[g], **(extra or {}).get(f"g{g:02d}", {}))
        msgs.append(messages.make(messages.GROUPUPDATE, group=f"g{g:02d}", members=group_members,
                                  rules=group_rules(g)))
    return msgs


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) * 1000


def bench_core() -> dict:
    raw = [messages.encode(m) for m in network()]
    decoded, ms_decode = timed(lambda: [messages.decode_request(r, {messages.GROUPUPDATE}) for r in raw])
    specs, ms_parse = timed(lambda: [parse_group_update(m) for m in decoded])
    print(f"decode 100 GROUPUPDATEs: {ms_decode:.1f} ms; parse rules: {ms_parse:.1f} ms")

    proc = RuleProcessor()
    acls, ms_load = timed(lambda: proc.load(specs))
    rules = sum(a.rule_count for a in acls.values())
    print(f"from scratch (load): {len(acls)} endpoints, {rules} rules in all, {ms_load:.1f} ms")

    burst = RuleProcessor()
    published, ms_burst = timed(lambda: sum(len(burst.set_group(s.name, s)) for s in specs))
    print(f"from scratch (100 GROUPUPDATEs one by one): {ms_burst:.1f} ms, {published} ACLUPDATEs "
          f"(some endpoints several times as groups they reference arrive)")
    assert burst.acls == proc.acls
    batched = RuleProcessor()
    published, ms_batch = timed(lambda: len(batched.update({s.name: s for s in specs})))
    print(f"from scratch (the 100 GROUPUPDATEs as one batch, as the process reads a burst): {ms_batch:.1f} ms, "
          f"{published} ACLUPDATEs")

    now = messages.now_ms()
    _, ms_wire = timed(lambda: [aclupdate_body(a, now) for a in acls.values()])
    size = sum(len(aclupdate_body(a, now)) for a in acls.values())
    print(f"serialise {len(acls)} ACLUPDATEs: {ms_wire:.1f} ms ({size / 1e6:.1f} MB; JSON shared per group)")

    results = {}
    for label, group in (("g05 (default rules)", 5), ("g71 (port rules; named by g70's rules)", 71)):
        proc2 = RuleProcessor()
        proc2.load(specs)
        spec = specs[group]
        joined = dict(spec.members, newcomer=("10.200.0.1",))
        new_spec = type(spec)(spec.name, joined, spec.inbound, spec.outbound)
        changes, ms_join = timed(lambda: proc2.set_group(spec.name, new_spec))
        _, ms_send = timed(lambda: [aclupdate_body(a, now) for a in changes.values()])
        print(f"one endpoint joins {label}: {ms_join:.2f} ms (+{ms_send:.2f} ms to serialise), "
              f"{proc2.recomputed} endpoints reconsidered, {len(changes)} ACLUPDATEs")
        results[group] = len(changes)
    return results


def published_by_join(size: int) -> tuple[int, int, int, float]:
    """One endpoint joins a group of ``size`` members (default rules, one
    group for everyone): ACLUPDATEs, membership messages and bytes the ACL
    manager publishes for it, and the time to compute and serialise them."""
    members = {f"ep{i:05d}": tuple(endpoint_ip(i)) for i in range(size)}
    rules = default_group_rules("everyone")
    spec = GroupSpec("everyone", members, rules.inbound, rules.outbound)
    proc = RuleProcessor()
    memberships = Memberships()
    proc.update({"everyone": spec})
    memberships.update(memberships.changes_for({"everyone": spec}, proc.groups, proc.referenced))
    joined = GroupSpec("everyone", dict(members, newcomer=("10.200.0.1",)), rules.inbound, rules.outbound)
    start = time.perf_counter()
    batch = {"everyone": joined}
    changes = proc.update(batch)
    membership = memberships.update(memberships.changes_for(batch, proc.groups, proc.referenced))
    now = messages.now_ms()
    size_bytes = sum(len(ep.encode()) + len(aclupdate_body(a, now)) for ep, a in changes.items())
    size_bytes += sum(len(messages.members_topic(g)) + len(messages.encode(m)) for g, m in membership)
    return len(changes), len(membership), size_bytes, (time.perf_counter() - start) * 1000


def bench_join_sizes(sizes: list[int]) -> None:
    for size in sizes:
        acls, member_msgs, size_bytes, ms = published_by_join(size)
        print(f"one endpoint joins a group of {size}: {acls} ACLUPDATE(s) + {member_msgs} membership message(s), "
              f"{size_bytes:,} bytes published in all, {ms:.2f} ms to compute and serialise")


def bench_process(expected_join: int) -> None:
    import zmq
    tmp = tempfile.mkdtemp(prefix="acl-bench-")
    secret_file = os.path.join(tmp, "cluster.secret")
    security.write_secret(secret_file)
    keys = security.ClusterKeys(security.read_secret(secret_file))
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    pub = context.socket(zmq.PUB)
    felix = context.socket(zmq.SUB)
    for sock in (rep, pub, felix):
        sock.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    felix.setsockopt(zmq.RCVHWM, 0)
    # As the real peers: CURVE with keys derived from the cluster secret.
    for sock in (rep, pub):
        security.curve_server(sock, keys, security.ROLE_PLUGIN_NETWORK)
    security.curve_client(felix, keys, security.ROLE_FELIX, security.ROLE_ACL_MANAGER)
    rep.bind(f"tcp://{PLUGIN_HOST}:{messages.PORT_NET_REQ}")
    pub.bind(f"tcp://{PLUGIN_HOST}:{messages.PORT_NET_PUB}")
    config = os.path.join(tmp, "acl_manager.cfg")
    with open(config, "w") as handle:
        handle.write(f"[global]\nPluginAddress = {PLUGIN_HOST}\nLocalAddress = {ACL_HOST}\n"
                     f"[log]\nLogSeverityScreen = NONE\n[security]\nClusterSecretFile = {secret_file}\n")
    proc = subprocess.Popen([sys.executable, "-m", "calico.acl_manager.main", "--config-file", config,
                             "--log-file", os.path.join(tmp, "acl_manager.log")])
    try:
        felix.setsockopt(zmq.SUBSCRIBE, b"")
        felix.connect(f"tcp://{ACL_HOST}:{messages.PORT_ACL_PUB}")
        poller = zmq.Poller()
        poller.register(rep, zmq.POLLIN)
        poller.register(felix, zmq.POLLIN)
        got_heartbeat = False
        getgroups = 0
        received: dict[str, int] = {}

        next_heartbeat = 0.0

        def pump(until, deadline=60.0):
            nonlocal got_heartbeat, getgroups, next_heartbeat
            end = time.monotonic() + deadline
            while not until() and time.monotonic() < end:
                # As the real plugin does: a burst that takes longer than the
                # manager's timeout must not look like a plugin gone away.
                if time.monotonic() >= next_heartbeat:
                    pub.send_multipart([messages.TOPIC_NETWORK_HEARTBEAT,
                                        messages.encode(messages.make(messages.HEARTBEAT))])
                    next_heartbeat = time.monotonic() + 1.0
                for sock, _ in poller.poll(100):
                    if sock is rep:
                        msg = json.loads(rep.recv())
                        rep.send(messages.encode(messages.reply(msg["type"])))
                        getgroups += msg["type"] == messages.GETGROUPS
                    else:
                        topic, _body = felix.recv_multipart()
                        if topic == messages.TOPIC_ACL_HEARTBEAT:
                            got_heartbeat = True
                        else:
                            received[topic.decode()] = received.get(topic.decode(), 0) + 1
            return until()

        if not pump(lambda: got_heartbeat and getgroups):
            print("process: no heartbeat/GETGROUPS within 60 s; skipped")
            return
        raw = [messages.encode(m) for m in network()]
        start = time.perf_counter()
        for body in raw:
            pub.send_multipart([messages.TOPIC_GROUPS, body])
        pump(lambda: len(received) >= ENDPOINTS)
        ms = (time.perf_counter() - start) * 1000
        print(f"process: burst of 100 GROUPUPDATEs -> ACLUPDATEs for {len(received)} endpoints "
              f"({sum(received.values())} messages) in {ms:.0f} ms")
        pump(lambda: False, deadline=1.0)  # let stragglers arrive
        received.clear()
        join = network({"g05": {"newcomer": ["10.200.0.1"]}})[5]
        start = time.perf_counter()
        pub.send_multipart([messages.TOPIC_GROUPS, messages.encode(join)])
        pump(lambda: sum(received.values()) >= expected_join)
        ms = (time.perf_counter() - start) * 1000
        pump(lambda: False, deadline=1.0)
        print(f"process: one endpoint joins g05 -> {sum(received.values())} ACLUPDATEs, last after {ms:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(10)
        context.destroy(linger=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-process", action="store_true", help="only the pure core, no ZeroMQ process")
    parser.add_argument("--join-sizes", default="1000,4000", help="single-group sizes to join (%(default)s)")
    args = parser.parse_args()
    bench_join_sizes([int(n) for n in args.join_sizes.split(",") if n])
    print(f"{ENDPOINTS} endpoints in {GROUPS} groups (every tenth in two groups, every fifth dual-stack)")
    joins = bench_core()
    if not args.no_process:
        bench_process(joins[5])


if __name__ == "__main__":
    main()
