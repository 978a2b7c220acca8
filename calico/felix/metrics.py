"""Felix's Prometheus metrics (``calico.common.metrics``; off unless
PrometheusMetricsEnabled).

Named as Go Felix names the same things:

* ``felix_int_dataplane_apply_time_seconds`` (histogram): each dataplane pass;
* ``felix_int_dataplane_failures_total``: passes that failed (retried after a back-off);
* ``felix_active_local_endpoints``: endpoints this host holds;
* ``felix_resyncs_started_total``: resyncs with the plugin begun;
* ``felix_iptables_restore_calls_total`` / ``_errors_total``,
  ``felix_iptables_save_calls_total`` / ``_errors_total``: runs of the
  restore and save tools (either backend's);
* ``felix_ipset_calls_total`` / ``felix_ipset_errors_total``, by ``method``:
  ``restore`` (runs of ``ipset restore``) and ``netlink`` (pyroute2 requests).

And Felix's own:

* ``felix_local_endpoints{state}``: endpoints by what the last pass made of
  them: ``programmed``, ``fail-closed`` (the kernel refused its state),
  ``waiting-for-acls`` (its ACLs, or the members of a group they name, not
  known yet: its chains drop everything), ``interface-missing``, ``disabled``;
* ``felix_kernel_writes_total{kind}``: every write to the kernel, by the
  ``WriteCounter`` field that counts it (``iptables_commits``,
  ``ipset_requests``, ``ipset_restores``, ``route_requests``,
  ``sysctl_writes``, ``tunnel_requests``);
* ``felix_dataplane_passes_total``, ``felix_endpoint_requests_total{type}``
  (what the plugin sent), ``felix_acl_publications_total{type}`` (what
  arrived from the ACL manager), and ``felix_peer_connected{peer}`` (1 while
  the plugin, the ACL manager's request socket and its publications answer).
"""

from __future__ import annotations

import re
from typing import Mapping

from calico.common.metrics import SECONDS_BUCKETS, exposition, new_registry

ENDPOINT_STATES = ("programmed", "fail-closed", "waiting-for-acls", "interface-missing", "disabled")
PEERS = ("plugin", "acl-manager-requests", "acl-manager-publications")
_RESTORE_TOOL = re.compile(r"ip6?tables(-legacy|-nft)?-restore")
_SAVE_TOOL = re.compile(r"ip6?tables(-legacy|-nft)?-save")


class FelixMetrics:
    """No metrics: every method does nothing."""

    registry = None

    def render(self):  # pragma: no cover - never served when off
        return None

    def resync_started(self) -> None:
        pass

    def pass_done(self, seconds: float, ok: bool) -> None:
        pass

    def endpoints(self, total: int, by_state: Mapping[str, int]) -> None:
        pass

    def kernel_writes(self, snapshot: Mapping[str, int], ipset_errors: int) -> None:
        pass

    def tool_run(self, tool: str, ok: bool) -> None:
        pass

    def endpoint_request(self, msg_type: str) -> None:
        pass

    def acl_publication(self, msg_type: str) -> None:
        pass

    def peers(self, connected: Mapping[str, bool]) -> None:
        pass


