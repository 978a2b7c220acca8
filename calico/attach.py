"""Attach a container to the Calico network, or detach it.

This is the one piece of code that networks a container: the lab calls it
in-process, and ``network_container.sh`` runs it as ``calico-attach`` inside
the calico:felix image (``--net=host --pid=host --privileged``).  Attaching:

1. check everything first -- id, groups, host name, each address (inside the
   pool of its family, not already in another endpoint file in the data
   directory), the host-side name ``tap`` + id[:11] free, the container's
   namespace present and without an ``eth0`` -- and fail with one line,
   having changed nothing;
2. create a veth pair whose host end is the tap and whose other end is born
   inside the container's namespace as ``eth0`` with a generated MAC;
3. give eth0 each address as a /32 (/128) and a default route out of eth0
   via a fixed on-link gateway (169.254.1.1, fe80::1) whose MAC is the
   tap's, entered as a permanent neighbour: the container never ARPs, so a
   packet to an endpoint whose route has just arrived goes out at once
   rather than after a failed ARP's 1 s retry (with the seed's ``default
   dev eth0`` each new destination needs its own ARP, answered by proxy
   ARP only once the host has the route); bring both ends up;
4. write the endpoint file atomically (temporary name, then rename), so the
   plugin never reads half of it.  The file is written last: the plugin
   learns of the endpoint only once its interface exists.

If step 2 or 3 fails, the tap is deleted again (its peer goes with it).
Detaching deletes the endpoint file first (Felix then withdraws the route)
and then the tap.

Kernel work goes through netlink (pyroute2), never through a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import netaddr

from calico.common.datafiles import (
    CLUSTER_FILE_NAME,
    DATA_DIR as DEFAULT_DATA_DIR,
    DataFileError,
    Endpoint,
    endpoint_file_stem,
    endpoint_file_text,
    load_cluster,
    parse_data_file,
    write_file_atomically,
)
from calico.common.kernel_names import interface_name
from calico.common.netns import entered as entered_netns
from calico.common.validation import (
    DEFAULT_POOL,
    DEFAULT_POOL6,
    ValidationError,
    check_endpoint_id,
    check_group_name,
    check_hostname,
    host_cidr,
    parse_cidr,
    parse_ip,
    parse_mac,
    short_hostname,
)

if TYPE_CHECKING:
    from pyroute2 import IPRoute

CONTAINER_IFACE = "eth0"
# The container's default routes point at these, on-link via eth0, with a
# permanent neighbour entry giving the tap's MAC.  fe80::1 is also what Felix
# answers for by proxy NDP on every tap (calico.felix.routes.V6_GATEWAY).
IPV4_GATEWAY = "169.254.1.1"
IPV6_GATEWAY = "fe80::1"
IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x04


class AttachError(RuntimeError):
    """An attach or detach that cannot be done; str() is one line."""


@dataclass(frozen=True)
class AttachRequest:
    netns_path: str
    endpoint_id: str
    addrs: tuple[str, ...]
    host: str
    groups: tuple[str, ...]
    data_dir: str
    mac: str
    pools: tuple[str, ...]

    @property
    def interface(self) -> str:
        return interface_name(self.endpoint_id)

    @property
    def file_path(self) -> str:
        return os.path.join(self.data_dir, endpoint_file_stem(self.addrs[0]) + ".txt")

    def endpoint(self) -> Endpoint:
        return Endpoint(self.endpoint_id, self.addrs, self.mac, self.host, self.groups)


@dataclass(frozen=True)
class AttachResult:
    request: AttachRequest
    written_at: float  # time.time() just after the endpoint file was renamed into place


def generated_mac(endpoint_id: str) -> str:
    """A stable, locally administered unicast MAC derived from the id."""
    digest = bytearray(hashlib.sha256(endpoint_id.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in digest)


def build_request(netns_path: str, endpoint_id: str, ips: Iterable[str], host: str,
                  groups: Iterable[str], data_dir: str, pools: Iterable[str],
                  mac: str | None = None) -> AttachRequest:
    """Check the caller's values and return them canonicalised (pure)."""
    try:
        endpoint_id = check_endpoint_id(endpoint_id)
        host = check_hostname(short_hostname(host))
        group_list = tuple(check_group_name(g) for g in groups)
        if not group_list:
            raise ValidationError("at least one --group is needed")
        pool_nets = [parse_cidr(p) for p in pools]
        addrs: list[str] = []
        for ip in ips:
            addr = parse_ip(ip)
            family_pools = [p for p in pool_nets if p.version == addr.version]
            if not any(addr in p for p in family_pools):
                raise ValidationError(
                    f"IP {addr} is outside the pool ({', '.join(str(p) for p in family_pools) or 'none for IPv%d' % addr.version})")
            if str(addr) in addrs:
                raise ValidationError(f"IP {addr} is given twice")
            addrs.append(str(addr))
        if not addrs:
            raise ValidationError("at least one --ip is needed")
        mac = parse_mac(mac) if mac else generated_mac(endpoint_id)
    except ValidationError as exc:
        raise AttachError(str(exc)) from None
    return AttachRequest(netns_path, endpoint_id, tuple(addrs), host, group_list, data_dir, mac,
                         tuple(str(p) for p in pool_nets))


