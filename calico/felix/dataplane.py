"""Felix's dataplane: make the kernel match the desired endpoints, in one pass.

The agent hands ``apply`` the *whole* desired state (endpoint id ->
``EndpointSpec``, and group -> member addresses) whenever something changed; the dataplane computes the
full desired kernel state in pure code (``host_layout``, from ``ipsets`` and
``iptables_layout``; each endpoint's part memoised by ``layout_memo``),
and each writer compares it with what it last wrote (or, on the first pass
and after ``forget_kernel_cache``, with a fresh read of the kernel) and
writes only the difference:

1. routes, neighbour entries and interface sysctls of endpoints whose
   interface exists (the others are returned, for the agent to retry, and
   cost nothing else: no sets, no chains);
2. ipsets: new sets created (an endpoint's CIDR sets are named by their
   content, so a changed rule is a new set); a group's shared set gains and
   loses members entry by entry; a set the kernel holds otherwise than
   written is replaced by fill-and-swap;
3. iptables, per family: one commit with new/changed rules, then deleted
   chains;
4. ipsets no longer referenced destroyed;
5. routes and neighbour entries of gone endpoints removed.

iptables means one backend, legacy or nft (``IptablesBackend``: ``auto``
picks the one Docker and the host use), decided once when the Dataplane is
made, in its namespace (``filter_tables``, ``backend_check``);
python-iptables is used for legacy only.

Sets come before the rules that reference them and go after the rules that
referenced them are gone (the order Go Felix uses).  A pass with nothing to
change writes nothing: every write goes through ``self.writes``, a
``WriteCounter``, which tests assert on.

One bad endpoint never stalls the host.  If the kernel refuses a pass,
every writer forgets what it knew and the endpoints whose spec changed
since the last good pass are bisected, each half applied together with the
known-good rest, until the endpoints at fault are found; each is logged
once and programmed fail-closed (chains holding a single DROP, no sets, no
routes) until its spec changes or ``retry_failed_endpoints`` (the periodic
resync).  The normal path pays nothing for this: the search starts only
after a failure.  A failure that remains with no changed endpoint applied
(the host-wide chains, a lock) is raised for the agent's back-off
(``isolation``).

Namespaces: a Dataplane binds to the network namespace of the thread that
creates it.  Each call enters that namespace (for the calling thread only)
if it is not already there, because every means it uses acts on the
caller's namespace at the time: pyroute2 and libiptc sockets when opened,
/proc/sys on each open, and child processes (iptables-restore, ipset) when
forked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import AbstractSet, Iterator, Mapping

from calico.common.netns import setns as _setns
from calico.felix import backend_check, host_layout, iptables_layout
from calico.felix.cluster import ClusterView
from calico.felix.cluster_dataplane import ClusterDataplane
from calico.felix.filter_tables import FilterTables
from calico.felix.ipset_writer import IpsetWriter
from calico.felix.iptables_writer import AUTO
from calico.felix.isolation import MAX_ISOLATION_ATTEMPTS, FailedEndpoint, FaultIsolation
from calico.felix.kernel_writes import WriteCounter
from calico.felix.layout_memo import EndpointLayouts, GroupSets
from calico.felix.routes import HOST_SYSCTLS, RouteWriter, Sysctls
from calico.felix.state import EndpointSpec, GroupAddrs

log = logging.getLogger(__name__)

_NETNS_SELF = "/proc/thread-self/ns/net"


def _netns_identity(path_or_fd: str | int) -> tuple[int, int]:
    st = os.stat(path_or_fd)
    return st.st_dev, st.st_ino


def _programmable_versions(ip_versions: tuple[int, ...], to_host_action: str, sysctl_root: str) -> tuple[int, ...]:
    """The families to program (those asked for, less IPv6 if the kernel has
    it disabled), once the settings are known to be valid."""
    versions = tuple(sorted(set(ip_versions)))
    if not versions or not set(versions) <= {4, 6}:
        raise ValueError(f"ip_versions must be 4 and/or 6, not {ip_versions!r}")
    if to_host_action not in iptables_layout.TO_HOST_ACTIONS:
        raise ValueError(f"endpoint_to_host_action must be one of {', '.join(iptables_layout.TO_HOST_ACTIONS)}, "
                         f"not {to_host_action!r}")
    if 6 in versions and not os.path.isdir(os.path.join(sysctl_root, "net/ipv6")):
        log.warning("IPv6 is disabled in this kernel: programming IPv4 only")
        versions = tuple(v for v in versions if v != 6)
        if not versions:
            raise ValueError("IPv6 only was asked for, but IPv6 is disabled in this kernel")
    return versions


class Dataplane:
    """The agent's handle on the kernel: it binds the parts to one network
    namespace and drives the pass; each part owns its own state."""

    def __init__(self, ip_versions: tuple[int, ...] = (4, 6), writes: WriteCounter | None = None,
                 iptables_mode: str = AUTO, ipset_mode: str = AUTO, library_max_rules: int = 64,
                 library_max_set_ops: int = 200, sysctl_root: str = "/proc/sys",
                 cluster: ClusterView | None = None,
                 endpoint_to_host_action: str = iptables_layout.DROP,
                 max_isolation_attempts: int = MAX_ISOLATION_ATTEMPTS,
                 iptables_backend: str = backend_check.AUTO) -> None:
        self.versions = _programmable_versions(ip_versions, endpoint_to_host_action, sysctl_root)
        self.to_host_action = endpoint_to_host_action
        self.writes = writes if writes is not None else WriteCounter()
        self._netns_fd = os.open(_NETNS_SELF, os.O_RDONLY)
        self._netns = _netns_identity(self._netns_fd)
        # The writers, each comparing the kernel with what it last wrote.
        self.sysctls = Sysctls(self.writes, sysctl_root)
        self.iptables = FilterTables(self.versions, self.writes, iptables_mode, library_max_rules, iptables_backend)
        self.ipsets = IpsetWriter(self.writes, ipset_mode, library_max_set_ops)
        self.routes = RouteWriter(self.writes, self.versions, self.sysctls)
        # Outgoing NAT and IP-in-IP: cluster-wide, not per endpoint.
        self.cluster = ClusterDataplane(self.versions, self.writes, cluster, iptables_mode, library_max_rules,
                                        iptables_backend=self.iptables.backend)
        # Pure state: what the passes compute, and what the kernel refused.
        self.layouts = EndpointLayouts(self.versions)
        self.group_sets = GroupSets()
        self.isolation = FaultIsolation(max_isolation_attempts)

    @property
    def iptables_backend(self) -> str:
        return self.iptables.backend

    @property
    def failed(self) -> dict[str, FailedEndpoint]:
        """The endpoints programmed fail-closed because the kernel refused their state."""
        return self.isolation.failed

    # -- the agent's interface -------------------------------------------

    def start(self) -> None:
        """One-time host set-up (idempotent): forwarding on, Felix's top-level
        chains and the INPUT/FORWARD jumps, and the other iptables backend
        checked (a warning if its FORWARD chain filters; Felix's own chains
        left there by an earlier run removed: ``filter_tables``).

        Existing endpoint and dispatch chains are left as they are, so a
        restarted Felix keeps enforcing the old state until its first
        ``apply``; on a fresh host the dispatch chains start out dropping
        everything from taps.  The endpoint-to-host chains depend only on
        the settings, so they are written in full at once."""
        with self._bound():
            self.iptables.check_other_backend()
            for version in self.versions:
                for key, value in HOST_SYSCTLS[version]:
                    if self.sysctls.ensure(key, value):
                        log.info("set %s=%s", key.replace("/", "."), value)
                self.iptables.ensure_host_chains(version, self.to_host_action)

    def apply(self, desired: Mapping[str, EndpointSpec], groups: GroupAddrs | None = None) -> set[str]:
        """Make the kernel match ``desired`` (the whole desired state) and
        ``groups`` (the members of the groups endpoints' rules name); return
        the ids of endpoints whose interface does not exist yet.

        An endpoint whose state the kernel refuses is programmed fail-closed
        (see ``failed``) and the rest converge; only a failure no endpoint
        can be blamed for raises."""
        started = time.perf_counter()
        before = self.writes.total()
        self.group_sets.members = groups if groups is not None else {}
        with self._bound():
            try:
                missing = self.isolation.run(self.layouts.usable(desired), self._pass, self._forget)
            except Exception:
                self._forget()
                raise
        written = self.writes.total() - before
        log.log(logging.INFO if written else logging.DEBUG,
                "dataplane pass: %d endpoints, %d kernel writes, %d without interface, %d failed closed, %.0f ms",
                len(desired), written, len(missing), len(self.failed), (time.perf_counter() - started) * 1000)
        return missing

    def set_cluster(self, view: ClusterView) -> None:
        """New cluster settings; the next ``apply`` programs them."""
        self.cluster.view = view

    def forget_kernel_cache(self) -> None:
        """Make the next ``apply`` read the whole kernel state again."""
        self._forget()

    def retry_failed_endpoints(self) -> None:
        """Make the next ``apply`` try again the endpoints the kernel refused."""
        self.isolation.retry()

    def close(self) -> None:
        with self._bound():
            self.ipsets.close()
            self.routes.close()
            self.cluster.close()
        os.close(self._netns_fd)

    # -- the pass ------------------------------------------------------------

    def _pass(self, endpoints: Mapping[str, EndpointSpec], closed: AbstractSet[str]) -> set[str]:
        """One pass making the kernel hold ``endpoints``, those in ``closed``
        fail-closed (a single DROP in each chain, no sets, no routes).
        Endpoints whose interface does not exist cost nothing: no sets,
        chains or dispatch rules (their tap, once it appears, meets the
        catch-all DROP until the next pass).  The desired state is computed
        whole (``host_layout``), then each writer makes the kernel match it."""
        missing = self.routes.sync(endpoints, unrouted=closed)
        layouts = self.layouts.programmed(endpoints, closed, missing)
        desired = host_layout.desired_state(
            layouts, self.versions, self.to_host_action, self.group_sets.sets(host_layout.groups_named(layouts)),
            self.cluster.sets(), {version: self.cluster.input_rules(version) for version in self.versions})
        self.ipsets.sync(desired.sets)
        self.iptables.sync(desired.chains)
        self.cluster.sync()
        self.ipsets.delete_unused(desired.sets)
        self.routes.delete_unused()
        return missing

    def _forget(self) -> None:
        self.iptables.forget()
        self.ipsets.forget()
        self.routes.forget()
        self.cluster.forget()

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