class PrometheusFelixMetrics(FelixMetrics):
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        r = self.registry = new_registry()
        self.render = exposition(r)  # type: ignore[method-assign]
        self.apply_time = Histogram("felix_int_dataplane_apply_time_seconds",
                                    "Time in seconds that each dataplane pass took.", buckets=SECONDS_BUCKETS,
                                    registry=r)
        self.passes = Counter("felix_dataplane_passes", "Dataplane passes run.", registry=r)
        self.failures = Counter("felix_int_dataplane_failures",
                                "Dataplane passes that failed and will be retried.", registry=r)
        self.active = Gauge("felix_active_local_endpoints", "Endpoints this host holds.", registry=r)
        self.by_state = Gauge("felix_local_endpoints", "Endpoints of this host by what the last dataplane "
                              "pass made of them.", ["state"], registry=r)
        for state in ENDPOINT_STATES:
            self.by_state.labels(state).set(0)
        self.resyncs = Counter("felix_resyncs_started", "Resyncs with the plugin started.", registry=r)
        self.writes = Counter("felix_kernel_writes", "Writes to the kernel, by kind.", ["kind"], registry=r)
        self.restore_calls = Counter("felix_iptables_restore_calls", "iptables-restore runs.", registry=r)
        self.restore_errors = Counter("felix_iptables_restore_errors", "iptables-restore runs that failed.",
                                      registry=r)
        self.save_calls = Counter("felix_iptables_save_calls", "iptables-save runs.", registry=r)
        self.save_errors = Counter("felix_iptables_save_errors", "iptables-save runs that failed.", registry=r)
        self.ipset_calls = Counter("felix_ipset_calls", "ipset operations: ipset restore runs and netlink "
                                   "requests.", ["method"], registry=r)
        self.ipset_errors = Counter("felix_ipset_errors", "ipset operations that failed.", ["method"], registry=r)
        for method in ("restore", "netlink"):
            self.ipset_calls.labels(method)
            self.ipset_errors.labels(method)
        self.requests = Counter("felix_endpoint_requests", "Requests from the plugin on the endpoint API, by "
                                "type.", ["type"], registry=r)
        self.publications = Counter("felix_acl_publications", "Publications from the ACL manager, by type.",
                                    ["type"], registry=r)
        self.connected = Gauge("felix_peer_connected", "1 while the peer answers.", ["peer"], registry=r)
        self._writes_seen: dict[str, int] = {}
        self._ipset_errors_seen = 0

    def resync_started(self) -> None:
        self.resyncs.inc()

    def pass_done(self, seconds: float, ok: bool) -> None:
        self.apply_time.observe(seconds)
        self.passes.inc()
        if not ok:
            self.failures.inc()

    def endpoints(self, total: int, by_state: Mapping[str, int]) -> None:
        self.active.set(total)
        for state in ENDPOINT_STATES:
            self.by_state.labels(state).set(by_state.get(state, 0))

    def kernel_writes(self, snapshot: Mapping[str, int], ipset_errors: int) -> None:
        """The dataplane's WriteCounter as it is now: the counters move by
        what changed since the last call."""
        for kind, value in snapshot.items():
            delta = value - self._writes_seen.get(kind, 0)
            if delta > 0:
                self.writes.labels(kind).inc(delta)
                if kind == "ipset_requests":
                    self.ipset_calls.labels("netlink").inc(delta)
            elif kind not in self._writes_seen:
                self.writes.labels(kind)
        self._writes_seen = dict(snapshot)
        if ipset_errors > self._ipset_errors_seen:
            self.ipset_errors.labels("netlink").inc(ipset_errors - self._ipset_errors_seen)
        self._ipset_errors_seen = ipset_errors

    def tool_run(self, tool: str, ok: bool) -> None:
        if _RESTORE_TOOL.fullmatch(tool):
            self.restore_calls.inc()
            if not ok:
                self.restore_errors.inc()
        elif _SAVE_TOOL.fullmatch(tool):
            self.save_calls.inc()
            if not ok:
                self.save_errors.inc()
        elif tool == "ipset":
            self.ipset_calls.labels("restore").inc()
            if not ok:
                self.ipset_errors.labels("restore").inc()

    def endpoint_request(self, msg_type: str) -> None:
        self.requests.labels(msg_type).inc()

    def acl_publication(self, msg_type: str) -> None:
        self.publications.labels(msg_type).inc()

    def peers(self, connected: Mapping[str, bool]) -> None:
        for peer, up in connected.items():
            self.connected.labels(peer).set(1 if up else 0)


def make(enabled: bool) -> FelixMetrics:
    return PrometheusFelixMetrics() if enabled else FelixMetrics()