def check_conflicts(request: AttachRequest, existing: Iterable[Endpoint],
                    links_in_use: Iterable[str]) -> None:
    """Refuse an attach that would clash with what is already there (pure)."""
    if request.interface in set(links_in_use):
        raise AttachError(f"interface {request.interface} already exists on this host")
    for endpoint in existing:
        clash = set(endpoint.addrs) & set(request.addrs)
        if clash:
            raise AttachError(f"IP {sorted(clash)[0]} is already used by endpoint {endpoint.endpoint_id} "
                              f"in {endpoint.source or 'the data directory'}")
        if interface_name(endpoint.endpoint_id) == request.interface:
            raise AttachError(f"endpoint {endpoint.endpoint_id} in {endpoint.source} already uses "
                              f"interface {request.interface} (ids must differ in their first 11 characters)")


def read_endpoints(data_dir: str) -> list[Endpoint]:
    """Every endpoint in the data directory's files; unreadable files are skipped."""
    endpoints: list[Endpoint] = []
    try:
        names = sorted(os.listdir(data_dir))
    except FileNotFoundError:
        return endpoints
    for name in names:
        if name.endswith(".txt"):
            try:
                endpoints.extend(parse_data_file(os.path.join(data_dir, name)).endpoints)
            except DataFileError:
                continue
    return endpoints


def pools_from_cluster(data_dir: str) -> tuple[str, ...]:
    """The pools named by the cluster file in the data directory, else the defaults."""
    path = os.path.join(data_dir, CLUSTER_FILE_NAME)
    if os.path.exists(path):
        try:
            settings = load_cluster(path).settings
            return settings.pool, settings.pool6
        except DataFileError:
            pass
    return DEFAULT_POOL, DEFAULT_POOL6


@contextlib.contextmanager
def _iproute(netns_path: str | None) -> Iterator[IPRoute]:
    """A netlink socket in the namespace at ``netns_path`` (None: this one).

    A netlink socket stays in the namespace it was opened in, so it is opened
    with this thread moved there for the moment (the same on every pyroute2
    version; 0.7 has no ``netns`` argument), and used from here.  Opening
    the path never creates a namespace that is not there."""
    from pyroute2 import IPRoute

    if netns_path is None:
        ipr = IPRoute()
    else:
        with entered_netns(netns_path):
            ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _link_names(ipr) -> set[str]:
    return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def attach(request: AttachRequest, host_netns: str | None = None) -> AttachResult:
    """Network the container and write its endpoint file (see module doc).

    ``host_netns`` is the path of the host's namespace, None for the
    namespace this process runs in (the Docker case)."""
    if not os.path.exists(request.netns_path):
        raise AttachError(f"container namespace {request.netns_path} does not exist")
    if not os.path.isdir(request.data_dir):
        raise AttachError(f"data directory {request.data_dir} does not exist")
    if os.path.exists(request.file_path):
        raise AttachError(f"endpoint file {request.file_path} already exists")
    with _iproute(host_netns) as host_ipr, _iproute(request.netns_path) as ctr_ipr:
        check_conflicts(request, read_endpoints(request.data_dir), _link_names(host_ipr))
        if CONTAINER_IFACE in _link_names(ctr_ipr):
            raise AttachError(f"container namespace {request.netns_path} already has {CONTAINER_IFACE}")
        ns_fd = os.open(request.netns_path, os.O_RDONLY)
        try:
            host_ipr.link("add", ifname=request.interface, kind="veth",
                          peer={"ifname": CONTAINER_IFACE, "net_ns_fd": ns_fd, "address": request.mac})
        except Exception as exc:
            raise AttachError(f"cannot create veth {request.interface}: {exc}") from None
        finally:
            os.close(ns_fd)
        try:
            tap_index = host_ipr.link_lookup(ifname=request.interface)[0]
            tap_mac = host_ipr.get_links(tap_index)[0].get_attr("IFLA_ADDRESS")
            _configure_container(ctr_ipr, request, tap_mac)
            host_ipr.link("set", index=tap_index, state="up")
        except Exception as exc:
            _delete_link(host_ipr, request.interface)
            raise AttachError(f"cannot configure {request.interface}/{CONTAINER_IFACE}: {exc}") from None
    write_file_atomically(request.file_path, endpoint_file_text(request.endpoint()))
    return AttachResult(request, time.time())


