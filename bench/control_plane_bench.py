"""Control plane benchmark: the real plugin and ACL manager, 100 simulated Felixes (prints figures, asserts nothing).

The cluster (issue 10's shape, by default): ``--hosts`` hosts in felix.txt,
``--endpoints-per-host`` endpoint files on each (10,000 in all), in
``--groups`` groups with the default rules (in from the group, out to the
group and anywhere), so every endpoint's rules name its own group.  Layout
``spread`` (the default) puts endpoint n in group n % groups, so every host
holds endpoints of every group and needs every group's members (the worst
fan-out: a join reaches every host); ``packed`` puts all of a host's
endpoints in group host % groups (a group then lives on hosts/groups hosts).

Real processes, on loopback 127.0.50.0/24 (no test or other benchmark uses
it), with CURVE keys derived from a fresh cluster secret:

* ``calico-plugin ep`` and ``calico-plugin network`` (python -m
  calico.plugin.main) on 127.0.50.1, serving a temporary data directory;
* ``calico-acl-manager`` (python -m calico.acl_manager.main) on 127.0.50.2.

This process plays every Felix, in one thread polling all their sockets.
Host h is 127.0.50.(10 + h) in felix.txt, and its simulated Felix has, as
the real one:

* a REP bound on 127.0.50.(10 + h):9902, a CURVE server with the host's own
  key (felix/<host>), where the plugin pushes ENDPOINTCREATED / UPDATED /
  DESTROYED and HEARTBEAT (decoded with the real decoder, answered SUCCESS);
* a REQ to the plugin's 9901 as felix/<host>, which sends one RESYNCSTATE
  and counts the announcements carrying its resync id (``--resync-hosts``
  limits how many hosts do; default all);
* a SUB to the ACL manager's XPUB 9906 as felix, subscribed to
  ``aclheartbeat``, to each endpoint's topic when the endpoint is created,
  and to ``messages.members_topic(group)`` of each group its endpoints'
  ACLUPDATEs name (``acls_from_wire(...).groups``, as Felix's agent does);
  memberships are kept in the real ``calico.felix.groups.GroupMembers``
  (GROUPMEMBERS replaces, MEMBERSUPDATE applies in sequence; a gap is
  answered by a GETGROUPMEMBERS on one REQ to the ACL manager's 9905 that
  all simulated Felixes share: its answer is published on the group's topic
  anyway).

Simplifications: no dataplane; no keepalive HEARTBEATs or reconnect logic
on the Felix side; the REP sockets admit any CURVE client that knows the
host's public key (no ZAP domain); and membership bodies are read with
``json.loads`` rather than the validating decoder, which parses every
address with netaddr (its cost for one GROUPMEMBERS of a full group is
printed: it is what each real Felix pays per snapshot it receives).

Measured, once everything has converged (every endpoint announced and its
ACLUPDATE received, every needed group's members held):

* the cold start: time to converge, and what the ACL manager delivered;
* one join: a new endpoint file (host 0, group g0) renamed into the data
  directory (written under a hidden name and fsync'ed first; the clock
  starts at the rename): messages and bytes the simulated Felixes received
  on 9906 (heartbeats excluded), by kind, and the time until the joiner's
  host has its ENDPOINTCREATED and its ACLUPDATE, and until the first /
  median / LAST Felix that needs g0 holds the new address;
* a burst of ``--burst`` joins, spread over hosts and groups, renamed in at
  once: the same figures, the time being until the last Felix holds the
  last of the new addresses;
* extra: host 0's Felix opens a fresh subscription (every endpoint and
  group topic, as the agent does after a restart or a quiet subscription):
  what every Felix receives for it.  The ACL manager answers a
  subscription by *publishing* on the topic (once per group for the
  subscriptions it reads in one wake-up), so the GROUPMEMBERS answering one
  host's subscription reaches every host subscribed to that group; the
  cold start, where hosts subscribe in many small waves, shows the same.

Bytes are topic + body as the Felixes received them (before CURVE and ZMTP
framing).  The ACL manager's own log gives what it published (one
publication reaches every subscriber of its topic); CPU seconds of each
process per phase come from /proc.

Run: ``.venv/bin/python bench/control_plane_bench.py [--hosts 100] [--endpoints-per-host 100] [--groups 10]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import zmq

from calico.common import messages, security
from calico.felix.endpoints import acls_from_wire
from calico.felix.groups import GroupMembers, Outcome

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET = "127.0.50"          # this benchmark's loopback range
PLUGIN = f"{NET}.1"
ACL = f"{NET}.2"
FIRST_HOST = 10           # host h is NET.(FIRST_HOST + h)
ENDPOINT_REQUESTS = frozenset({messages.ENDPOINTCREATED, messages.ENDPOINTUPDATED,
                               messages.ENDPOINTDESTROYED, messages.HEARTBEAT})
KINDS = ("ACLUPDATE", "GROUPMEMBERS", "MEMBERSUPDATE")
GROUPMEMBERS_MARK = b'"type":"GROUPMEMBERS"'


def host_name(h: int) -> str:
    return f"host{h:03d}"


def host_ip(h: int) -> str:
    return f"{NET}.{FIRST_HOST + h}"


def nth_ip(n: int) -> str:
    """Distinct addresses in the default pool 192.168.0.0/16 (n from 0)."""
    return f"192.168.{(n + 1) >> 8}.{(n + 1) & 255}"


def nth_mac(n: int) -> str:
    return "02:00:" + ":".join(f"{(n >> s) & 255:02x}" for s in (24, 16, 8, 0))


def endpoint_text(eid: str, ip: str, host: str, group: str, mac: str) -> str:
    return f"[endpoint {eid}]\nid={eid}\nip={ip}\nmac={mac}\nhost={host}\ngroup={group}\n"


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Felix:
    index: int
    name: str
    rep: zmq.Socket
    sub: zmq.Socket
    req: zmq.Socket | None = None
    resync_id: str = ""
    expected: int | None = None
    counted: set[str] = field(default_factory=set)
    endpoints: dict[str, tuple[str, ...]] = field(default_factory=dict)
    acls: dict[str, frozenset[str]] = field(default_factory=dict)
    groups: GroupMembers = field(default_factory=GroupMembers)
    snapshots: int = 0   # GROUPMEMBERS received
    snapshot_at: float = 0.0  # when the last one arrived

    @property
    def resynced(self) -> bool:
        return self.req is None or (self.expected is not None and len(self.counted) >= self.expected)


class Counts:
    """Messages and bytes the simulated Felixes received on 9906, by kind."""

    def __init__(self) -> None:
        self.msgs = {k: 0 for k in KINDS}
        self.bytes = {k: 0 for k in KINDS}
        self.heartbeats = 0
        self.ignored = 0   # not an endpoint of that host / a group it does not need
        self.gaps = 0
        self.endpoint_msgs = 0  # plugin -> Felix requests on 9902 (heartbeats included)

    def add(self, kind: str, size: int) -> None:
        self.msgs[kind] += 1
        self.bytes[kind] += size

    def total(self) -> tuple[int, int]:
        return sum(self.msgs.values()), sum(self.bytes.values())

    def lines(self, indent: str = "    ") -> list[str]:
        out = []
        for kind in KINDS:
            out.append(f"{indent}{kind:<14s} {self.msgs[kind]:>9,d} messages {self.bytes[kind]:>15,d} bytes")
        msgs, size = self.total()
        member_msgs = self.msgs["GROUPMEMBERS"] + self.msgs["MEMBERSUPDATE"]
        member_bytes = self.bytes["GROUPMEMBERS"] + self.bytes["MEMBERSUPDATE"]
        out.append(f"{indent}{'membership':<14s} {member_msgs:>9,d} messages {member_bytes:>15,d} bytes "
                   f"(GROUPMEMBERS + MEMBERSUPDATE)")
        out.append(f"{indent}{'all topics':<14s} {msgs:>9,d} messages {size:>15,d} bytes "
                   f"({size / 1e6:.3f} MB; heartbeats excluded: {self.heartbeats})")
        if self.ignored or self.gaps:
            out.append(f"{indent}of which ignored by the receiving Felix: {self.ignored}; sequence gaps: {self.gaps}")
        return out


class Process:
    def __init__(self, label: str, argv: list[str], log_path: str, work: str):
        self.label = label
        self.log_path = log_path
        self.out = open(os.path.join(work, f"{label}.out"), "wb")
        self.process = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                                        stdout=self.out, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def log(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            with open(self.out.name, encoding="utf-8", errors="replace") as handle:
                raise SystemExit(f"control_plane_bench: {self.label} exited ({self.process.returncode}): "
                                 f"{handle.read()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.out.close()


class Bench:
    def __init__(self, args: argparse.Namespace, work: str, keys: security.ClusterKeys):
        self.args = args
        self.work = work
        self.keys = keys
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.felixes: list[Felix] = []
        self.by_socket: dict[zmq.Socket, tuple[str, Felix | None]] = {}
        self.counts = Counts()
        self.last_message = time.perf_counter()
        # Measurement: address -> {felix index: when it first held it}, per group.
        self.watching: dict[str, set[str]] = {}
        self.held_at: dict[str, dict[int, float]] = {}
        self.created_at: dict[str, float] = {}   # joiner id -> ENDPOINTCREATED at its host
        self.acl_at: dict[str, float] = {}       # joiner id -> its ACLUPDATE at its host
        self.events = 0          # bumped whenever a watched fact arrives
        self._checked_at = -1    # ``events`` when ``joined`` last said no
        self.acl_req: zmq.Socket | None = None
        self.acl_req_busy = False
        self.acl_req_queue: list[str] = []
        self.asked: set[str] = set()

    # --- sockets ------------------------------------------------------------------

    def socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 16 * 1024 * 1024)
        return sock

    def bind_felixes(self) -> None:
        for h in range(self.args.hosts):
            name = host_name(h)
            rep = self.socket(zmq.REP)
            security.curve_server(rep, self.keys, security.felix_host_role(name))
            rep.bind(f"tcp://{host_ip(h)}:{messages.PORT_EP_FELIX}")
            sub = self.socket(zmq.SUB)
            security.curve_client(sub, self.keys, security.ROLE_FELIX, security.ROLE_ACL_MANAGER)
            sub.setsockopt(zmq.SUBSCRIBE, messages.TOPIC_ACL_HEARTBEAT)
            felix = Felix(h, name, rep, sub)
            self.felixes.append(felix)
            for sock, role in ((rep, "rep"), (sub, "sub")):
                self.by_socket[sock] = (role, felix)
                self.poller.register(sock, zmq.POLLIN)

    def connect_felixes(self) -> None:
        for felix in self.felixes:
            felix.sub.connect(f"tcp://{ACL}:{messages.PORT_ACL_PUB}")
            if felix.index < self.args.resync_hosts:
                req = self.socket(zmq.REQ)
                security.curve_client(req, self.keys, security.felix_host_role(felix.name), security.ROLE_PLUGIN_EP)
                req.connect(f"tcp://{PLUGIN}:{messages.PORT_EP_RESYNC}")
                felix.req = req
                felix.resync_id = f"bench-{felix.name}-{os.getpid()}"
                req.send(messages.encode(messages.make(messages.RESYNCSTATE, resync_id=felix.resync_id,
                                                       hostname=felix.name)))
                self.by_socket[req] = ("req", felix)
                self.poller.register(req, zmq.POLLIN)
        self.acl_req = self.socket(zmq.REQ)
        security.curve_client(self.acl_req, self.keys, security.ROLE_FELIX, security.ROLE_ACL_MANAGER)
        self.acl_req.connect(f"tcp://{ACL}:{messages.PORT_ACL_REQ}")
        self.by_socket[self.acl_req] = ("acl_req", None)
        self.poller.register(self.acl_req, zmq.POLLIN)

    def resubscribe(self, felix: Felix) -> None:
        """A fresh SUB socket with every subscription, as Felix's agent opens
        one after a restart or after ConnectionTimeoutMillis of silence."""
        self.poller.unregister(felix.sub)
        del self.by_socket[felix.sub]
        felix.sub.close(linger=0)
        sub = self.socket(zmq.SUB)
        security.curve_client(sub, self.keys, security.ROLE_FELIX, security.ROLE_ACL_MANAGER)
        sub.setsockopt(zmq.SUBSCRIBE, messages.TOPIC_ACL_HEARTBEAT)
        for eid in felix.endpoints:
            sub.setsockopt(zmq.SUBSCRIBE, eid.encode())
        for group in felix.groups.needed():
            sub.setsockopt(zmq.SUBSCRIBE, messages.members_topic(group))
        sub.connect(f"tcp://{ACL}:{messages.PORT_ACL_PUB}")
        felix.sub = sub
        self.by_socket[sub] = ("sub", felix)
        self.poller.register(sub, zmq.POLLIN)

    def close(self) -> None:
        self.context.destroy(linger=0)

    # --- the loop -------------------------------------------------------------------

    def pump(self, until, timeout: float, check_every: float = 0.005) -> bool:
        end = time.perf_counter() + timeout
        next_check = 0.0
        while True:
            now = time.perf_counter()
            if now >= next_check:
                if until():
                    return True
                next_check = now + check_every
            if now >= end:
                return False
            for sock, _ in self.poller.poll(5):
                role, felix = self.by_socket[sock]
                if role == "sub":
                    self.on_sub(felix)
                elif role == "rep":
                    self.on_rep(felix)
                elif role == "req":
                    self.on_req(felix)
                else:
                    self.on_acl_req()

    def quiet(self, quiet_for: float = 0.5, limit: float = 10.0) -> None:
        """Pump until nothing but heartbeats came for ``quiet_for`` seconds."""
        self.pump(lambda: time.perf_counter() - self.last_message >= quiet_for, limit)

    def on_rep(self, felix: Felix) -> None:
        for _ in range(100):
            try:
                raw = felix.rep.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.perf_counter()
            self.counts.endpoint_msgs += 1
            try:
                msg = messages.decode_request(raw, ENDPOINT_REQUESTS)
            except messages.MessageError as exc:
                felix.rep.send(messages.encode(messages.invalid_reply(exc)))
                continue
            kind = msg["type"]
            if kind != messages.HEARTBEAT:
                self.last_message = now
            if kind in (messages.ENDPOINTCREATED, messages.ENDPOINTUPDATED):
                eid = msg["endpoint_id"]
                if eid not in felix.endpoints:
                    felix.sub.setsockopt(zmq.SUBSCRIBE, eid.encode())
                    self.created_at.setdefault(eid, now)
                felix.endpoints[eid] = tuple(a["addr"] for a in msg["addrs"])
                if msg.get("resync_id") == felix.resync_id and felix.resync_id:
                    felix.counted.add(eid)
            elif kind == messages.ENDPOINTDESTROYED:
                eid = msg["endpoint_id"]
                if felix.endpoints.pop(eid, None) is not None:
                    felix.sub.setsockopt(zmq.UNSUBSCRIBE, eid.encode())
                    felix.acls.pop(eid, None)
                    self.unsubscribe(felix, felix.groups.forget(eid))
            felix.rep.send(messages.encode(messages.reply(kind)))

    def on_req(self, felix: Felix) -> None:
        assert felix.req is not None
        try:
            raw = felix.req.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        reply = messages.decode_reply(raw, messages.RESYNCSTATE)
        felix.expected = reply.get("endpoint_count")

    def on_acl_req(self) -> None:
        assert self.acl_req is not None
        try:
            self.acl_req.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        self.acl_req_busy = False
        self.ask_next()

    def ask(self, group: str) -> None:
        if group not in self.asked:
            self.asked.add(group)
            self.acl_req_queue.append(group)
            self.ask_next()

    def ask_next(self) -> None:
        if self.acl_req_busy or not self.acl_req_queue or self.acl_req is None:
            return
        group = self.acl_req_queue.pop(0)
        self.acl_req.send(messages.encode(messages.make(messages.GETGROUPMEMBERS, group=group)))
        self.acl_req_busy = True

    def unsubscribe(self, felix: Felix, groups: list[str]) -> None:
        for group in groups:
            felix.sub.setsockopt(zmq.UNSUBSCRIBE, messages.members_topic(group))

    def on_sub(self, felix: Felix) -> None:
        for _ in range(1000):
            try:
                topic, body = felix.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue
            now = time.perf_counter()
            if topic == messages.TOPIC_ACL_HEARTBEAT:
                self.counts.heartbeats += 1
                continue
            self.last_message = now
            group = messages.group_of_topic(topic)
            if group is None:
                self.counts.add("ACLUPDATE", len(topic) + len(body))
                self.on_aclupdate(felix, topic.decode("ascii", "replace"), body, now)
            else:
                kind = "GROUPMEMBERS" if GROUPMEMBERS_MARK in body else "MEMBERSUPDATE"
                self.counts.add(kind, len(topic) + len(body))
                self.on_members(felix, group, body, now)

    def on_aclupdate(self, felix: Felix, eid: str, body: bytes, now: float) -> None:
        if eid not in felix.endpoints:
            self.counts.ignored += 1
            return
        msg = messages.decode_request(body, {messages.ACLUPDATE})
        acls, _problems = acls_from_wire(msg["acls"])
        felix.acls[eid] = acls.groups
        if eid in self.created_at and eid not in self.acl_at:
            self.acl_at[eid] = now
            self.events += 1
        added, dropped = felix.groups.need(eid, acls.groups)
        for group in added:
            felix.sub.setsockopt(zmq.SUBSCRIBE, messages.members_topic(group))
        self.unsubscribe(felix, dropped)
        for group in added:  # a group newly needed may already hold a watched address
            self.note_held(felix, group, now)

    def on_members(self, felix: Felix, group: str, body: bytes, now: float) -> None:
        if not felix.groups.is_needed(group):
            self.counts.ignored += 1
            return
        msg = json.loads(body)
        if msg.get("group") != group:
            self.counts.ignored += 1
            return
        if msg["type"] == messages.GROUPMEMBERS:
            felix.snapshots += 1
            felix.snapshot_at = now
            outcome = felix.groups.snapshot(msg)
            self.asked.discard(group)
        else:
            outcome = felix.groups.delta(msg)
        if outcome is Outcome.GAP:
            self.counts.gaps += 1
            self.ask(group)
        elif outcome is Outcome.CHANGED:
            self.note_held(felix, group, now)

    def note_held(self, felix: Felix, group: str, now: float) -> None:
        watched = self.watching.get(group)
        if not watched:
            return
        held = felix.groups.held(group)
        if held is None:
            return
        for addr in watched:
            if addr in held.addrs and felix.index not in self.held_at[addr]:
                self.held_at[addr][felix.index] = now
                self.events += 1

    # --- conditions -----------------------------------------------------------------

    def converged(self, members: dict[str, int]) -> bool:
        expected = self.args.endpoints_per_host
        for felix in self.felixes:
            if len(felix.endpoints) != expected or len(felix.acls) != expected or not felix.resynced:
                return False
            if felix.groups.unknown():
                return False
            for group in felix.groups.needed():
                held = felix.groups.held(group)
                if held is None or len(held.addrs) != members[group]:
                    return False
        return True

    def progress(self, members: dict[str, int]) -> str:
        eps = sum(len(f.endpoints) for f in self.felixes)
        acls = sum(len(f.acls) for f in self.felixes)
        resynced = sum(f.resynced for f in self.felixes)
        full = sum(1 for f in self.felixes for g in f.groups.needed()
                   if (f.groups.held(g) is not None and len(f.groups.held(g).addrs) == members[g]))
        needed = sum(len(f.groups.needed()) for f in self.felixes)
        return (f"{eps} endpoints announced, {acls} ACLs, {resynced}/{len(self.felixes)} resyncs done, "
                f"{full}/{needed} (host, group) memberships complete")

    def needers(self, group: str) -> list[Felix]:
        return [f for f in self.felixes if f.groups.is_needed(group)]

    def joined(self, joins: list[tuple[str, str, str, int]]) -> bool:
        """Every joiner's host has its ACLs, and every Felix needing its group holds its address."""
        if self.events == self._checked_at:
            return False  # nothing new since the last no
        self._checked_at = self.events
        needers = {group: self.needers(group) for _e, _a, group, _h in joins}
        for eid, addr, group, _h in joins:
            if eid not in self.acl_at:
                return False
            held = self.held_at[addr]
            if len(held) < len(needers[group]) or any(f.index not in held for f in needers[group]):
                return False
        return True

    def watch(self, joins: list[tuple[str, str, str, int]]) -> None:
        self._checked_at = -1
        self.watching.clear()
        self.held_at.clear()
        for _eid, addr, group, _h in joins:
            self.watching.setdefault(group, set()).add(addr)
            self.held_at[addr] = {}


