"""The attacker's tools for the security suite, and the yardsticks of "nothing changed".

``intruder(layout)``: a network namespace plugged into the lab's fabric
bridge with an address no host has (``INTRUDER_IP``): a stranger on the
hosts' network.  It knows where the containers are (a route to the pool
via host 1), as anyone on that network could.  It is removed on leaving,
also after a failure (and, its name having the lab's prefix, by ``down``).

``Dialer(ns)``: ZeroMQ clients whose connections start inside ``ns``:
the context's I/O threads, which open the TCP connections, are started
while the calling thread is in ``ns`` (namespaces are per thread, and
threads inherit them).  ``Dialer.attempt`` makes one client, with CURVE
keys from tests/testkeys.py (``keys=None``: plain ZeroMQ,
``testkeys.OTHER_KEYS``: a stranger's, who knows the server's public
key, since that is no secret), queues its payload at once (``sent``: a
handshake refused first leaves nothing to queue it on) and watches the
socket's events: ``Attempt.outcome`` tells what a user of that client
would see (refused by the server's ZAP handler, the handshake ended by the
server, admitted, or no connection at all).

``tcp_outcome``: what a plain TCP connect to a port meets, as ``nc``
would show it.  ``rule_packets``: the packet counter of iptables rules in a
host (what ``iptables-nft -L -v`` or ``iptables-legacy -L -v`` shows, as
Felix's backend is), the evidence that a packet
that never arrived was dropped by the rule meant to drop it.

``lab_snapshot``: every host's routes, iptables (filter), ipsets and
permanent neighbour entries, normalised; "nothing changed" compares two.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

import testkeys
from calico import netns
from calico.common.security import ClusterKeys
from calico.common.iptables_backends import felix_table
from calico.lab import fabric, state
from calico.lab.layout import Layout, host_ip
from e2e_lab import kernel_snapshot

INTRUDER_IP = "10.240.0.250"  # hosts are 10.240.0.(10+i), i <= 200
INTRUDER_PORT = "intr0"       # its veth's end in the fabric namespace

# What an attempt met (Attempt.outcome, tcp_outcome).
ZAP_REFUSED = "refused by ZAP (400)"
HANDSHAKE_ENDED = "handshake ended by the server"
ADMITTED = "admitted"
NO_CONNECTION = "no TCP connection"
DROPPED = "no answer (dropped)"
REFUSED = "connection refused"
CLOSED = "accepted, closed without a word"
GREETING = "accepted, ZeroMQ greeting"


@contextlib.contextmanager
def intruder(layout: Layout, pool: str) -> Iterator[str]:
    ns = f"{layout.prefix}intruder"
    assert INTRUDER_IP not in {host_ip(i) for i in range(1, state.load(layout).hosts + 1)}
    netns.remove(ns)
    try:
        netns.create(ns)
        netns.run(layout.fabric_ns, ["ip", "link", "add", INTRUDER_PORT, "type", "veth", "peer", "name", "eth0",
                                     "netns", ns])
        netns.run(layout.fabric_ns, ["ip", "link", "set", INTRUDER_PORT, "master", fabric.bridge(0), "up"])
        netns.run(ns, ["ip", "addr", "add", f"{INTRUDER_IP}/24", "dev", "eth0"])
        netns.run(ns, ["ip", "link", "set", "eth0", "up"])
        netns.run(ns, ["ip", "route", "add", pool, "via", host_ip(1)])
        yield ns
    finally:
        if netns.exists(layout.fabric_ns):
            netns.run(layout.fabric_ns, ["ip", "link", "del", INTRUDER_PORT], check=False)
        netns.remove(ns)


# --- ZeroMQ -------------------------------------------------------------------------------

class Attempt:
    """One ZeroMQ client that connects and sends (or subscribes) at once."""

    def __init__(self, context: zmq.Context, label: str, kind: int, address: str, payload: bytes | None,
                 keys: ClusterKeys | None, role: str | None, host: str | None):
        self.label = label
        self.sock = context.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        testkeys.as_client(self.sock, address, role, host, keys)
        if kind == zmq.SUB:
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.monitor = self.sock.get_monitor_socket()
        self.events: list[tuple[int, int]] = []
        self.sock.connect(address)
        self.sent = False
        if payload is not None:
            # Queued until a handshake succeeds.  On a fast network the
            # server may have refused the handshake already (and ZeroMQ
            # then drops the connection's queue, and after a ZAP refusal
            # does not try again): the message cannot even be queued,
            # which is the same outcome, sooner.
            try:
                self.sock.send(payload, zmq.NOBLOCK)
                self.sent = True
            except zmq.Again:
                pass

    def _drain(self) -> None:
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            self.events.append((event["event"], event["value"]))

    def seen(self, event: int) -> bool:
        self._drain()
        return any(e == event for e, _ in self.events)

    def outcome(self) -> str | None:
        """What the client has met so far; None while nothing is decided."""
        self._drain()
        kinds = {e for e, _ in self.events}
        if zmq.EVENT_HANDSHAKE_SUCCEEDED in kinds:
            return ADMITTED
        if (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400) in self.events:
            return ZAP_REFUSED
        if kinds & {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL}:
            return HANDSHAKE_ENDED
        return None

    def connected(self) -> bool:
        return self.seen(zmq.EVENT_CONNECTED)

    def received(self, timeout: float = 0.0) -> list[bytes] | None:
        """The frames of a reply or publication, if one has come."""
        if self.sock.poll(int(timeout * 1000)):
            return self.sock.recv_multipart()
        return None

    def close(self) -> None:
        if not self.sock.closed:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.sock.close(linger=0)
        self.monitor.close(linger=0)


class Dialer:
    """ZeroMQ clients connecting from inside one namespace."""

    def __init__(self, ns: str):
        self.ns = ns
        with netns.entered(ns):
            self.context = zmq.Context()
            self.context.socket(zmq.PAIR).close()  # starts the I/O threads here
        self.attempts: list[Attempt] = []

    def attempt(self, label: str, kind: int, address: str, payload: bytes | None = None,
                keys: ClusterKeys | None = testkeys.KEYS, role: str | None = None,
                host: str | None = None) -> Attempt:
        made = Attempt(self.context, label, kind, address, payload, keys, role, host)
        self.attempts.append(made)
        return made

    def close(self) -> None:
        for made in self.attempts:
            made.close()
        self.context.destroy(linger=0)


@contextlib.contextmanager
def dialer(ns: str) -> Iterator[Dialer]:
    made = Dialer(ns)
    try:
        yield made
    finally:
        made.close()


# --- plain TCP -----------------------------------------------------------------------------

def tcp_outcome(ns: str, ip: str, port: int, timeout: float = 1.5) -> str:
    """What a TCP connect from ``ns`` meets; once accepted, whether the
    server closes without a byte (BIRD to an unknown peer) or greets."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
        except socket.timeout:
            return DROPPED
        except OSError as exc:
            return REFUSED if exc.errno == errno.ECONNREFUSED else f"error {exc.strerror}"
        sock.settimeout(10.0)  # generous: both answers come at once
        try:
            data = sock.recv(64)
        except OSError as exc:
            return f"accepted, then {exc.strerror}"
        if not data:
            return CLOSED
        return GREETING if data[:1] == b"\xff" else f"accepted, said {data[:16]!r}"
    finally:
        sock.close()