def _configure_container(ipr, request: AttachRequest, tap_mac: str) -> None:
    index = ipr.link_lookup(ifname=CONTAINER_IFACE)[0]
    ipr.link("set", index=index, state="up")
    for addr in request.addrs:
        version = netaddr.IPAddress(addr).version
        prefix = 32 if version == 4 else 128
        extra = {} if version == 4 else {"flags": IFA_F_NODAD}  # usable at once
        ipr.addr("add", index=index, address=addr, prefixlen=prefix, **extra)
    versions = {netaddr.IPAddress(a).version for a in request.addrs}
    for version, gateway in ((4, IPV4_GATEWAY), (6, IPV6_GATEWAY)):
        if version not in versions:
            continue
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        # The gateway is the tap itself: a permanent neighbour entry means the
        # container never has to resolve it, so its first packet to a new
        # destination leaves at once instead of waiting on ARP retries.
        ipr.neigh("add", dst=gateway, lladdr=tap_mac, ifindex=index, state=NUD_PERMANENT, family=family)
        ipr.route("add", dst="0.0.0.0/0" if version == 4 else "::/0", gateway=gateway, oif=index,
                  flags=RTNH_F_ONLINK, family=family)


def _delete_link(ipr, name: str) -> bool:
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    ipr.link("del", index=found[0])
    return True


def detach(endpoint_id: str, data_dir: str, host_netns: str | None = None) -> list[str]:
    """Remove the endpoint's file(s) and its tap; returns what was removed."""
    try:
        endpoint_id = check_endpoint_id(endpoint_id)
    except ValidationError as exc:
        raise AttachError(str(exc)) from None
    files = [os.path.join(data_dir, ep.source) for ep in read_endpoints(data_dir)
             if ep.endpoint_id == endpoint_id]
    tap = interface_name(endpoint_id)
    with _iproute(host_netns) as ipr:
        if not files and tap not in _link_names(ipr):
            raise AttachError(f"nothing to detach: no endpoint file for {endpoint_id} in {data_dir} "
                              f"and no interface {tap}")
        removed = []
        for path in sorted(set(files)):
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
        if _delete_link(ipr, tap):
            removed.append(tap)
    return removed


def netns_path_for(netns: str | None, pid: int | None) -> str:
    if (netns is None) == (pid is None):
        raise AttachError("give exactly one of --netns PATH and --pid PID")
    if pid is not None:
        return f"/proc/{pid}/ns/net"
    assert netns is not None
    return netns if "/" in netns else os.path.join("/var/run/netns", netns)


def local_hostname(data_dir: str) -> str:
    """This host's name as Felix resolves it: CALICO_FELIX_HOSTNAME,
    CALICO_HOSTS or the cluster file (by an address this host owns), else
    the machine's host name up to the first dot."""
    from calico.common.netns import owned_addresses
    from calico.common.config import ConfigError, load_config, resolve_peers

    env = dict(os.environ)
    env.setdefault("CALICO_CLUSTER_FILE", os.path.join(data_dir, CLUSTER_FILE_NAME))
    try:
        config = resolve_peers(load_config(None, env), ["felix_hostname"], env, owned_addresses)
    except ConfigError as exc:
        raise AttachError(str(exc)) from None
    return config.felix_hostname


def _split(values: Sequence[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calico-attach",
                                     description="Attach a container to the Calico network, or detach it.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    att = verbs.add_parser("attach", help="create the veth pair and write the endpoint file")
    att.add_argument("--netns", help="the container's network namespace (a path, or a name in /var/run/netns)")
    att.add_argument("--pid", type=int, help="a process in the container (uses /proc/PID/ns/net)")
    att.add_argument("--id", required=True, help="endpoint id (the container id)")
    att.add_argument("--ip", action="append", required=True, help="address (repeat or comma-separate)")
    att.add_argument("--group", action="append", required=True, help="security group (repeat or comma-separate)")
    att.add_argument("--mac", help="the container's MAC (default: generated from the id)")
    att.add_argument("--host", help="this host's name (default: resolved as Felix does)")
    att.add_argument("--pool", action="append", help="allowed pool (default: the cluster file's pool and pool6)")
    det = verbs.add_parser("detach", help="remove the endpoint file and the tap")
    det.add_argument("--id", required=True, help="endpoint id")
    for sub in (att, det):
        sub.add_argument("--data-dir", default=os.environ.get("CALICO_DATA_DIR", DEFAULT_DATA_DIR),
                         help="data directory (default $CALICO_DATA_DIR or /opt/plugin/data)")
    args = parser.parse_args(argv)
    try:
        if args.verb == "attach":
            netns_path = netns_path_for(args.netns, args.pid)
            host = args.host or local_hostname(args.data_dir)
            pools = _split(args.pool) if args.pool else pools_from_cluster(args.data_dir)
            request = build_request(netns_path, args.id, _split(args.ip), host, _split(args.group),
                                    args.data_dir, pools, args.mac)
            attach(request)
            print(f"attached {request.endpoint_id}: {request.interface} <-> {CONTAINER_IFACE} in "
                  f"{request.netns_path} ({', '.join(host_cidr(netaddr.IPAddress(a)) for a in request.addrs)}, "
                  f"mac {request.mac}); wrote {request.file_path} (host {request.host}, "
                  f"groups {','.join(request.groups)})")
        else:
            removed = detach(args.id, args.data_dir)
            print(f"detached {args.id}: removed {', '.join(removed)}")
    except AttachError as exc:
        print(f"calico-attach: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
