"""The lab's fabric: one bridge in its own namespace, hosts plugged into it.

The bridge lives in the fabric namespace and nothing links that namespace
to the root one, so no lab packet can reach the machine's real network.
Each host namespace gets a veth whose host end is ``fab0`` with the host's
fabric addresses (IPv4 for the BGP sessions, IPv6 so BIRD has an IPv6 next
hop for IPv6 endpoint routes) and whose other end is a bridge port.

Plumbing uses ``ip`` with argument lists; every step is written so that
running it again after a half-finished ``up`` either succeeds or is skipped.
"""

from __future__ import annotations

from calico import netns
from calico.lab.layout import FABRIC6_PREFIXLEN, FABRIC_PREFIXLEN, Layout, host_ip, host_ip6

BRIDGE = "br0"
HOST_IFACE = "fab0"


def ensure_namespace(name: str) -> None:
    if not netns.exists(name):
        netns.create(name)


def create_fabric(layout: Layout) -> None:
    ensure_namespace(layout.fabric_ns)
    ns = layout.fabric_ns
    links = netns.run(ns, ["ip", "-o", "link", "show"]).stdout
    if f" {BRIDGE}:" not in links:
        netns.run(ns, ["ip", "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
    netns.run(ns, ["ip", "link", "set", BRIDGE, "up"])


def plug_host(layout: Layout, index: int) -> None:
    """Create host ``index``'s namespace and connect it to the bridge."""
    host_ns = layout.host_ns(index)
    ensure_namespace(host_ns)
    port = f"port{index}"
    fabric_links = netns.run(layout.fabric_ns, ["ip", "-o", "link", "show"]).stdout
    if f" {port}@" not in fabric_links:
        netns.run(layout.fabric_ns, ["ip", "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE,
                                     "netns", host_ns])
    netns.run(layout.fabric_ns, ["ip", "link", "set", port, "master", BRIDGE, "up"])
    netns.run(host_ns, ["ip", "addr", "replace", f"{host_ip(index)}/{FABRIC_PREFIXLEN}", "dev", HOST_IFACE])
    netns.run(host_ns, ["ip", "-6", "addr", "replace", f"{host_ip6(index)}/{FABRIC6_PREFIXLEN}", "dev",
                        HOST_IFACE, "nodad"])
    # No duplicate-address detection on the fabric: BIRD wants the link-local
    # address at once (else "Missing link-local address" until DAD ends).
    netns.sysctl(host_ns, f"net.ipv6.conf.{HOST_IFACE}.accept_dad", "0")
    netns.run(host_ns, ["ip", "link", "set", HOST_IFACE, "up"])
