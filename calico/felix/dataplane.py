"""Felix's dataplane: make the kernel match the desired endpoints, in one pass.

The agent hands ``apply`` the *whole* desired state (endpoint id ->
``EndpointSpec``, and group -> member addresses) whenever something changed; the dataplane computes the
full desired kernel state in pure code (``ipsets``, ``iptables_layout``),
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
made, in its namespace (``backend_check``); python-iptables is used for
legacy only.

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
(the host-wide chains, a lock) is raised for the agent's back-off.

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
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import AbstractSet, Iterator, Mapping

from calico.common.validation import ValidationError, check_endpoint_id, parse_ip, parse_mac
from calico.felix import host_layout, iptables_layout, nat
from calico.felix import backend_check
from calico.felix.cluster import ClusterView
from calico.felix.cluster_dataplane import ClusterDataplane
from calico.felix.ipset_writer import IpsetWriter
from calico.felix.host_layout import EndpointLayout
from calico.felix.ipsets import SetSpec, group_set
from calico.felix.iptables_writer import AUTO, RESTORE, IptablesWriter
from calico.felix.kernel_writes import WriteCounter
from calico.felix.routes import HOST_SYSCTLS, RouteWriter, Sysctls
from calico.felix.state import EndpointSpec, GroupAddrs
from calico.felix.tools import ToolError

log = logging.getLogger(__name__)

_NETNS_SELF = "/proc/thread-self/ns/net"
# Passes one failed pass may spend finding the endpoints at fault (about
# 2 * log2(changed) + 2 per culprit); the next pass continues from there.
MAX_ISOLATION_ATTEMPTS = 64
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _netns_identity(path_or_fd: str | int) -> tuple[int, int]:
    st = os.stat(path_or_fd)
    return st.st_dev, st.st_ino


@dataclass
class _Checked:
    """The memo of one endpoint: its spec, whether it passed the re-check,
    and its layout once one was needed."""

    spec: EndpointSpec
    usable: bool
    layout: EndpointLayout | None = None


@dataclass(frozen=True)
class FailedEndpoint:
    """An endpoint programmed fail-closed because the kernel refused its state."""

    spec: EndpointSpec
    error: str


class IsolationIncomplete(RuntimeError):
    """The search for the endpoints at fault ran out of attempts; the next
    pass carries on from what it established."""


def describe_error(exc: BaseException) -> str:
    """An exception as one log line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class Dataplane:
    def __init__(self, ip_versions: tuple[int, ...] = (4, 6), writes: WriteCounter | None = None,
                 iptables_mode: str = AUTO, ipset_mode: str = AUTO, library_max_rules: int = 64,
                 library_max_set_ops: int = 200, sysctl_root: str = "/proc/sys",
                 cluster: ClusterView | None = None,
                 endpoint_to_host_action: str = iptables_layout.DROP,
                 max_isolation_attempts: int = MAX_ISOLATION_ATTEMPTS,
                 iptables_backend: str = backend_check.AUTO) -> None:
        self.versions = tuple(sorted(set(ip_versions)))
        if not self.versions or not set(self.versions) <= {4, 6}:
            raise ValueError(f"ip_versions must be 4 and/or 6, not {ip_versions!r}")
        if endpoint_to_host_action not in iptables_layout.TO_HOST_ACTIONS:
            raise ValueError(f"endpoint_to_host_action must be one of {', '.join(iptables_layout.TO_HOST_ACTIONS)}, "
                             f"not {endpoint_to_host_action!r}")
        if 6 in self.versions and not os.path.isdir(os.path.join(sysctl_root, "net/ipv6")):
            log.warning("IPv6 is disabled in this kernel: programming IPv4 only")
            self.versions = tuple(v for v in self.versions if v != 6)
            if not self.versions:
                raise ValueError("IPv6 only was asked for, but IPv6 is disabled in this kernel")
        self.to_host_action = endpoint_to_host_action
        self.max_isolation_attempts = max_isolation_attempts
        self.writes = writes if writes is not None else WriteCounter()
        self._netns_fd = os.open(_NETNS_SELF, os.O_RDONLY)
        self._netns = _netns_identity(self._netns_fd)
        self.sysctls = Sysctls(self.writes, sysctl_root)
        # Decided once, here, in the namespace this Dataplane binds to.
        choice = backend_check.detect_backend(iptables_backend, self.versions)
        for version in self.versions:
            if shutil.which(backend_check.tool(choice.backend, version, "-save")) is None:
                raise ValueError(f"iptables backend {choice.backend}: {backend_check.tool(choice.backend, version, '-save')} "
                                 "is not installed (Debian's iptables package has both backends' tools)")
        self.iptables_backend = choice.backend
        self.iptables_backend_reason = choice.reason
        log.info("iptables backend: %s", choice.describe())
        self.iptables = {v: IptablesWriter(v, self.writes, iptables_mode, library_max_rules, backend=choice.backend)
                         for v in self.versions}
        self.ipsets = IpsetWriter(self.writes, ipset_mode, library_max_set_ops)
        self.routes = RouteWriter(self.writes, self.versions, self.sysctls)
        # Outgoing NAT and IP-in-IP: cluster-wide, not per endpoint.
        self.cluster = ClusterDataplane(self.versions, self.writes, cluster, iptables_mode, library_max_rules,
                                        iptables_backend=choice.backend)
        self._memo: dict[str, _Checked] = {}
        self._collisions: set[str] = set()
        # The kernel accepted these specs in the last pass that succeeded
        # (open endpoints only); a failed pass bisects what changed since.
        self._good: Mapping[str, EndpointSpec] = {}
        self._good_closed: frozenset[str] = frozenset()
        self.failed: dict[str, FailedEndpoint] = {}
        self._groups: GroupAddrs = {}
        # (group, version) -> (the addresses it was built from, the set): a
        # pass rebuilds a group's set only when its members changed.
        self._group_sets: dict[tuple[str, int], tuple[frozenset[str], SetSpec]] = {}

    # -- the agent's interface -------------------------------------------

    def start(self) -> None:
        """One-time host set-up (idempotent): forwarding on, Felix's top-level
        chains and the INPUT/FORWARD jumps, and the other iptables backend
        checked (a warning if its FORWARD chain filters; Felix's own chains
        left there by an earlier run removed: ``backend_check``).

        Existing endpoint and dispatch chains are left as they are, so a
        restarted Felix keeps enforcing the old state until its first
        ``apply``; on a fresh host the dispatch chains start out dropping
        everything from taps.  The endpoint-to-host chains depend only on
        the settings, so they are written in full at once."""
        with self._bound():
            backend_check.other_backend_warnings(self.iptables_backend, self.versions)
            self._retire_other_backend()
            for version in self.versions:
                for key, value in HOST_SYSCTLS[version]:
                    if self.sysctls.ensure(key, value):
                        log.info("set %s=%s", key.replace("/", "."), value)
                self.iptables[version].ensure_present(iptables_layout.static_chains(version, self.to_host_action),
                                                      force=iptables_layout.HOST_CHAINS)

    def _retire_other_backend(self) -> None:
        """Remove Felix's chains and jumps from the backend it does not
        program (an earlier run's, with the other backend): there they would
        go on dropping what the new chains allow.  Nothing else is touched,
        a legacy table that does not exist is not even read, and a failure
        is logged, never raised."""
        unused = backend_check.other(self.iptables_backend)
        for version in self.versions:
            if not all(shutil.which(backend_check.tool(unused, version, s)) for s in ("-save", "-restore")):
                continue
            for table, jumps in (("filter", iptables_layout.TOP_JUMPS), ("nat", nat.NAT_JUMPS)):
                writer = IptablesWriter(version, self.writes, RESTORE, table=table, top_jumps=jumps,
                                        optional_jumps=True, backend=unused)
                try:
                    plan = writer.sync({})
                except (ToolError, OSError, subprocess.TimeoutExpired) as exc:
                    log.warning("could not remove Felix's chains from the %s backend's IPv%d %s table: %s",
                                unused, version, table, describe_error(exc))
                    continue
                if not plan.is_empty():
                    log.warning("removed Felix's chains left in the %s backend's IPv%d %s table by an earlier "
                                "run (%s); Felix now programs %s", unused, version, table, plan.summary(),
                                self.iptables_backend)

    def apply(self, desired: Mapping[str, EndpointSpec], groups: GroupAddrs | None = None) -> set[str]:
        """Make the kernel match ``desired`` (the whole desired state) and
        ``groups`` (the members of the groups endpoints' rules name); return
        the ids of endpoints whose interface does not exist yet.

        An endpoint whose state the kernel refuses is programmed fail-closed
        (see ``failed``) and the rest converge; only a failure no endpoint
        can be blamed for raises."""
        started = time.perf_counter()
        before = self.writes.total()
        self._groups = groups if groups is not None else {}
        with self._bound():
            try:
                missing = self._apply(desired)
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
        if self.failed:
            log.info("retrying %d endpoint(s) failed closed after kernel errors: %s", len(self.failed),
                     " ".join(sorted(self.failed)))
        self.failed = {}

    def close(self) -> None:
        with self._bound():
            self.ipsets.close()
            self.routes.close()
            self.cluster.close()
        os.close(self._netns_fd)

    # -- the pass ------------------------------------------------------------

    def _apply(self, desired: Mapping[str, EndpointSpec]) -> set[str]:
        usable = self._usable(desired)
        # A refused endpoint stays fail-closed until its spec changes.
        self.failed = {key: failed for key, failed in self.failed.items() if usable.get(key) == failed.spec}
        closed = frozenset(self.failed)
        try:
            missing = self._pass(usable, closed)
        except Exception as exc:
            self._forget()
            return self._isolate(usable, closed, exc)
        self._good, self._good_closed = usable, closed
        return missing

    def _pass(self, endpoints: Mapping[str, EndpointSpec], closed: AbstractSet[str]) -> set[str]:
        """One pass making the kernel hold ``endpoints``, those in ``closed``
        fail-closed (a single DROP in each chain, no sets, no routes).
        Endpoints whose interface does not exist cost nothing: no sets,
        chains or dispatch rules (their tap, once it appears, meets the
        catch-all DROP until the next pass)."""
        missing = self.routes.sync(endpoints, unrouted=closed)
        layouts = [self._closed_layout(spec) if key in closed else self._layout(key, spec)
                   for key, spec in endpoints.items() if key not in missing]
        desired = host_layout.desired_state(
            layouts, self.versions, self.to_host_action, self._shared_sets(host_layout.groups_named(layouts)),
            self.cluster.sets(), {version: self.cluster.input_rules(version) for version in self.versions})
        self.ipsets.sync(desired.sets)
        for version in self.versions:
            self.iptables[version].sync(desired.chains[version])
        self.cluster.sync()
        self.ipsets.delete_unused(desired.sets)
        self.routes.delete_unused()
        return missing

    def _shared_sets(self, needed: AbstractSet[tuple[str, int]]) -> dict[str, SetSpec]:
        """The group sets some chain names, each rebuilt only when its members
        changed.  A group whose members are unknown gets an empty set (the
        agent keeps endpoints naming it fail-closed; this only narrows)."""
        cache: dict[tuple[str, int], tuple[frozenset[str], SetSpec]] = {}
        for key in needed:
            addrs = self._groups.get(key[0], frozenset())
            known = self._group_sets.get(key)
            if known is None or known[0] is not addrs:
                known = (addrs, group_set(key[0], key[1], addrs))
            cache[key] = known
        self._group_sets = cache
        return {spec.name: spec for _, spec in cache.values()}

    def _isolate(self, usable: Mapping[str, EndpointSpec], closed: frozenset[str], error: Exception) -> set[str]:
        """After a failed pass: find the endpoints at fault and fail them closed.

        Only endpoints whose spec changed since the last good pass can be at
        fault.  The known-good state is tried first (if the kernel refuses
        that too, no endpoint is to blame and the error is raised); then the
        changed endpoints are bisected, each half tried together with
        everything known to be good so far, down to single endpoints, each
        confirmed by a pass of its own before it is blamed."""
        good = {key: spec for key, spec in self._good.items()
                if key not in self._good_closed and key in usable and key not in closed}
        changed = sorted(key for key, spec in usable.items() if key not in closed and good.get(key) != spec)
        if not changed:
            raise error
        log.info("The kernel refused a dataplane pass (%s); looking for the endpoint(s) at fault among "
                 "%d changed", describe_error(error), len(changed))
        culprits: dict[str, str] = {}
        attempts = [0]
        last: list[set[str] | None] = [None]  # missing, if the last pass tried succeeded

        def attempt(subset: list[str]) -> Exception | None:
            if attempts[0] >= self.max_isolation_attempts:
                raise IsolationIncomplete(f"gave up after {attempts[0]} passes; {describe_error(error)}")
            attempts[0] += 1
            state = {**good, **{key: usable[key] for key in subset},
                     **{key: usable[key] for key in closed | culprits.keys()}}
            try:
                last[0] = self._pass(state, closed | culprits.keys())
            except Exception as exc:
                log.debug("isolation pass with %d changed endpoint(s) failed: %s", len(subset), describe_error(exc))
                self._forget()
                last[0] = None
                return exc
            good.update((key, usable[key]) for key in subset)
            return None

        def bisect(items: list[str], failure: Exception | None) -> None:
            """``items`` fail on top of ``good``; ``failure`` is the error if
            that was seen for exactly these items, else None."""
            if len(items) == 1:
                failure = failure or attempt(items)
                if failure is not None:
                    culprits[items[0]] = describe_error(failure)
                    last[0] = None
                return
            first, second = items[:len(items) // 2], items[len(items) // 2:]
            first_failure = attempt(first)
            if first_failure is None:
                bisect(second, None)
                return
            bisect(first, first_failure)
            second_failure = attempt(second)
            if second_failure is not None:
                bisect(second, second_failure)

        try:
            base_failure = attempt([])
            if base_failure is not None:
                raise base_failure
            bisect(changed, None)
            missing = last[0] if last[0] is not None else self._pass(
                {**good, **{key: usable[key] for key in closed | culprits.keys()}}, closed | culprits.keys())
        finally:
            self._record_culprits(usable, culprits)
            self._good, self._good_closed = good, frozenset()  # holds open endpoints only
        return missing

    def _record_culprits(self, usable: Mapping[str, EndpointSpec], culprits: Mapping[str, str]) -> None:
        for key, error in sorted(culprits.items()):
            self.failed[key] = FailedEndpoint(usable[key], error)
            log.error("Endpoint %s failed closed: the kernel refused its state (%s); it is tried again when "
                      "it changes or at the next periodic resync", key, error)

    def _forget(self) -> None:
        for writer in self.iptables.values():
            writer.forget()
        self.ipsets.forget()
        self.routes.forget()
        self.cluster.forget()

    def _usable(self, desired: Mapping[str, EndpointSpec]) -> dict[str, EndpointSpec]:
        """The endpoints that can be programmed: re-checked (ids, MACs and
        addresses end up in chain names, restore input and netlink requests;
        the check is memoised, so a pass over 1,000 unchanged endpoints is
        cheap) and one per interface name (ids sharing their first 11
        characters would share a tap)."""
        memo: dict[str, _Checked] = {}
        usable: dict[str, EndpointSpec] = {}
        by_interface: dict[str, str] = {}
        collisions: set[str] = set()
        for key in sorted(desired):
            spec = desired[key]
            known = self._memo.get(key)
            if known is None or not (known.spec is spec or known.spec == spec):
                known = _Checked(spec, self._check(key, spec))
            memo[key] = known
            if not known.usable:
                continue
            other = by_interface.setdefault(spec.interface, key)
            if other != key:
                collisions.add(f"endpoint {key} skipped: its interface {spec.interface} is also endpoint {other}'s")
                continue
            usable[key] = spec
        for warning in sorted(collisions - self._collisions):  # once, not every pass
            log.warning(warning)
        self._collisions = collisions
        self._memo = memo
        return usable

    def _check(self, key: str, spec: EndpointSpec) -> bool:
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
            return False
        return True

    def _layout(self, key: str, spec: EndpointSpec) -> EndpointLayout:
        """An endpoint's sets and chains, computed only when its spec changed."""
        checked = self._memo[key]
        if checked.layout is None or not (checked.layout.spec is spec or checked.layout.spec == spec):
            checked.layout = host_layout.endpoint_layout(spec, self.versions)
            for warning in checked.layout.warnings:
                log.warning(warning)
        return checked.layout

    def _closed_layout(self, spec: EndpointSpec) -> EndpointLayout:
        return host_layout.closed_layout(spec, self.versions)

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
