"""The lab's fabric: bridges in their own namespace, hosts plugged into them.

The bridges live in the fabric namespace and nothing links that namespace
to the root one, so no lab packet can reach the machine's real network.
Each host namespace gets a veth whose host end is ``fab0`` with the host's
fabric addresses (IPv4 for the BGP sessions, IPv6 so BIRD has an IPv6 next
hop for IPv6 endpoint routes) and whose other end is a port of its
subnet's bridge (``br<k>``; one, ``br0``, unless the lab has subnets).

With two or more subnets, a router namespace joins them, the way a cloud
network joins VMs: it forwards only between host addresses (and to and
from the outside namespace) and drops everything else, container addresses
in particular (no route, and a FORWARD policy of DROP whose counters show
what it dropped).  The hosts' default route points at it.  Beyond it, the
outside namespace (203.0.113.2) stands for the rest of the world: it
answers the hosts' addresses and knows nothing of the pools.  IPv6 is not
routed between subnets.

Plumbing uses ``ip`` with argument lists; every step is written so that
running it again after a half-finished ``up`` either succeeds or is skipped.
"""

from __future__ import annotations

import re
import subprocess

from calico import netns
from calico.lab.layout import (FABRIC6_PREFIXLEN, FABRIC_PREFIXLEN, HOSTS_NET, OUTSIDE_IP, OUTSIDE_NET,
                               OUTSIDE_ROUTER_IP, ROUTER_IP, Layout, host_ip, host_ip6, subnet_of)

BRIDGE = "br0"
HOST_IFACE = "fab0"
ROUTER_OUTSIDE_IFACE = "out0"


def bridge(subnet: int) -> str:
    return f"br{subnet}"


def ensure_namespace(name: str) -> None:
    if not netns.exists(name):
        netns.create(name)


def create_fabric(layout: Layout, subnets: int = 1) -> None:
    ensure_namespace(layout.fabric_ns)
    ns = layout.fabric_ns
    links = netns.run(ns, ["ip", "-o", "link", "show"]).stdout
    for subnet in range(subnets):
        if f" {bridge(subnet)}:" not in links:
            netns.run(ns, ["ip", "link", "add", bridge(subnet), "type", "bridge", "forward_delay", "0",
                           "stp_state", "0"])
        netns.run(ns, ["ip", "link", "set", bridge(subnet), "up"])
    if subnets > 1:
        _create_router(layout, subnets)


def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    if f" {name_a}@" not in netns.run(ns_a, ["ip", "-o", "link", "show"]).stdout:
        netns.run(ns_a, ["ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b])


def _create_router(layout: Layout, subnets: int) -> None:
    router, outside = layout.router_ns, layout.outside_ns
    ensure_namespace(router)
    ensure_namespace(outside)
    for subnet in range(subnets):
        port, iface = f"rt{subnet}", f"fab{subnet}"
        _veth(layout.fabric_ns, port, router, iface)
        netns.run(layout.fabric_ns, ["ip", "link", "set", port, "master", bridge(subnet), "up"])
        netns.run(router, ["ip", "addr", "replace", f"{ROUTER_IP.format(subnet)}/{FABRIC_PREFIXLEN}", "dev", iface])
        netns.run(router, ["ip", "link", "set", iface, "up"])
    _veth(router, ROUTER_OUTSIDE_IFACE, outside, "eth0")
    netns.run(router, ["ip", "addr", "replace", f"{OUTSIDE_ROUTER_IP}/24", "dev", ROUTER_OUTSIDE_IFACE])
    netns.run(router, ["ip", "link", "set", ROUTER_OUTSIDE_IFACE, "up"])
    netns.run(outside, ["ip", "addr", "replace", f"{OUTSIDE_IP}/24", "dev", "eth0"])
    netns.run(outside, ["ip", "link", "set", "eth0", "up"])
    netns.run(outside, ["ip", "route", "replace", HOSTS_NET, "via", OUTSIDE_ROUTER_IP])
    netns.sysctl(router, "net.ipv4.ip_forward", "1")
    # Between host addresses, and between them and the outside; nothing else.
    rules = "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
        f"-A FORWARD -s {HOSTS_NET} -d {HOSTS_NET} -j ACCEPT",
        f"-A FORWARD -s {HOSTS_NET} -d {OUTSIDE_NET} -j ACCEPT",
        f"-A FORWARD -s {OUTSIDE_NET} -d {HOSTS_NET} -j ACCEPT",
        "COMMIT", ""])
    subprocess.run(netns.argv(router, ["iptables-legacy-restore"]), input=rules, text=True, check=True,
                   capture_output=True)


def router_dropped_packets(layout: Layout) -> int:
    """How many packets the router's FORWARD policy has dropped."""
    text = netns.run(layout.router_ns, ["iptables-legacy", "-L", "FORWARD", "-n", "-v", "-x"]).stdout
    first = text.splitlines()[0] if text else ""
    match = re.search(r"policy DROP ([0-9]+) packets", first)
    return int(match.group(1)) if match else 0


def plug_host(layout: Layout, index: int, subnets: int = 1) -> None:
    """Create host ``index``'s namespace and connect it to its subnet's bridge."""
    host_ns = layout.host_ns(index)
    ensure_namespace(host_ns)
    port = f"port{index}"
    _veth(layout.fabric_ns, port, host_ns, HOST_IFACE)
    netns.run(layout.fabric_ns, ["ip", "link", "set", port, "master", bridge(subnet_of(index, subnets)), "up"])
    netns.run(host_ns, ["ip", "addr", "replace", f"{host_ip(index, subnets)}/{FABRIC_PREFIXLEN}", "dev",
                        HOST_IFACE])
    netns.run(host_ns, ["ip", "-6", "addr", "replace", f"{host_ip6(index, subnets)}/{FABRIC6_PREFIXLEN}", "dev",
                        HOST_IFACE, "nodad"])
    # No duplicate-address detection on the fabric: BIRD wants the link-local
    # address at once (else "Missing link-local address" until DAD ends).
    netns.sysctl(host_ns, f"net.ipv6.conf.{HOST_IFACE}.accept_dad", "0")
    netns.run(host_ns, ["ip", "link", "set", HOST_IFACE, "up"])
    if subnets > 1:
        netns.run(host_ns, ["ip", "route", "replace", "default", "via", ROUTER_IP.format(subnet_of(index, subnets))])
