"""BIRD 2 configuration for one host, rendered from the cluster file.

BIRD is the part that spreads endpoint routes between hosts.  Felix programs
a /32 (or /128) route per local endpoint with its own routing-protocol
number; BIRD's kernel protocol learns exactly those (``learn``, filtered on
``krt_source``), iBGP carries them to the other hosts, and each host's
kernel protocol installs what BGP brought in.  Nothing else in the kernel
-- the seed's ``unreachable <pool>`` route, the fabric's routes, whatever an
operator adds -- is ever written or advertised; routes outside the pools
are read only to resolve BGP next hops.

Choices, and why:

* **Multihop sessions with recursive next hops**: a peer may sit behind a
  router (hosts on several subnets, or a cloud VM whose address is a /32),
  so every session is ``multihop`` and a route's BGP next hop (the owning
  host) is resolved through BIRD's table, which holds the connected subnets
  (``protocol direct``) and the kernel's routes outside the pools (the
  default route).  For a peer on the same subnet this gives the same
  ``via <host>`` route a direct session gave.  Next hops are never rewritten
  (no ``next hop self``), so a reflected route still points at its owner.
* **IP-in-IP (``ipip``) as next-hop resolution**: upstream BIRD 2 installs
  ``via <host> dev tunl0 onlink`` itself, so no patched BIRD (Calico's
  ``krt_tunnel``) and no second route writer is needed.  A static device
  route ``<host>/32 via "tunl0"`` in BIRD's table (never exported) for each
  host to be reached through the tunnel (every other host with ``always``;
  those outside this host's subnet with ``cross-subnet``) makes the BGP
  next hop of that host's routes resolve to tunl0, and the kernel export
  filter adds the ``onlink`` flag.  Such a route is valid only while tunl0
  is up, so BIRD moves the routes onto the tunnel when Felix brings tunl0
  up and off it when tunl0 goes, by itself, in whatever order the two
  start or change.  (Setting ``ifname``/``gw`` in the export filter
  instead fails while tunl0 is down, and BIRD never retries a route its
  filter refused.)  IPv6 is never tunnelled.
* **Route reflectors** (``route_reflectors``): a reflector peers with every
  host, treating the non-reflectors as ``rr client``s under one shared
  ``rr cluster id`` (so reflectors also peer with each other without
  looping routes); every other host peers with the reflectors only.  With
  none named, the full mesh: n(n-1)/2 sessions.
* **Filters on both sides, pool only**: BGP imports and exports only
  prefixes inside the pool (IPv4 ``pool``, IPv6 ``pool6``), so a mistake on
  one host cannot pull default or fabric routes into the others; the kernel
  gets only what BGP brought, inside the pools.
* **Speed**: BIRD hears kernel route changes through netlink notifications
  as they happen, and BGP sends updates at once (BIRD has no minimum route
  advertisement interval), so a Felix route reaches the other hosts within
  milliseconds.  The kernel ``scan time`` only bounds recovery from a lost
  notification (and a tunl0 that appeared late).  BGP timers are short
  (connect retry 2 s, error wait 1-10 s, hold 9 s) so a restarted BIRD is
  back in seconds instead of the defaults' minutes.
* **``persist``**: routes stay in the kernel while BIRD is down, so
  restarting BIRD does not cut traffic; on restart it takes them over.
* **IPv6** rides the same sessions (multiprotocol BGP over the IPv4 session
  between the hosts' addresses).  The IPv6 next hop is the global IPv6
  address of the interface holding the host's IPv4 address; a host without
  one exchanges no usable IPv6 routes, and IPv4 is unaffected.  IPv6
  crosses subnets only where the network routes the pool6 addresses.

``calico-bird-config CLUSTER_FILE`` writes the config for the local host,
chosen by ``--host``, else by an address this machine owns, else by the
machine's host name up to the first dot.  ``CALICO_IPIP`` and
``CALICO_ROUTE_REFLECTORS`` override the cluster file's settings, as they
do for Felix.  A changed setting takes effect when the config is rendered
again and BIRD reloads it (``birdc configure``): BIRD then re-exports its
routes through the new filters without dropping a session.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from typing import Iterable, Sequence

import netaddr

from calico.common.datafiles import (IPIP_ALWAYS, IPIP_NEVER, Cluster, DataFileError, Host, load_cluster,
                                     settings_with_env, write_file_atomically)
from calico.common.kernel_names import IFACE_PREFIX
from calico.common.kernel_names import ROUTE_PROTO as FELIX_ROUTE_PROTO
from calico.common.netns import owned_addresses
from calico.common.validation import ValidationError, short_hostname


KERNEL_SCAN_SECS = 10
BGP_TIMERS = {
    "hold time": "9",
    "keepalive time": "3",
    "connect delay time": "1",
    "connect retry time": "2",
    "error wait time": "1, 10",
}


class BirdConfigError(ValueError):
    """The config cannot be rendered; str() is one line."""


def protocol_name(host: Host, taken: set[str]) -> str:
    """A BIRD identifier for the session to ``host`` (letters, digits, _)."""
    base = "peer_" + re.sub(r"[^A-Za-z0-9_]", "_", host.name)
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


TUNNEL_DEVICE = "tunl0"


def _pool_set(pool: str) -> str:
    return f"[ {pool}+ ]"


def _kernel_protocol(family: str, pool: str, felix_proto: int) -> list[str]:
    install = ["accept;"]
    if family == "ipv4":
        # A next hop that resolved through tunl0 (calico_ipip below) resolved
        # to the device alone: give the route the host as gateway, with the
        # onlink flag (it is on no connected subnet).  tunl0 is up whenever
        # this runs: the route through it is valid only then.
        install = [f'if ifname = "{TUNNEL_DEVICE}" then {{ onlink = true; gw = bgp_next_hop; }}', "accept;"]
    return [
        f"# Learn Felix's routes (proto {felix_proto}) inside the pool, and routes outside it",
        "# (to resolve BGP next hops; never exported); install what BGP brings.",
        f"filter calico_kernel_in_{family} {{",
        f"  if krt_source = {felix_proto} && net ~ {_pool_set(pool)} then accept;",
        f"  if !(net ~ {_pool_set(pool)}) then accept;",
        "  reject;",
        "}",
        f"filter calico_kernel_out_{family} {{",
        f"  if source = RTS_BGP && net ~ {_pool_set(pool)} then {{",
        *(f"    {line}" for line in install),
        "  }",
        "  reject;",
        "}",
        f"protocol kernel kernel_{family} {{",
        "  learn;",
        "  persist;",
        f"  scan time {KERNEL_SCAN_SECS};",
        f"  {family} {{",
        f"    import filter calico_kernel_in_{family};",
        f"    export filter calico_kernel_out_{family};",
        "  };",
        "}",
        "",
    ]


def tunnelled_hosts(cluster: Cluster, local: Host, subnet: str | None) -> list[Host]:
    """The hosts whose containers ``local`` reaches through tunl0."""
    mode = cluster.settings.ipip
    others = [h for h in cluster.hosts if h != local and ":" not in h.ip]
    if mode == IPIP_NEVER:
        return []
    if mode == IPIP_ALWAYS:
        return others
    if subnet is None:
        raise BirdConfigError(f"ipip cross-subnet: the subnet of {local.name}'s address {local.ip} is not known "
                              "(it is not on this machine; give --subnet)")
    network = netaddr.IPNetwork(subnet)
    return [h for h in others if netaddr.IPAddress(h.ip) not in network]


def _ipip_protocol(hosts: list[Host], mode: str) -> list[str]:
    if not hosts:
        return []
    return [
        f"# IP-in-IP ({mode}): these hosts' addresses resolve through tunl0 while it is up, so",
        "# their routes go 'via HOST dev tunl0 onlink'; while it is down or missing, through",
        "# the fabric as any other.  Never exported (the export filters take pool routes only).",
        "protocol static calico_ipip {",
        "  ipv4;",
        *(f'  route {h.ip}/32 via "{TUNNEL_DEVICE}";  # {h.name}' for h in hosts),
        "}",
        "",
    ]


def peers_of(cluster: Cluster, local: Host) -> list[tuple[Host, bool]]:
    """(peer, is an rr client of ours) for every BGP session of ``local``."""
    reflectors = [h for h in cluster.hosts if h.name in cluster.settings.route_reflectors]
    others = [h for h in cluster.hosts if h != local]
    if not reflectors:
        return [(h, False) for h in others]
    if local in reflectors:
        return [(h, h not in reflectors) for h in others]
    return [(h, False) for h in reflectors]


def rr_cluster_id(cluster: Cluster) -> str | None:
    """One cluster id shared by every reflector: the first reflector's address."""
    for host in cluster.hosts:
        if host.name in cluster.settings.route_reflectors:
            return host.ip
    return None


