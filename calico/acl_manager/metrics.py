"""The ACL manager's Prometheus metrics (``calico.common.metrics``; off
unless PrometheusMetricsEnabled):

* ``calico_acl_manager_groups``, ``calico_acl_manager_endpoints``: groups
  held, endpoints with ACLs;
* ``calico_acl_manager_acl_updates_published_total``: ACLUPDATEs published
  (after a change, and in answer to a subscription or GETACLSTATE);
* ``calico_acl_manager_membership_messages_published_total{type}``:
  GROUPMEMBERS and MEMBERSUPDATE;
* ``calico_acl_manager_published_bytes_total``: their bodies;
* ``calico_acl_manager_compute_seconds`` (histogram): one batch of group
  changes, from receipt to every message published;
* ``calico_acl_manager_getgroups_sent_total``, and
  ``calico_acl_manager_snapshots_completed_total``: complete GETGROUPS bursts.
"""

from __future__ import annotations

from calico.common.metrics import SECONDS_BUCKETS, exposition, new_registry


class AclMetrics:
    """No metrics: every method does nothing."""

    registry = None

    def render(self):  # pragma: no cover
        return None

    def sizes(self, groups: int, endpoints: int) -> None:
        pass

    def computed(self, seconds: float) -> None:
        pass

    def published(self, acl_updates: int, members_by_type: dict[str, int], body_bytes: int) -> None:
        pass

    def getgroups_sent(self) -> None:
        pass

    def snapshot_completed(self) -> None:
        pass


class PrometheusAclMetrics(AclMetrics):
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        r = self.registry = new_registry()
        self.render = exposition(r)  # type: ignore[method-assign]
        self.groups = Gauge("calico_acl_manager_groups", "Groups held.", registry=r)
        self.endpoints = Gauge("calico_acl_manager_endpoints", "Endpoints with ACLs.", registry=r)
        self.acl_updates = Counter("calico_acl_manager_acl_updates_published", "ACLUPDATEs published.", registry=r)
        self.members = Counter("calico_acl_manager_membership_messages_published",
                               "GROUPMEMBERS and MEMBERSUPDATE published.", ["type"], registry=r)
        for kind in ("GROUPMEMBERS", "MEMBERSUPDATE"):
            self.members.labels(kind)
        self.bytes = Counter("calico_acl_manager_published_bytes", "Bytes of the bodies published.", registry=r)
        self.compute = Histogram("calico_acl_manager_compute_seconds", "One batch of group changes: ACLs and "
                                 "memberships computed and published.", buckets=SECONDS_BUCKETS, registry=r)
        self.getgroups = Counter("calico_acl_manager_getgroups_sent", "GETGROUPS sent to the plugin.", registry=r)
        self.snapshots = Counter("calico_acl_manager_snapshots_completed", "Complete GETGROUPS bursts.", registry=r)

    def sizes(self, groups: int, endpoints: int) -> None:
        self.groups.set(groups)
        self.endpoints.set(endpoints)

    def computed(self, seconds: float) -> None:
        self.compute.observe(seconds)

    def published(self, acl_updates: int, members_by_type: dict[str, int], body_bytes: int) -> None:
        if acl_updates:
            self.acl_updates.inc(acl_updates)
        for kind, count in members_by_type.items():
            if count:
                self.members.labels(kind).inc(count)
        if body_bytes:
            self.bytes.inc(body_bytes)

    def getgroups_sent(self) -> None:
        self.getgroups.inc()

    def snapshot_completed(self) -> None:
        self.snapshots.inc()


def make(enabled: bool) -> AclMetrics:
    return PrometheusAclMetrics() if enabled else AclMetrics()