def tcp_outcomes(ns: str, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        results = list(pool.map(lambda target: tcp_outcome(ns, *target), targets))
    return dict(zip(targets, results))


# --- kernel state ----------------------------------------------------------------------------

_COUNTED = re.compile(r"\[(\d+):\d+\] (-A .*)")


def rule_packets(layout: Layout, index: int, *words: str, exact: str | None = None, version: int = 4) -> int:
    """Packets counted by the rules of host ``index`` that hold every one of
    ``words`` (or that read exactly ``exact``, as iptables-save prints it)."""
    ns = layout.host_ns(index)
    backend, _ = felix_table(version, runner=lambda argv, **kwargs: subprocess.run(netns.argv(ns, argv), **kwargs))
    assert backend is not None, f"no Felix chains on host-{index}"  # IptablesBackend = auto picked one
    tool = f"{'iptables' if version == 4 else 'ip6tables'}-{backend}-save"
    text = netns.run(ns, [tool, "-c", "-t", "filter"]).stdout
    total = 0
    for line in text.splitlines():
        match = _COUNTED.fullmatch(line)
        if match and (match.group(2) == exact if exact is not None else all(w in match.group(2) for w in words)):
            total += int(match.group(1))
    return total


def lab_snapshot(layout: Layout) -> dict[str, list[str]]:
    snap = kernel_snapshot(layout)
    for index in range(1, state.load(layout).hosts + 1):
        text = netns.run(layout.host_ns(index), ["ip", "neigh", "show", "nud", "permanent"]).stdout
        snap[f"host-{index} permanent neighbours"] = sorted(text.splitlines())
    return snap


def snapshot_diff(before: dict[str, list[str]], after: dict[str, list[str]]) -> str:
    lines = []
    for key in sorted(set(before) | set(after)):
        gone = [l for l in before.get(key, []) if l not in after.get(key, [])]
        new = [l for l in after.get(key, []) if l not in before.get(key, [])]
        if gone or new:
            lines.append(f"{key}: missing {gone[:6]} extra {new[:6]}")
    return "\n".join(lines)


def gateway_mac(ns: str) -> str:
    """The MAC a container sends everything to: its tap's (the permanent
    neighbour entry of its default gateway)."""
    text = netns.run(ns, ["ip", "neigh", "show", "nud", "permanent"]).stdout
    macs = re.findall(r"lladdr ([0-9a-f:]{17})", text)
    assert len(set(macs)) == 1, f"want one gateway MAC in {ns}: {text!r}"
    return macs[0]


def link_mac(ns: str, interface: str) -> str:
    return json.loads(netns.run(ns, ["ip", "-j", "link", "show", interface]).stdout)[0]["address"]
