"""IP-in-IP: the tunl0 device and who may send to it.

See docs/dataplane.md, "Outgoing NAT and IP-in-IP".

With ``ipip`` on (``always`` or ``cross-subnet``), BIRD installs routes to
other hosts' containers as ``via <host> dev tunl0 onlink`` (calico.bird);
the kernel's tunl0 (ipip, remote "any") then sends each packet inside an
outer IPv4 header addressed to that host.  Felix's part:

* tunl0 exists (created as ``ipip`` if the kernel does not make it), is up,
  has an MTU 20 bytes (the outer header) below that of the interface holding
  this host's address, and holds this host's address as a /32.  The address
  makes packets the host itself sends through the tunnel carry the host's
  address inside too, which every host and the network route back without
  any pool route; this prototype has no per-host pool block to take one from;
* only cluster hosts may send IP-in-IP here: the first rule of felix-INPUT
  drops protocol 4 from any source not in ``felix-hosts4`` (hash:net of the
  hosts' IPv4 addresses), before the kernel decapsulates it: otherwise any
  machine that can reach the host could inject packets "from" any container.

With ``ipip = never`` the rule and the set go, and a tunl0 that exists is
taken down with its addresses removed (BIRD stops routing through it when
its config is re-rendered).  Everything that decides is pure
(``desired_tunnel``, ``hosts_set``, ``input_rules``); ``TunnelWriter`` makes
the device match, comparing with what it last wrote (or, after ``forget``,
with a fresh read).  A tunnel that cannot be made (a kernel without IP-in-IP
support) is reported once and does not stop the endpoints' programming.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass

from calico.common.datafiles import IPIP_NEVER
from calico.felix.cluster import ClusterView
from calico.felix.ipsets import HASH_NET, SetSpec
from calico.felix.kernel_writes import WriteCounter

log = logging.getLogger(__name__)

TUNNEL_DEVICE = "tunl0"
IPIP_OVERHEAD = 20
DEFAULT_UPLINK_MTU = 1500
HOSTS_SET = "felix-hosts4"
IPIP_PROTOCOL = 4
IFF_UP = 0x1


@dataclass(frozen=True)
class TunnelSpec:
    enabled: bool
    address: str | None = None  # IPv4, held as a /32


def ipip_enabled(view: ClusterView) -> bool:
    return view.settings.ipip != IPIP_NEVER


def desired_tunnel(view: ClusterView) -> TunnelSpec:
    if not ipip_enabled(view):
        return TunnelSpec(False)
    local = view.local_ip if view.local_ip and ":" not in view.local_ip else None
    return TunnelSpec(True, local)


def tunnel_mtu(uplink_mtu: int) -> int:
    return max(uplink_mtu - IPIP_OVERHEAD, 68)


def hosts_set(view: ClusterView) -> dict[str, SetSpec]:
    if not ipip_enabled(view):
        return {}
    members = frozenset(f"{ip}/32" for ip in view.host_ips(4))
    return {HOSTS_SET: SetSpec(HOSTS_SET, HASH_NET, 4, members)}


def input_rules(view: ClusterView, version: int) -> tuple[str, ...]:
    """Rules to put first in felix-INPUT (IPv4 only: IP-in-IP is IPv4 in IPv4)."""
    if version != 4 or not ipip_enabled(view):
        return ()
    return (f"-p {IPIP_PROTOCOL} -m set ! --match-set {HOSTS_SET} src -j DROP",)


@dataclass
class KernelTunnel:
    index: int | None = None  # None: no tunl0
    up: bool = False
    mtu: int = 0
    addresses: frozenset[str] = frozenset()  # "A/len"
    uplink_mtu: int = DEFAULT_UPLINK_MTU


class TunnelWriter:
    """Makes tunl0 match a TunnelSpec (pyroute2, one request per change)."""

    def __init__(self, counter: WriteCounter) -> None:
        self.counter = counter
        self.kernel: KernelTunnel | None = None
        self._ipr = None
        self._reported: str | None = None
        self._failed: TunnelSpec | None = None  # not tried again until forget() or a new spec

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def forget(self) -> None:
        self.kernel = None
        self._failed = None

    def _socket(self):
        if self._ipr is None:
            from pyroute2 import IPRoute
            self._ipr = IPRoute()
        return self._ipr

    def read(self, uplink_address: str | None) -> KernelTunnel:
        ipr = self._socket()
        state = KernelTunnel()
        links = ipr.link("get", ifname=TUNNEL_DEVICE) if self._exists() else []
        for link in links:
            state.index = link["index"]
            state.up = bool(link["flags"] & IFF_UP)
            state.mtu = link.get_attr("IFLA_MTU") or 0
        if state.index is not None:
            state.addresses = frozenset(
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(family=socket.AF_INET, index=state.index))
        if uplink_address:
            for addr in ipr.get_addr(family=socket.AF_INET, address=uplink_address):
                if addr["index"] != state.index:
                    for link in ipr.get_links(addr["index"]):
                        state.uplink_mtu = link.get_attr("IFLA_MTU") or DEFAULT_UPLINK_MTU
                    break
        return state

    @staticmethod
    def _exists() -> bool:
        try:
            socket.if_nametoindex(TUNNEL_DEVICE)
            return True
        except OSError:
            return False

    def sync(self, spec: TunnelSpec) -> bool:
        """Make tunl0 match ``spec``; False (reported once) if it cannot be made."""
        from pyroute2.netlink.exceptions import NetlinkError

        if spec == self._failed:
            return False  # a pass with nothing new writes nothing; the periodic resync tries again
        try:
            self._sync(spec)
        except (NetlinkError, OSError) as exc:
            self.kernel = None
            self._failed = spec
            message = f"IP-in-IP: cannot set up {TUNNEL_DEVICE}: {exc}"
            if getattr(exc, "code", None) in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL) and \
                    not self._exists():
                message += " (this kernel has no IP-in-IP support: the ipip module)"
            if message != self._reported:
                log.error("%s; routes through it will not work", message)
                self._reported = message
            return False
        if self._reported is not None:
            log.info("IP-in-IP: %s is set up", TUNNEL_DEVICE)
            self._reported = None
        return True

    def _change(self, *args, **kwargs) -> None:
        self.counter.tunnel_requests += 1
        getattr(self._socket(), args[0])(*args[1:], **kwargs)

    def _sync(self, spec: TunnelSpec) -> None:
        if self.kernel is None:
            self.kernel = self.read(spec.address)
        kernel = self.kernel
        if kernel.index is None:
            if not spec.enabled:
                return
            # Absent when last read; it may have appeared since (a module loaded).
            self.kernel = kernel = self.read(spec.address)
        if kernel.index is None:
            self._change("link", "add", ifname=TUNNEL_DEVICE, kind="ipip")
            log.info("IP-in-IP: created %s", TUNNEL_DEVICE)
            self.kernel = kernel = self.read(spec.address)
            if kernel.index is None:
                raise OSError(errno.ENODEV, f"{TUNNEL_DEVICE} did not appear")
        index = kernel.index
        want_addresses = frozenset({f"{spec.address}/32"} if spec.enabled and spec.address else ())
        if spec.enabled:
            mtu = tunnel_mtu(kernel.uplink_mtu)
            if kernel.mtu != mtu:
                self._change("link", "set", index=index, mtu=mtu)
                kernel.mtu = mtu
        for cidr in sorted(kernel.addresses - want_addresses):
            addr, prefix = cidr.split("/")
            self._change("addr", "del", index=index, address=addr, prefixlen=int(prefix))
        for cidr in sorted(want_addresses - kernel.addresses):
            addr, prefix = cidr.split("/")
            self._change("addr", "add", index=index, address=addr, prefixlen=int(prefix))
        kernel.addresses = want_addresses
        if kernel.up != spec.enabled:
            self._change("link", "set", index=index, state="up" if spec.enabled else "down")
            kernel.up = spec.enabled
            log.info("IP-in-IP: %s %s (mtu %d, address %s)", TUNNEL_DEVICE, "up" if spec.enabled else "down",
                     kernel.mtu, spec.address if spec.enabled else "none")
