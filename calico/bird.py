"""BIRD 2 configuration for one host, rendered from the cluster file.

BIRD is the part that spreads endpoint routes between hosts.  Felix programs
a /32 (or /128) route per local endpoint with its own routing-protocol
number; BIRD's kernel protocol learns exactly those (``learn``, filtered on
``krt_source``), iBGP carries them to every other host, and each host's
kernel protocol installs what BGP brought in.  Everything else in the
kernel -- the seed's ``unreachable <pool>`` route, the fabric's own routes,
whatever an operator adds -- is neither imported nor touched.

Choices, and why:

* **Full iBGP mesh, direct sessions, ``next hop self``, ``gateway direct``**:
  hosts share one L2 segment (the seed's GCE hosts are made to look so by
  the peer-address trick), so a route's next hop is simply the owning host.
  No IGP table is needed to resolve next hops.
* **Filters on both sides, pool only**: import and export accept only
  prefixes inside the pool (IPv4 ``pool``, IPv6 ``pool6``), so a mistake on
  one host cannot pull default or fabric routes into the others.
* **Speed**: BIRD hears kernel route changes through netlink notifications
  as they happen, and BGP sends updates at once (BIRD has no minimum route
  advertisement interval), so a Felix route reaches the other hosts within
  milliseconds.  The kernel ``scan time`` only bounds recovery from a lost
  notification.  BGP timers are short (connect retry 2 s, error wait 1-10 s,
  hold 9 s) so a restarted BIRD is back in seconds instead of the defaults'
  minutes.
* **``persist``**: routes stay in the kernel while BIRD is down, so
  restarting BIRD does not cut traffic; on restart it takes them over.
* **IPv6** rides the same sessions (multiprotocol BGP over the IPv4 session
  between the hosts' addresses).  The IPv6 next hop is the host's global
  IPv6 address on the fabric interface, which BIRD picks itself when the
  interface has one; a host without one simply exchanges no usable IPv6
  routes, and IPv4 is unaffected.

``calico-bird-config CLUSTER_FILE`` writes the config for the local host,
chosen by ``--host``, else by an address this machine owns, else by the
machine's host name up to the first dot.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from typing import Iterable, Sequence

from calico.common.datafiles import Cluster, DataFileError, Host, load_cluster, write_file_atomically
from calico.common.validation import short_hostname

try:  # Felix owns the number it stamps on its routes; use its constant when present.
    from calico.felix.routes import ROUTE_PROTO as FELIX_ROUTE_PROTO  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only before Felix's dataplane exists
    FELIX_ROUTE_PROTO = 80

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


def _pool_set(pool: str) -> str:
    return f"[ {pool}+ ]"


def _kernel_protocol(family: str, pool: str, felix_proto: int) -> list[str]:
    return [
        f"# Learn only Felix's routes (proto {felix_proto}) inside the pool; install what BGP brings.",
        f"filter calico_kernel_in_{family} {{",
        f"  if krt_source = {felix_proto} && net ~ {_pool_set(pool)} then accept;",
        "  reject;",
        "}",
        f"filter calico_kernel_out_{family} {{",
        f"  if source = RTS_BGP && net ~ {_pool_set(pool)} then accept;",
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


def render(cluster: Cluster, local: Host, felix_proto: int = FELIX_ROUTE_PROTO,
           log_path: str | None = None) -> str:
    """The BIRD 2 config text for ``local``, one of ``cluster``'s hosts."""
    if local not in cluster.hosts:
        raise BirdConfigError(f"host {local.name} ({local.ip}) is not in the cluster file")
    if ":" in local.ip:
        raise BirdConfigError(f"host {local.name}: BGP sessions run over IPv4; {local.ip} is IPv6")
    pool4, pool6 = cluster.settings.pool, cluster.settings.pool6
    asn = cluster.settings.as_number
    peers = [h for h in cluster.hosts if h != local]
    log_target = f'"{log_path}"' if log_path else "stderr"
    lines = [
        f"# BIRD 2 config for {local.name} ({local.ip}), generated by calico-bird-config.",
        f"# AS {asn}; pools {pool4} and {pool6}; iBGP peers: {', '.join(h.name for h in peers) or 'none'}.",
        f"log {log_target} all;",
        f"router id {local.ip};",
        "",
        "protocol device {",
        f"  scan time {KERNEL_SCAN_SECS};",
        "}",
        "",
    ]
    lines += _kernel_protocol("ipv4", pool4, felix_proto)
    lines += _kernel_protocol("ipv6", pool6, felix_proto)
    lines += [
        f"filter calico_pool_ipv4 {{ if net ~ {_pool_set(pool4)} then accept; reject; }}",
        f"filter calico_pool_ipv6 {{ if net ~ {_pool_set(pool6)} then accept; reject; }}",
        "",
        "template bgp calico_peer {",
        f"  local {local.ip} as {asn};",
        "  direct;",
        *(f"  {key} {value};" for key, value in BGP_TIMERS.items()),
        "  ipv4 {",
        "    next hop self;",
        "    gateway direct;",
        "    import filter calico_pool_ipv4;",
        "    export filter calico_pool_ipv4;",
        "  };",
        "  ipv6 {",
        "    next hop self;",
        "    gateway direct;",
        "    import filter calico_pool_ipv6;",
        "    export filter calico_pool_ipv6;",
        "  };",
        "}",
        "",
    ]
    taken: set[str] = set()
    for peer in peers:
        if ":" in peer.ip:
            raise BirdConfigError(f"host {peer.name}: BGP sessions run over IPv4; {peer.ip} is IPv6")
        lines += [
            f"protocol bgp {protocol_name(peer, taken)} from calico_peer {{",
            f"  description \"{peer.name}\";",
            f"  neighbor {peer.ip} as {asn};",
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


def owned_addresses() -> set[str]:
    """Every address configured in this network namespace (netlink)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {addr.get_attr("IFA_ADDRESS") for addr in ipr.get_addr()} - {None}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calico-bird-config",
                                     description="Render this host's BIRD 2 config from the cluster file.")
    parser.add_argument("cluster_file", help="the cluster file (felix.txt)")
    parser.add_argument("--host", help="the local host's name in the cluster file")
    parser.add_argument("--output", help="write here (atomically) instead of standard output")
    parser.add_argument("--log-file", help="BIRD's log file (default: standard error)")
    parser.add_argument("--felix-proto", type=int, default=FELIX_ROUTE_PROTO,
                        help=f"routing protocol number on Felix's routes (default {FELIX_ROUTE_PROTO})")
    args = parser.parse_args(argv)
    try:
        cluster = load_cluster(args.cluster_file)
        local = choose_local_host(cluster, args.host, owned_addresses() if not args.host else (),
                                  socket.gethostname())
        text = render(cluster, local, args.felix_proto, args.log_file)
    except (DataFileError, BirdConfigError) as exc:
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
