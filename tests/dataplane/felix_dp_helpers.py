"""Throwaway network namespaces for the dataplane tests (prefix ``tdp-``).

A host namespace where the Dataplane runs, and one namespace per endpoint
joined to it by a veth pair: ``tap<id[:11]>`` on the host side, ``eth0``
with the endpoint's MAC and /32 (or /128) on the endpoint side, routed
``default dev eth0`` (IPv4) and ``default via fe80::1 dev eth0`` (IPv6, the
gateway Felix answers for).  Traffic is real: ping, TCP connects from
sockets opened inside the endpoint namespaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from contextlib import contextmanager

import polling
from calico import netns
from calico.common.rules import Rule
from calico.felix.state import AclRules, Acls, EndpointSpec
# The packet helpers live in tests/packets.py (the lab tests use them too);
# imported here so that the dataplane tests keep one place to import from.
from packets import received, send_frame, send_udp, udp_frame, udp_listening  # noqa: F401

PREFIX = "tdp-"
HOST = "host"  # Lab.ns_of / Lab.listening: the host namespace rather than an endpoint's


def unique(tag: str) -> str:
    return f"{PREFIX}{tag}-{os.getpid() % 100000}"


def sh(ns: str | None, *argv: str, check: bool = True) -> str:
    return netns.run(ns, list(argv), check=check).stdout


BACKENDS = ("legacy", "nft")  # the iptables backends Felix programs (IptablesBackend)


def iptables_tool(backend: str, version: int = 4, suffix: str = "") -> str:
    """``iptables-nft``, ``ip6tables-legacy-save``...: ``suffix`` is "", "-save" or "-restore"."""
    return f"{'iptables' if version == 4 else 'ip6tables'}-{backend}{suffix}"


def felix_chains_in(ns: str | None, backend: str) -> set[str]:
    """Felix's chains in one backend, both families, every table (read with
    save and no -t, which creates no table)."""
    chains = set()
    for version in (4, 6):
        text = netns.run(ns, [iptables_tool(backend, version, "-save")], check=False).stdout
        chains |= {f"v{version} {line.split()[0][1:]}" for line in text.splitlines() if line.startswith(":felix-")}
    return chains


class Lab:
    """A host namespace plus endpoint namespaces; ``close`` removes them all.

    ``backend`` is the iptables backend the lab's Dataplane programs, and
    what ``iptables_save`` and ``iptables`` read and write."""

    backend = "legacy"

    def __init__(self, tag: str, backend: str = "legacy") -> None:
        self.host = unique(tag if backend == "legacy" else f"{tag}-{backend}")
        self.backend = backend
        self.endpoint_ns: dict[str, str] = {}
        netns.remove(self.host)
        netns.create(self.host)

    def close(self) -> None:
        for ns in self.endpoint_ns.values():
            netns.remove(ns)
        netns.remove(self.host)

    def add_endpoint(self, endpoint_id: str, addrs: tuple[str, ...], mac: str) -> str:
        ns = f"{self.host}-{len(self.endpoint_ns)}"
        netns.remove(ns)
        netns.create(ns)
        self.endpoint_ns[endpoint_id] = ns
        tap = "tap" + endpoint_id[:11]
        sh(None, "ip", "-n", self.host, "link", "add", tap, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh(None, "ip", "-n", ns, "link", "set", "eth0", "address", mac)
        sh(None, "ip", "-n", ns, "link", "set", "eth0", "up")
        sh(None, "ip", "-n", self.host, "link", "set", tap, "up")
        for addr in addrs:
            if ":" in addr:
                sh(None, "ip", "-n", ns, "-6", "addr", "add", f"{addr}/128", "dev", "eth0", "nodad")
            else:
                sh(None, "ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", "eth0")
        if any(":" not in a for a in addrs):
            sh(None, "ip", "-n", ns, "route", "add", "default", "dev", "eth0")
        if any(":" in a for a in addrs):
            sh(None, "ip", "-n", ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
        return ns

    def add_uplink(self, name: str = "uplink") -> str:
        """A namespace beyond a non-tap host interface, ``fab0`` (10.65.9.0/24,
        fd00:9::/64): somewhere off the host for endpoints to talk to."""
        ns = f"{self.host}-up"
        netns.remove(ns)
        netns.create(ns)
        self.endpoint_ns[name] = ns
        sh(None, "ip", "-n", self.host, "link", "add", "fab0", "type", "veth", "peer", "name", "eth0", "netns", ns)
        for space, v4, v6 in ((self.host, "10.65.9.1/24", "fd00:9::1/64"), (ns, "10.65.9.2/24", "fd00:9::2/64")):
            dev = "fab0" if space == self.host else "eth0"
            sh(None, "ip", "-n", space, "addr", "add", v4, "dev", dev)
            sh(None, "ip", "-n", space, "-6", "addr", "add", v6, "dev", dev, "nodad")
            sh(None, "ip", "-n", space, "link", "set", dev, "up")
        sh(None, "ip", "-n", ns, "route", "add", "default", "via", "10.65.9.1")
        sh(None, "ip", "-n", ns, "-6", "route", "add", "default", "via", "fd00:9::1")
        return ns

    def remove_interface(self, endpoint_id: str) -> None:
        sh(None, "ip", "-n", self.host, "link", "del", "tap" + endpoint_id[:11], check=False)

    # -- traffic ---------------------------------------------------------------

    def ping(self, endpoint_id: str, dst: str, source: str | None = None, expect: bool = True) -> bool:
        """One echo request; retried a few times when success is expected."""
        argv = ["ping", "-6" if ":" in dst else "-4", "-n", "-c", "1", "-W", "1" if expect else "0.4"]
        if source:
            argv += ["-I", source]
        for _ in range(3 if expect else 1):
            if netns.run(self.endpoint_ns[endpoint_id], argv + [dst], check=False).returncode == 0:
                return True
        return False

    def connect(self, endpoint_id: str, dst: str, port: int, timeout: float = 0.5) -> socket.socket | None:
        """A TCP connection from inside the endpoint's namespace, or None."""
        with netns.entered(self.endpoint_ns[endpoint_id]):
            sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((dst, port))
        except OSError:
            sock.close()
            return None
        return sock

    def ns_of(self, who: str) -> str:
        """The namespace of an endpoint, or of the host for ``HOST``."""
        return self.host if who == HOST else self.endpoint_ns[who]

    def tap_mac(self, endpoint_id: str) -> str:
        link = json.loads(sh(None, "ip", "-n", self.host, "-j", "link", "show", "tap" + endpoint_id[:11]))
        return link[0]["address"]

    @contextmanager
    def listening(self, endpoint_id: str, port: int, v6: bool = False):
        """A TCP echo server on the endpoint (all addresses), or on the host
        for ``HOST``, for the body's duration."""
        with netns.entered(self.ns_of(endpoint_id)):
            server = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("::" if v6 else "0.0.0.0", port))
        server.listen(16)
        server.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                threading.Thread(target=_echo, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(2)
            server.close()

    def tcp_ok(self, endpoint_id: str, dst: str, port: int, expect: bool = True) -> bool:
        sock = self.connect(endpoint_id, dst, port, timeout=2.0 if expect else 0.4)
        if sock is None:
            return False
        try:
            return echo_round_trip(sock)
        finally:
            sock.close()

    # -- kernel state ----------------------------------------------------------

    def iptables(self, *args: str, version: int = 4, check: bool = True) -> str:
        """The lab's backend's iptables command in the host namespace."""
        return sh(self.host, iptables_tool(self.backend, version), *args, check=check)

    def iptables_save(self, version: int = 4, table: str = "filter") -> str:
        text = sh(self.host, iptables_tool(self.backend, version, "-save"), "-t", table)
        return "\n".join(re.sub(r"\[\d+:\d+\]$", "[0:0]", line)  # policy counters
                         for line in text.splitlines() if not line.startswith("#"))

    def ipset_save(self) -> str:
        lines = sh(self.host, "ipset", "save").splitlines()
        # initval is random per set; members are listed in hash order.
        return "\n".join(sorted(re.sub(r" initval 0x[0-9a-f]+", "", line) for line in lines))

    def set_members(self, name: str) -> set[str]:
        """The members of one set, as ``ipset save`` spells them."""
        return {line.split(" ", 2)[2] for line in self.ipset_save().splitlines() if line.startswith(f"add {name} ")}

    def routes(self) -> str:
        v4 = sh(self.host, "ip", "route", "show", "proto", "80")
        v6 = sh(self.host, "ip", "-6", "route", "show", "proto", "80")
        return "\n".join(sorted((v4 + v6).splitlines()))

    def neighbours(self) -> str:
        v4 = sh(self.host, "ip", "-4", "neigh", "show", "nud", "permanent")
        v6 = sh(self.host, "ip", "-6", "neigh", "show", "nud", "permanent")
        proxy = sh(self.host, "ip", "-6", "neigh", "show", "proxy")
        return "\n".join(sorted((v4 + v6 + proxy).splitlines()))

    def kernel_state(self) -> dict[str, str]:
        other = "nft" if self.backend == "legacy" else "legacy"
        return {"iptables": self.iptables_save(4), "ip6tables": self.iptables_save(6),
                "other backend": "\n".join(sorted(felix_chains_in(self.host, other))),  # always empty
                "ipsets": self.ipset_save(), "routes": self.routes(), "neighbours": self.neighbours()}


def _echo(conn: socket.socket) -> None:
    conn.settimeout(5)
    try:
        while data := conn.recv(1024):
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def echo_round_trip(sock: socket.socket, payload: bytes = b"hello") -> bool:
    try:
        sock.settimeout(2.0)
        sock.sendall(payload)
        return sock.recv(1024) == payload
    except OSError:
        return False


def wait_until(condition, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """True once ``condition`` holds; False if it never did (the caller asserts)."""
    return bool(polling.poll(condition, timeout, interval))


def content_set_name(set_type: str, version: int, *members: str) -> str:
    """The documented name of the set holding ``members`` (as ``ipset restore``
    spells them): felix-<4|6>s- and the first 19 hex characters of the sha256
    of the set type and the sorted members, one a line."""
    text = "\n".join([set_type, *sorted(members)])
    return f"felix-{version}s-{hashlib.sha256(text.encode()).hexdigest()[:19]}"


def acls(inbound=(), outbound=(), inbound6=(), outbound6=()) -> Acls:
    def rules(items):
        return tuple(r if isinstance(r, Rule) else Rule(cidr=r) for r in items)
    return Acls(v4=AclRules(rules(inbound), rules(outbound)), v6=AclRules(rules(inbound6), rules(outbound6)))


def spec(endpoint_id: str, addrs: tuple[str, ...], mac: str, acl: Acls | None = None,
         enabled: bool = True) -> EndpointSpec:
    return EndpointSpec(endpoint_id, mac, addrs, enabled, acl)