def render(cluster: Cluster, local: Host, felix_proto: int = FELIX_ROUTE_PROTO,
           log_path: str | None = None, subnet: str | None = None) -> str:
    """The BIRD 2 config text for ``local``, one of ``cluster``'s hosts.

    ``subnet`` is the network of ``local``'s address (needed for ``ipip =
    cross-subnet``: hosts outside it are reached through the tunnel)."""
    if local not in cluster.hosts:
        raise BirdConfigError(f"host {local.name} ({local.ip}) is not in the cluster file")
    for host in cluster.hosts:
        if ":" in host.ip:
            raise BirdConfigError(f"host {host.name}: BGP sessions run over IPv4; {host.ip} is IPv6")
    settings = cluster.settings
    pool4, pool6 = settings.pool, settings.pool6
    asn = settings.as_number
    missing = [name for name in settings.route_reflectors if cluster.host(name) is None]
    if missing:
        raise BirdConfigError(f"route_reflectors: {missing[0]!r} is not a [felix] host")
    peers = peers_of(cluster, local)
    cluster_id = rr_cluster_id(cluster)
    log_target = f'"{log_path}"' if log_path else "stderr"
    role = ("route reflector" if any(client for _, client in peers)
            else "reflector client" if settings.route_reflectors else "full mesh")
    lines = [
        f"# BIRD 2 config for {local.name} ({local.ip}), generated by calico-bird-config.",
        f"# AS {asn}; pools {pool4} and {pool6}; ipip {settings.ipip}; {role}.",
        f"# iBGP peers: {', '.join(h.name + (' (rr client)' if c else '') for h, c in peers) or 'none'}.",
        f"log {log_target} all;",
        f"router id {local.ip};",
        "",
        "protocol device {",
        f"  scan time {KERNEL_SCAN_SECS};",
        "}",
        "",
        "# Connected subnets, to resolve BGP next hops (never exported: the BGP and kernel",
        "# export filters take pool routes only).",
        "protocol direct {",
        "  ipv4;",
        "  ipv6;",
        f'  interface -"{IFACE_PREFIX}*", -"{TUNNEL_DEVICE}", "*";',
        "}",
        "",
    ]
    lines += _kernel_protocol("ipv4", pool4, felix_proto)
    lines += _kernel_protocol("ipv6", pool6, felix_proto)
    lines += _ipip_protocol(tunnelled_hosts(cluster, local, subnet), settings.ipip)
    lines += [
        f"filter calico_pool_ipv4 {{ if net ~ {_pool_set(pool4)} then accept; reject; }}",
        f"filter calico_pool_ipv6 {{ if net ~ {_pool_set(pool6)} then accept; reject; }}",
        "",
        "template bgp calico_peer {",
        f"  local {local.ip} as {asn};",
        "  multihop;",
        *(f"  {key} {value};" for key, value in BGP_TIMERS.items()),
        "  ipv4 {",
        "    gateway recursive;",
        "    import filter calico_pool_ipv4;",
        "    export filter calico_pool_ipv4;",
        "  };",
        "  ipv6 {",
        "    gateway recursive;",
        "    import filter calico_pool_ipv6;",
        "    export filter calico_pool_ipv6;",
        "  };",
        "}",
        "",
    ]
    taken: set[str] = set()
    for peer, client in peers:
        # calico-status reads the peer's type from the description.
        kind = " (route reflector client)" if client else (
            " (route reflector)" if peer.name in settings.route_reflectors else "")
        lines += [
            f"protocol bgp {protocol_name(peer, taken)} from calico_peer {{",
            f"  description \"{peer.name}{kind}\";",
            f"  neighbor {peer.ip} as {asn};",
            *(["  rr client;", f"  rr cluster id {cluster_id};"] if client else []),
            "}",
            "",
        ]
    return "\n".join(lines)


