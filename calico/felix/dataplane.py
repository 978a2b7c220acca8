"""Felix's dataplane: make the kernel match the desired endpoints, in one pass.

The agent hands ``apply`` the *whole* desired state (endpoint id ->
``EndpointSpec``) whenever something changed; the dataplane computes the
full desired kernel state in pure code (``ipsets``, ``iptables_layout``),
and each writer compares it with what it last wrote (or, on the first pass
and after ``forget_kernel_cache``, with a fresh read of the kernel) and
writes only the difference:

1. ipsets: new sets created, changed ones replaced by fill-and-swap;
2. routes, neighbour entries and interface sysctls of endpoints whose
   interface exists (the others are returned, for the agent to retry);
3. iptables, per family: one commit with new/changed rules, then deleted
   chains;
4. ipsets no longer referenced destroyed;
5. routes and neighbour entries of gone endpoints removed.

Sets come before the rules that reference them and go after the rules that
referenced them are gone (the order Go Felix uses).  A pass with nothing to
change writes nothing: every write goes through ``self.writes``, a
``WriteCounter``, which tests assert on.

If a pass raises, every writer forgets what it knew, and the next pass
re-reads the kernel and converges from wherever the failed one stopped.

Namespaces: a Dataplane binds to the network namespace of the thread that
creates it.  Each call enters that namespace (for the calling thread only)
if it is not already there, because every means it uses acts on the
caller's namespace at the time: pyroute2 and libiptc sockets when opened,
/proc/sys on each open, and child processes (iptables-restore, ipset) when
forked.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator, Mapping

from calico.common.validation import ValidationError, check_endpoint_id, parse_ip, parse_mac
from calico.felix import iptables_layout
from calico.felix.backend_check import check_backends
from calico.felix.cluster import ClusterView
from calico.felix.cluster_dataplane import ClusterDataplane
from calico.felix.ipset_writer import IpsetWriter
from calico.felix.ipsets import SetSpec, endpoint_sets
from calico.felix.iptables_writer import AUTO, IptablesWriter
from calico.felix.kernel_writes import WriteCounter
from calico.felix.routes import HOST_SYSCTLS, RouteWriter, Sysctls
from calico.felix.state import EndpointSpec

log = logging.getLogger(__name__)

_NETNS_SELF = "/proc/thread-self/ns/net"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _netns_identity(path_or_fd: str | int) -> tuple[int, int]:
    st = os.stat(path_or_fd)
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class _EndpointLayout:
    """What one endpoint needs: its sets and, per family it has addresses in,
    its chains (the dispatch rules are derived from the spec)."""

    spec: EndpointSpec
    sets: tuple[SetSpec, ...]
    chains: dict[int, dict[str, tuple[str, ...]]]


class Dataplane:
    def __init__(self, ip_versions: tuple[int, ...] = (4, 6), writes: WriteCounter | None = None,
                 iptables_mode: str = AUTO, ipset_mode: str = AUTO, library_max_rules: int = 64,
                 library_max_set_ops: int = 200, sysctl_root: str = "/proc/sys",
                 cluster: ClusterView | None = None) -> None:
        self.versions = tuple(sorted(set(ip_versions)))
        if not self.versions or not set(self.versions) <= {4, 6}:
            raise ValueError(f"ip_versions must be 4 and/or 6, not {ip_versions!r}")
        if 6 in self.versions and not os.path.isdir(os.path.join(sysctl_root, "net/ipv6")):
            log.warning("IPv6 is disabled in this kernel: programming IPv4 only")
            self.versions = tuple(v for v in self.versions if v != 6)
            if not self.versions:
                raise ValueError("IPv6 only was asked for, but IPv6 is disabled in this kernel")
        self.writes = writes if writes is not None else WriteCounter()
        self._netns_fd = os.open(_NETNS_SELF, os.O_RDONLY)
        self._netns = _netns_identity(self._netns_fd)
        self.sysctls = Sysctls(self.writes, sysctl_root)
        self.iptables = {v: IptablesWriter(v, self.writes, iptables_mode, library_max_rules)
                         for v in self.versions}
        self.ipsets = IpsetWriter(self.writes, ipset_mode, library_max_set_ops)
        self.routes = RouteWriter(self.writes, self.versions, self.sysctls)
        # Outgoing NAT and IP-in-IP: cluster-wide, not per endpoint.
        self.cluster = ClusterDataplane(self.versions, self.writes, cluster, iptables_mode, library_max_rules)
        self._memo: dict[str, _EndpointLayout | EndpointSpec] = {}  # spec only: unusable
        self._collisions: set[str] = set()

    # -- the agent's interface -------------------------------------------

    def start(self) -> None:
        """One-time host set-up (idempotent): forwarding on, Felix's top-level
        chains and the INPUT/FORWARD jumps, and the iptables backend check.

        Existing Felix chains are left as they are, so a restarted Felix keeps
        enforcing the old state until its first ``apply``; on a fresh host
        the dispatch chains start out dropping everything from taps."""
        with self._bound():
            check_backends(self.versions)
            for version in self.versions:
                for key, value in HOST_SYSCTLS[version]:
                    if self.sysctls.ensure(key, value):
                        log.info("set %s=%s", key.replace("/", "."), value)
                self.iptables[version].ensure_present(iptables_layout.static_chains())

    def apply(self, desired: Mapping[str, EndpointSpec]) -> set[str]:
        """Make the kernel match ``desired`` (the whole desired state); return
        the ids of endpoints whose interface does not exist yet."""
        started = time.perf_counter()
        before = self.writes.total()
        with self._bound():
            try:
                missing = self._apply(desired)
            except Exception:
                self._forget()
                raise
        written = self.writes.total() - before
        log.log(logging.INFO if written else logging.DEBUG,
                "dataplane pass: %d endpoints, %d kernel writes, %d without interface, %.0f ms",
                len(desired), written, len(missing), (time.perf_counter() - started) * 1000)
        return missing

    def set_cluster(self, view: ClusterView) -> None:
        """New cluster settings; the next ``apply`` programs them."""
        self.cluster.view = view

    def forget_kernel_cache(self) -> None:
        """Make the next ``apply`` read the whole kernel state again."""
        self._forget()

    def close(self) -> None:
        with self._bound():
            self.ipsets.close()
            self.routes.close()
            self.cluster.close()
        os.close(self._netns_fd)

    # -- the pass ------------------------------------------------------------

    def _apply(self, desired: Mapping[str, EndpointSpec]) -> set[str]:
        layouts = self._layouts_for(desired)
        endpoints = {key: layout.spec for key, layout in layouts.items()}
        wanted_sets = {s.name: s for layout in layouts.values() for s in layout.sets}
        wanted_sets.update(self.cluster.sets())
        self.ipsets.sync(wanted_sets)
        missing = self.routes.sync(endpoints)
        by_interface = sorted(layouts.values(), key=lambda layout: layout.spec.interface)
        for version in self.versions:
            chains: dict[str, tuple[str, ...]] = {}
            dispatch = []
            for layout in by_interface:
                if version in layout.chains:
                    chains.update(layout.chains[version])
                    dispatch.append(iptables_layout.dispatch_rules(layout.spec))
            chains.update(iptables_layout.static_chains([d[0] for d in dispatch], [d[1] for d in dispatch]))
            first = self.cluster.input_rules(version)
            if first:
                chains[iptables_layout.INPUT_CHAIN] = first + tuple(chains[iptables_layout.INPUT_CHAIN])
            self.iptables[version].sync(chains)
        self.cluster.sync()
        self.ipsets.delete_unused(wanted_sets)
        self.routes.delete_unused()
        return missing

    def _forget(self) -> None:
        for writer in self.iptables.values():
            writer.forget()
        self.ipsets.forget()
        self.routes.forget()
        self.cluster.forget()

    def _layouts_for(self, desired: Mapping[str, EndpointSpec]) -> dict[str, _EndpointLayout]:
        """Each usable endpoint's sets and chains, recomputed only for endpoints
        whose spec changed (so a pass over 1,000 unchanged endpoints is cheap).

        Ids, MACs and addresses are re-checked (they end up in chain names,
        restore input and netlink requests), and only one endpoint per
        interface name is used (ids sharing their first 11 characters would
        share a tap)."""
        memo: dict[str, _EndpointLayout | EndpointSpec] = {}
        usable: dict[str, _EndpointLayout] = {}
        by_interface: dict[str, str] = {}
        collisions: set[str] = set()
        for key in sorted(desired):
            spec = desired[key]
            known = self._memo.get(key)
            known_spec = known.spec if isinstance(known, _EndpointLayout) else known
            if known is not None and (known_spec is spec or known_spec == spec):
                layout = known if isinstance(known, _EndpointLayout) else None
            else:
                layout = self._layout(key, spec)
            memo[key] = layout if layout is not None else spec
            if layout is None:
                continue
            other = by_interface.setdefault(spec.interface, key)
            if other != key:
                collisions.add(f"endpoint {key} skipped: its interface {spec.interface} is also endpoint {other}'s")
                continue
            usable[key] = layout
        for warning in sorted(collisions - self._collisions):  # once, not every pass
            log.warning(warning)
        self._collisions = collisions
        self._memo = memo
        return usable

    def _layout(self, key: str, spec: EndpointSpec) -> _EndpointLayout | None:
        try:
            if not isinstance(spec, EndpointSpec) or spec.endpoint_id != key:
                raise ValidationError("endpoint id does not match its key")
            check_endpoint_id(spec.endpoint_id)
            if parse_mac(spec.mac) != spec.mac:
                raise ValidationError(f"MAC {spec.mac!r} is not canonical")
            for addr in spec.addrs:
                if str(parse_ip(addr)) != addr:
                    raise ValidationError(f"address {addr!r} is not canonical")
        except (ValidationError, AttributeError, TypeError) as exc:
            log.warning("endpoint %r skipped: %s", key, exc)  # once: the result is memoised
            return None
        sets = endpoint_sets(spec, self.versions)
        for warning in sets.warnings:
            log.warning(warning)
        chains = {version: iptables_layout.endpoint_chains(spec, version, sets.matches)
                  for version in self.versions if spec.addrs_of(version)}
        return _EndpointLayout(spec, tuple(sets.sets.values()), chains)

    @contextlib.contextmanager
    def _bound(self) -> Iterator[None]:
        """Run the body in this Dataplane's network namespace (this thread only)."""
        if _netns_identity(_NETNS_SELF) == self._netns:
            yield
            return
        own = os.open(_NETNS_SELF, os.O_RDONLY)
        try:
            _setns(self._netns_fd)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
