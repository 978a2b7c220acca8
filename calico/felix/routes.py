"""Routes, neighbour entries and interface sysctls for endpoint interfaces.

See docs/dataplane.md, "Routes, neighbours, proxy ARP and NDP".

Per endpoint whose interface (``tap`` + id[:11]) exists:

- one route per address, ``A/32`` (or ``/128``) via the tap, scope link,
  protocol ``ROUTE_PROTO`` (80).  The protocol marks the route as Felix's:
  BIRD's kernel protocol exports routes with ``krt_source = 80`` and Felix
  only ever deletes routes carrying it;
- a permanent neighbour entry for each address with the endpoint's MAC, so
  the host never has to resolve it;
- sysctls, written through /proc/sys (which follows the calling thread's
  network namespace): IPv4 ``proxy_arp=1`` (the endpoint's ``default dev
  eth0`` makes it ARP for every destination), ``neigh/<if>/proxy_delay=0``
  (otherwise each proxy ARP answer waits up to 0.8 s), ``route_localnet=1``;
  IPv6 ``proxy_ndp=1``, ``proxy_delay=0``, ``forwarding=1``;
- for IPv6, a proxy neighbour entry for ``V6_GATEWAY`` (fe80::1) on the tap:
  IPv6 endpoints route ``default via fe80::1 dev eth0``, and the host
  answers neighbour solicitations for that address on every v6 tap.  (A v6
  ``default dev eth0`` cannot work: Linux proxies NDP only for listed
  addresses.)

Ownership: routes with protocol 80 are Felix's; so are permanent neighbour
entries and fe80::1 proxy entries on interfaces named ``tap*``
(docs/dataplane.md, "Names Felix owns").  Nothing else is read for deletion.

Like the other writers: the kernel is dumped on the first pass and after
``forget``; afterwards the last written state is trusted, so a pass with
nothing new sends no request.  ``sync`` adds and replaces (start of the
pass), ``delete_unused`` removes what is no longer wanted (end of it).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Iterable, Iterator, Mapping

from calico.common.kernel_names import IFACE_PREFIX, ROUTE_PROTO
from calico.felix.kernel_writes import WriteCounter
from calico.felix.state import EndpointSpec

log = logging.getLogger(__name__)

V6_GATEWAY = "fe80::1"
RT_TABLE_MAIN = 254
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255  # in a delete: any scope (pyroute2's default, 0, must match exactly)
NUD_PERMANENT = 0x80
NTF_PROXY = 0x08
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_PREFIX = {4: 32, 6: 128}
_GONE = (errno.ESRCH, errno.ENOENT, errno.ENODEV)

HOST_SYSCTLS = {4: (("net/ipv4/ip_forward", "1"),),
                6: (("net/ipv6/conf/all/forwarding", "1"),)}
INTERFACE_SYSCTLS = {
    4: (("net/ipv4/conf/{}/proxy_arp", "1"), ("net/ipv4/conf/{}/route_localnet", "1"),
        ("net/ipv4/neigh/{}/proxy_delay", "0")),
    6: (("net/ipv6/conf/{}/proxy_ndp", "1"), ("net/ipv6/conf/{}/forwarding", "1"),
        ("net/ipv6/neigh/{}/proxy_delay", "0")),
}


@dataclass
class KernelRoutes:
    routes: dict[str, int | None] = field(default_factory=dict)  # "A/32" -> oif (proto 80)
    neighbours: dict[tuple[int, str], str] = field(default_factory=dict)  # (oif, addr) -> mac, on taps
    proxies: set[tuple[int, str]] = field(default_factory=set)  # (oif, fe80::1), on taps
    interfaces: dict[str, tuple[int, frozenset[int]]] = field(default_factory=dict)  # configured


@dataclass
class Wanted:
    routes: dict[str, int] = field(default_factory=dict)
    neighbours: dict[tuple[int, str], str] = field(default_factory=dict)
    proxies: set[tuple[int, str]] = field(default_factory=set)


class Sysctls:
    """Reads before writing, so an unchanged value costs no write."""

    def __init__(self, counter: WriteCounter, root: str = "/proc/sys") -> None:
        self.counter = counter
        self.root = root

    def ensure(self, key: str, value: str) -> bool:
        path = os.path.join(self.root, key)
        with open(path) as f:
            if f.read().strip() == value:
                return False
        with open(path, "w") as f:
            f.write(value)
        self.counter.sysctl_writes += 1
        return True


class RouteError(OSError):
    """The kernel refused a route or neighbour change; the message says which."""


def _interface_name(index: int | None) -> str:
    try:
        return socket.if_indextoname(index) if index else "?"
    except OSError:
        return f"#{index}"


def _is_tap(index: int) -> bool:
    try:
        return socket.if_indextoname(index).startswith(IFACE_PREFIX)
    except OSError:
        return False


# Dumped messages are read through get_attr with the kernel's attribute
# names: pyroute2 0.7's msg.get("dst") finds only header fields, 0.9's finds
# attributes too, get_attr means the same on both.

def felix_routes(messages: Iterable[Any]) -> Iterator[tuple[str, int | None]]:
    """(cidr, oif) of each route in the main table that carries ROUTE_PROTO."""
    for route in messages:
        table = route.get_attr("RTA_TABLE") or route["table"]
        dst = route.get_attr("RTA_DST")
        if route["proto"] == ROUTE_PROTO and table == RT_TABLE_MAIN and dst is not None:
            yield f"{dst}/{route['dst_len']}", route.get_attr("RTA_OIF")


def neighbours(messages: Iterable[Any]) -> Iterator[tuple[int, str | None, str | None, int]]:
    """(ifindex, address, MAC, NUD state) of each neighbour entry."""
    for neigh in messages:
        yield neigh["ifindex"], neigh.get_attr("NDA_DST"), neigh.get_attr("NDA_LLADDR"), neigh["state"]


class RouteWriter:
    def __init__(self, counter: WriteCounter, versions: tuple[int, ...], sysctls: Sysctls) -> None:
        self.counter = counter
        self.versions = versions
        self.sysctls = sysctls
        self.kernel: KernelRoutes | None = None
        self.wanted = Wanted()
        self._ipr = None

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def forget(self) -> None:
        self.kernel = None

    def _socket(self):
        if self._ipr is None:
            from pyroute2 import IPRoute
            # ext_ack: a refusal then carries the kernel's reason ("IPv6 is
            # disabled on nexthop device"), not just "Permission denied".
            self._ipr = IPRoute(ext_ack=True)
        return self._ipr

    def read(self) -> KernelRoutes:
        if self.kernel is None:
            self.kernel = self._dump()
        return self.kernel

    def _dump(self) -> KernelRoutes:
        ipr = self._socket()
        state = KernelRoutes()
        for version in self.versions:
            state.routes.update(felix_routes(ipr.route("dump", family=_FAMILY[version])))
        taps: dict[int, bool] = {}
        for version in self.versions:
            # Per family: with none given, pyroute2 0.7 dumps IPv4 only.
            for index, dst, lladdr, nud in neighbours(ipr.neigh("dump", family=_FAMILY[version])):
                if nud & NUD_PERMANENT and lladdr and taps.setdefault(index, _is_tap(index)):
                    state.neighbours[(index, dst)] = lladdr
        if 6 in self.versions:
            for index, dst, _, _ in neighbours(self._proxy_dump()):
                if dst == V6_GATEWAY and taps.setdefault(index, _is_tap(index)):
                    state.proxies.add((index, V6_GATEWAY))
        return state

    def _proxy_dump(self):
        # pyroute2's neigh("dump") cannot put NTF_PROXY into the request, so
        # the request is sent as it is.  0.9's nlm_request trips over a
        # missing status key (0.7 has no ``status``); 0.7 answers a tuple,
        # 0.9 a generator, hence the list.
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
        from pyroute2.netlink.rtnl import RTM_GETNEIGH
        from pyroute2.netlink.rtnl.ndmsg import ndmsg

        ipr = self._socket()
        msg = ndmsg()
        msg["family"] = socket.AF_INET6
        msg["flags"] = NTF_PROXY
        status = getattr(ipr, "status", None)
        if isinstance(status, dict):
            status.setdefault("nlm_generator", False)
        return list(ipr.nlm_request(msg, msg_type=RTM_GETNEIGH, msg_flags=NLM_F_REQUEST | NLM_F_DUMP))

    def sync(self, endpoints: Mapping[str, EndpointSpec], unrouted: AbstractSet[str] = frozenset()) -> set[str]:
        """Program routes, neighbours, sysctls; return endpoints with no interface.

        Endpoints in ``unrouted`` (failed closed after the kernel refused
        their state) are only looked for: no sysctls, routes or neighbours."""
        kernel = self.read()
        wanted = Wanted()
        missing: set[str] = set()
        for endpoint_id in sorted(endpoints):
            spec = endpoints[endpoint_id]
            families = frozenset(v for v in self.versions if spec.addrs_of(v))
            if not families:
                continue
            if endpoint_id in unrouted:
                if not self._exists(spec.interface):
                    missing.add(endpoint_id)
                continue
            index = self._configure_interface(spec.interface, families)
            if index is None:
                missing.add(endpoint_id)
                continue
            for version in families:
                for addr in spec.addrs_of(version):
                    wanted.routes[f"{addr}/{_PREFIX[version]}"] = index
                    wanted.neighbours[(index, addr)] = spec.mac
            if 6 in families:
                wanted.proxies.add((index, V6_GATEWAY))
        for cidr, index in wanted.routes.items():
            if kernel.routes.get(cidr) != index:
                self._change("route", "replace", dst=cidr, oif=index, proto=ROUTE_PROTO,
                             family=_FAMILY[6 if ":" in cidr else 4],
                             **({} if ":" in cidr else {"scope": RT_SCOPE_LINK}))
                kernel.routes[cidr] = index
        for (index, addr), mac in wanted.neighbours.items():
            if kernel.neighbours.get((index, addr)) != mac:
                self._change("neigh", "replace", dst=addr, lladdr=mac, ifindex=index, state=NUD_PERMANENT,
                             family=_FAMILY[6 if ":" in addr else 4])
                kernel.neighbours[(index, addr)] = mac
        for index, addr in wanted.proxies - kernel.proxies:
            self._change("neigh", "replace", dst=addr, ifindex=index, flags=NTF_PROXY, family=socket.AF_INET6)
            kernel.proxies.add((index, addr))
        self.wanted = wanted
        return missing

    def delete_unused(self) -> None:
        """Remove Felix's routes and entries the last ``sync`` did not want."""
        kernel = self.read()
        wanted = self.wanted
        for cidr in [c for c in kernel.routes if c not in wanted.routes]:
            family = _FAMILY[6 if ":" in cidr else 4]
            oif = kernel.routes.pop(cidr)
            self._change("route", "del", dst=cidr, proto=ROUTE_PROTO, family=family, scope=RT_SCOPE_NOWHERE,
                         **({"oif": oif} if oif is not None else {}))
            log.info("removed route %s", cidr)
        for index, addr in [k for k in kernel.neighbours if k not in wanted.neighbours]:
            del kernel.neighbours[(index, addr)]
            self._change("neigh", "del", dst=addr, ifindex=index, family=_FAMILY[6 if ":" in addr else 4])
        for index, addr in kernel.proxies - wanted.proxies:
            kernel.proxies.discard((index, addr))
            self._change("neigh", "del", dst=addr, ifindex=index, flags=NTF_PROXY, family=socket.AF_INET6)
        live = {index for index, _ in wanted.neighbours}
        for name in [n for n, (index, _) in kernel.interfaces.items() if index not in live]:
            del kernel.interfaces[name]

    def _exists(self, ifname: str) -> bool:
        if ifname in self.read().interfaces:
            return True
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            return False
        return True

    def _configure_interface(self, ifname: str, families: frozenset[int]) -> int | None:
        """The interface's index after setting its sysctls, or None if it does not exist."""
        kernel = self.read()
        known = kernel.interfaces.get(ifname)
        if known is not None and families <= known[1]:
            return known[0]
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            return None
        try:
            for version in sorted(families):
                for key, value in INTERFACE_SYSCTLS[version]:
                    self.sysctls.ensure(key.format(ifname), value)
        except FileNotFoundError:
            return None  # vanished between the lookup and the write
        kernel.interfaces[ifname] = (index, families)
        return index

    def _change(self, kind: str, command: str, **kwargs) -> None:
        """One netlink change; a delete of something already gone is fine."""
        from pyroute2.netlink.exceptions import NetlinkError

        self.counter.route_requests += 1
        try:
            getattr(self._socket(), kind)(command, **kwargs)
        except NetlinkError as exc:
            if command == "del" and exc.code in _GONE:
                log.debug("%s %s already gone: %s", kind, kwargs.get("dst"), exc)
                return
            where = _interface_name(kwargs.get("oif") or kwargs.get("ifindex"))
            raise RouteError(f"{kind} {command} {kwargs.get('dst')} dev {where}: {exc}") from exc