def spread(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"first {ms[0]:.1f} ms, median {statistics.median(ms):.1f} ms, last {ms[-1]:.1f} ms"


def published_in_log(text: str) -> tuple[int, int, int]:
    """Batches, ACLUPDATEs and membership messages the ACL manager's log says it published."""
    batches = acls = members = 0
    for match in re.finditer(r"published (\d+) ACLUPDATEs and (\d+) membership changes", text):
        batches += 1
        acls += int(match.group(1))
        members += int(match.group(2))
    return batches, acls, members


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100, help="simulated Felix hosts (%(default)s; at most 240)")
    parser.add_argument("--endpoints-per-host", type=int, default=100, help="(%(default)s)")
    parser.add_argument("--groups", type=int, default=10, help="(%(default)s)")
    parser.add_argument("--layout", choices=("spread", "packed"), default="spread",
                        help="spread: every host holds endpoints of every group; packed: a host's endpoints "
                             "are all in one group (%(default)s)")
    parser.add_argument("--burst", type=int, default=100, help="joins in the burst (%(default)s)")
    parser.add_argument("--resync-hosts", type=int, default=None,
                        help="how many hosts send a RESYNCSTATE (default: all)")
    parser.add_argument("--converge-timeout", type=float, default=120.0, help="seconds (%(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    if not 1 <= args.hosts <= 240:
        parser.error("--hosts must be 1-240 (one loopback /24)")
    total = args.hosts * args.endpoints_per_host
    if total + args.burst + 2 >= 65534:
        parser.error("too many endpoints for the 192.168.0.0/16 pool")
    args.resync_hosts = args.hosts if args.resync_hosts is None else min(args.resync_hosts, args.hosts)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    work = tempfile.mkdtemp(prefix="control-plane-bench-")
    data_dir = os.path.join(work, "data")
    os.mkdir(data_dir)
    secret_file = os.path.join(work, "cluster.secret")
    security.write_secret(secret_file)
    keys = security.ClusterKeys(security.read_secret(secret_file))

    def group_of(h: int, k: int) -> int:
        return (h * args.endpoints_per_host + k) % args.groups if args.layout == "spread" else h % args.groups

    with open(os.path.join(data_dir, "felix.txt"), "w") as handle:
        handle.write("".join(f"[felix {host_name(h)}]\nip={host_ip(h)}\nhost={host_name(h)}\n\n"
                             for h in range(args.hosts)))
    members: dict[str, int] = {f"g{g}": 0 for g in range(args.groups)}
    for h in range(args.hosts):
        for k in range(args.endpoints_per_host):
            n = h * args.endpoints_per_host + k
            eid, group = f"ep{n:06d}", f"g{group_of(h, k)}"
            members[group] += 1
            with open(os.path.join(data_dir, f"{eid}.txt"), "w") as handle:
                handle.write(endpoint_text(eid, nth_ip(n), host_name(h), group, nth_mac(n)))
    members = {g: n for g, n in members.items() if n}
    acl_cfg = os.path.join(work, "acl_manager.cfg")
    with open(acl_cfg, "w") as handle:
        handle.write(f"[global]\nPluginAddress = {PLUGIN}\nLocalAddress = {ACL}\n"
                     f"[log]\nLogSeverityScreen = NONE\n[security]\nClusterSecretFile = {secret_file}\n")
    print(f"control_plane_bench: {args.hosts} hosts x {args.endpoints_per_host} endpoints = {total} endpoint files "
          f"in {len(members)} groups ({args.layout}: "
          + ", ".join(f"{g} {n}" for g, n in list(members.items())[:3]) + (", ..." if len(members) > 3 else "")
          + f"); {args.resync_hosts} hosts resync; loopback {NET}.0/24; CURVE on; work dir {work}")

    bench = Bench(args, work, keys)
    procs: dict[str, Process] = {}
    try:
        bench.bind_felixes()
        started = time.perf_counter()
        for api in ("ep", "network"):
            procs[f"plugin-{api}"] = Process(
                f"plugin-{api}", [sys.executable, "-m", "calico.plugin.main", api, "--data-dir", data_dir,
                                  "--bind", PLUGIN, "--secret-file", secret_file,
                                  "--log-file", os.path.join(work, f"plugin-{api}.log")],
                os.path.join(work, f"plugin-{api}.log"), work)
        procs["acl-manager"] = Process(
            "acl-manager", [sys.executable, "-m", "calico.acl_manager.main", "--config-file", acl_cfg,
                            "--log-file", os.path.join(work, "acl_manager.log")],
            os.path.join(work, "acl_manager.log"), work)
        # The REPs are bound already (the plugin connects to them as soon as
        # it has read felix.txt); the Felixes' own connections start once the
        # plugin serves, as a Felix started with its host would retry until then.
        deadline = time.monotonic() + 120
        while "serving on" not in procs["plugin-ep"].log():
            for proc in procs.values():
                proc.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("control_plane_bench: the plugin did not serve within 120 s")
            bench.pump(lambda: False, 0.05)
        serving = time.perf_counter() - started
        cpu0 = {label: cpu_seconds(p.pid) for label, p in procs.items()}
        bench.connect_felixes()

        converged_ok = bench.pump(lambda: bench.converged(members), args.converge_timeout, check_every=0.05)
        converge = time.perf_counter() - started
        if not converged_ok:
            print(f"  cold start: NOT converged after {args.converge_timeout:g} s: {bench.progress(members)}")
            for proc in procs.values():
                proc.check_alive()
            return 1
        bench.quiet(1.0, 30.0)
        cold = bench.counts
        cpu1 = {label: cpu_seconds(p.pid) for label, p in procs.items()}
        print(f"  cold start: plugin serving after {serving:.2f} s; converged after {converge:.2f} s "
              f"({bench.progress(members)})")
        print("  cold start: delivered by the ACL manager to all simulated Felixes (9906):")
        for line in cold.lines():
            print(line)
        print(f"    plugin -> Felix requests on 9902: {cold.endpoint_msgs:,d}")
        print("    CPU from the plugin serving to converged: " +
              ", ".join(f"{label} {cpu1[label] - cpu0[label]:.2f} s" for label in procs))

        # A real Felix decodes each membership message with the validating decoder.
        biggest = max(members, key=members.get)
        sample = messages.encode(messages.make(
            messages.GROUPMEMBERS, group=biggest, epoch="0123456789abcdef", seq=1,
            addrs=[nth_ip(n) for n in range(members[biggest])]))
        decode_ms = []
        for _ in range(5):
            t0 = time.perf_counter()
            messages.decode_request(sample, {messages.GROUPMEMBERS})
            decode_ms.append((time.perf_counter() - t0) * 1000)
        per_host = cold.msgs["GROUPMEMBERS"] / len(bench.felixes)
        print(f"    (a real Felix's decoder takes {min(decode_ms):.1f} ms (best of 5) for one GROUPMEMBERS of "
              f"{members[biggest]} addresses, {len(sample):,d} bytes; {per_host:.0f} GROUPMEMBERS per host "
              f"here = {per_host * min(decode_ms) / 1000:.1f} s of decoding per real Felix)")

        next_n = total
        phases = []
        for label, count in (("one join", 1), (f"burst of {args.burst} joins", args.burst)):
            joins = []
            for j in range(count):
                h = 0 if count == 1 else (j * args.hosts) // count
                g = 0 if count == 1 else j % len(members)
                group = sorted(members, key=lambda name: int(name[1:]))[g]
                eid = f"join{next_n:06d}"
                joins.append((eid, nth_ip(next_n), group, h, next_n))
                next_n += 1
            for eid, ip, group, h, n in joins:
                with open(os.path.join(data_dir, f".{eid}.tmp"), "w", encoding="utf-8") as handle:
                    handle.write(endpoint_text(eid, ip, host_name(h), group, nth_mac(n)))
                    handle.flush()
                    os.fsync(handle.fileno())
            watched = [(eid, ip, group, h) for eid, ip, group, h, _n in joins]
            bench.watch(watched)
            bench.counts = Counts()
            log_at = procs["acl-manager"].log_size()
            cpu_before = {lbl: cpu_seconds(p.pid) for lbl, p in procs.items()}
            start = time.perf_counter()
            for eid, *_ in joins:
                os.rename(os.path.join(data_dir, f".{eid}.tmp"), os.path.join(data_dir, f"{eid}.txt"))
            ok = bench.pump(lambda: bench.joined(watched), 60.0, check_every=0.001)
            bench.quiet(0.5, 10.0)
            cpu_after = {lbl: cpu_seconds(p.pid) for lbl, p in procs.items()}
            counts = bench.counts
            batches, pub_acls, pub_members = published_in_log(procs["acl-manager"].log(log_at))
            print(f"  {label} ({'host000, group g0' if count == 1 else 'over hosts and groups'}):")
            if not ok:
                missing = [eid for eid, *_ in watched if eid not in bench.acl_at]
                print(f"    NOT complete after 60 s (joiners without ACLs: {len(missing)})")
            created = [(bench.created_at[eid] - start) * 1000 for eid, *_ in watched if eid in bench.created_at]
            acl = [(bench.acl_at[eid] - start) * 1000 for eid, *_ in watched if eid in bench.acl_at]
            held = [(t - start) * 1000 for _e, addr, _g, _h in watched for t in bench.held_at[addr].values()]
            needers = {group: len(bench.needers(group)) for _e, _a, group, _h in watched}
            if created:
                print(f"    ENDPOINTCREATED at the joiner's host:      {spread(created)}")
            if acl:
                print(f"    its ACLUPDATE at the joiner's host:        {spread(acl)}")
            if held:
                print(f"    new address held by a Felix needing group: {spread(held)} "
                      f"({len(held)} (host, address) pairs; {sum(needers[g] for *_x, g, _h in watched)} expected)")
            if ok:
                last = max([bench.acl_at[eid] for eid, *_ in watched] +
                           [t for _e, addr, _g, _h in watched for t in bench.held_at[addr].values()])
                print(f"    rename to the LAST Felix holding the {'address' if count == 1 else 'last address'} "
                      f"(and every joiner's ACLs at its host): {(last - start) * 1000:.1f} ms")
            print(f"    delivered on 9906 (to {len(bench.felixes)} simulated Felixes):")
            for line in counts.lines("      "):
                print(line)
            print(f"    ACL manager's log: {batches} batch(es), published {pub_acls} ACLUPDATEs and "
                  f"{pub_members} membership messages (each reaches every subscriber of its topic)")
            print("    CPU: " + ", ".join(f"{lbl} {cpu_after[lbl] - cpu_before[lbl]:.2f} s" for lbl in procs))
            phases.append((label, counts))
        # Extra: what one Felix's fresh subscription costs everybody (a restart,
        # or the agent reopening a subscription that went quiet).
        felix = bench.felixes[0]
        bench.counts = Counts()
        snapshots_before = {f.index: f.snapshots for f in bench.felixes}
        wanted = len(felix.groups.needed())
        log_at = procs["acl-manager"].log_size()
        start = time.perf_counter()
        bench.resubscribe(felix)
        ok = bench.pump(lambda: felix.snapshots - snapshots_before[0] >= wanted
                        and len(felix.acls) >= len(felix.endpoints), 30.0)
        done = felix.snapshot_at
        bench.quiet(0.5, 10.0)
        resub = bench.counts
        others = sum(f.snapshots - snapshots_before[f.index] for f in bench.felixes[1:])
        print(f"  extra: {felix.name} opens a fresh subscription ({len(felix.endpoints)} endpoint topics, "
              f"{wanted} group topics), as after a Felix restart:")
        print(f"    its {wanted} GROUPMEMBERS {'received' if ok else 'NOT all received'} after "
              f"{(done - start) * 1000:.1f} ms; the other {len(bench.felixes) - 1} Felixes received {others} "
              f"GROUPMEMBERS meanwhile (each subscription's answer is published on the group's topic)")
        for line in resub.lines("      "):
            print(line)
        phases.append(("one re-subscription", resub))

        def member(counts: Counts) -> tuple[int, int]:
            return (counts.msgs["GROUPMEMBERS"] + counts.msgs["MEMBERSUPDATE"],
                    counts.bytes["GROUPMEMBERS"] + counts.bytes["MEMBERSUPDATE"])

        print("  totals delivered on 9906 (all simulated Felixes, heartbeats excluded), by topic kind:")
        print(f"    {'':<24s} {'ACLUPDATE msgs':>14s} {'bytes':>13s} {'membership msgs':>16s} {'bytes':>15s}")
        rows = [("cold start", cold)] + phases
        acl_sum, acl_bytes, mem_sum, mem_bytes = 0, 0, 0, 0
        for label, counts in rows:
            mm, mb = member(counts)
            print(f"    {label:<24s} {counts.msgs['ACLUPDATE']:>14,d} {counts.bytes['ACLUPDATE']:>13,d} "
                  f"{mm:>16,d} {mb:>15,d}")
        for label, upto in (("before the joins", rows[:1]), ("after the joins", rows[:3]), ("after all", rows)):
            acl_sum = sum(c.msgs["ACLUPDATE"] for _, c in upto)
            acl_bytes = sum(c.bytes["ACLUPDATE"] for _, c in upto)
            mem_sum = sum(member(c)[0] for _, c in upto)
            mem_bytes = sum(member(c)[1] for _, c in upto)
            print(f"    {'total, ' + label:<24s} {acl_sum:>14,d} {acl_bytes:>13,d} {mem_sum:>16,d} {mem_bytes:>15,d}")
    finally:
        for proc in procs.values():
            proc.stop()
        bench.close()
        if args.keep:
            print(f"  logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