def choose_local_host(cluster: Cluster, name: str | None, owned_addresses: Iterable[str],
                      hostname: str) -> Host:
    """The cluster's host that is this machine: by name, by address, by host name."""
    if name:
        host = cluster.host(name)
        if host is None:
            raise BirdConfigError(f"host {name!r} is not a [felix] host in the cluster file "
                                  f"(hosts: {', '.join(h.name for h in cluster.hosts)})")
        return host
    owned = set(owned_addresses)
    for host in cluster.hosts:
        if host.ip in owned:
            return host
    host = cluster.host(short_hostname(hostname))
    if host is None:
        raise BirdConfigError(
            f"cannot tell which host this is: no cluster host owns one of this machine's addresses "
            f"and host name {short_hostname(hostname)!r} is not listed (use --host)")
    return host


def local_subnet(address: str) -> str | None:
    """The network of ``address`` on this machine's interfaces, if it has it."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for addr in ipr.get_addr():
            if addr.get_attr("IFA_ADDRESS") == address or addr.get_attr("IFA_LOCAL") == address:
                return str(netaddr.IPNetwork(f"{address}/{addr['prefixlen']}").cidr)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calico-bird-config",
                                     description="Render this host's BIRD 2 config from the cluster file.")
    parser.add_argument("cluster_file", help="the cluster file (felix.txt)")
    parser.add_argument("--host", help="the local host's name in the cluster file")
    parser.add_argument("--output", help="write here (atomically) instead of standard output")
    parser.add_argument("--log-file", help="BIRD's log file (default: standard error)")
    parser.add_argument("--subnet", help="the network of this host's address (default: read from the "
                                         "interface holding it); used by ipip = cross-subnet")
    parser.add_argument("--felix-proto", type=int, default=FELIX_ROUTE_PROTO,
                        help=f"routing protocol number on Felix's routes (default {FELIX_ROUTE_PROTO})")
    args = parser.parse_args(argv)
    try:
        cluster = load_cluster(args.cluster_file)
        cluster.settings = settings_with_env(cluster.settings, dict(os.environ))
        local = choose_local_host(cluster, args.host, owned_addresses() if not args.host else (),
                                  socket.gethostname())
        subnet = args.subnet or local_subnet(local.ip)
        text = render(cluster, local, args.felix_proto, args.log_file, subnet)
    except (DataFileError, BirdConfigError, ValidationError) as exc:
        print(f"calico-bird-config: {exc}", file=sys.stderr)
        return 1
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        write_file_atomically(args.output, text)
        print(f"wrote BIRD config for {local.name} ({local.ip}) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
