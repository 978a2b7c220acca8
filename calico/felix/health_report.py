"""Felix's health report: readiness, liveness and the /status view.

Ready means the first resync with the plugin is complete, the first
dataplane pass has applied, and the ACL manager is heard within
ConnectionTimeoutMillis; passes failing since some time is a liveness
failure once it lasts HealthTimeoutSecs (``calico.common.health``).  The
view for ``/status`` and calico-status is published after every pass and
every second: endpoints by what the last pass made of them, the last pass,
the peers.  The peers' state goes to the metrics too, health server or not.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from calico.felix.acl_client import AclClient
from calico.felix.apply_driver import ApplyDriver
from calico.felix.endpoint_api import EndpointApi
from calico.felix.metrics import FelixMetrics
from calico.felix.resync_client import ResyncClient

if TYPE_CHECKING:
    from calico.felix.agent import Addresses

HEALTH_PUBLISH_SECS = 1.0


class HealthReport:
    def __init__(self, health: Any, metrics: FelixMetrics, clock: Callable[[], float], *, hostname: str,
                 addresses: "Addresses", resync: ResyncClient, driver: ApplyDriver, acls: AclClient,
                 endpoint_api: EndpointApi) -> None:
        """``health`` is a ``calico.common.health.Health``, or None (no health server)."""
        self.health = health
        self.metrics = metrics
        self.clock = clock
        self.hostname = hostname
        self.addresses = addresses
        self.resync = resync
        self.driver = driver
        self.acls = acls
        self.endpoint_api = endpoint_api

    def set_not_ready(self, reason: str) -> None:
        if self.health is not None:
            self.health.set_not_ready(reason)

    def timer(self, now: float) -> float:
        self.publish()
        return HEALTH_PUBLISH_SECS

    def problems(self) -> list[str]:
        """Why Felix is not ready (empty: ready)."""
        problems = []
        driver = self.driver
        if self.resync.synced_at is None:
            resync = self.resync.current
            progress = (f": {len(resync.counted)} of {resync.expected} endpoint(s) so far"
                        if resync is not None and resync.expected is not None else "")
            problems.append(f"first resync with the plugin ({self.addresses.plugin}) not complete{progress}")
        elif not driver.applied_once:
            problems.append("first dataplane pass not applied yet" +
                            (f" (failing: {driver.record.last_error})" if driver.failures else ""))
        if not self.acls.subscription.live:
            problems.append(f"not hearing the ACL manager (nothing on {self.addresses.acl_pub})")
        return problems

    def publish(self) -> None:
        """Readiness, the dataplane's progress and the /status view, for the health server."""
        plugin, acl_manager, subscription = self.resync.plugin, self.acls.acl_manager, self.acls.subscription
        self.metrics.peers({"plugin": plugin.connected, "acl-manager-requests": acl_manager.connected,
                            "acl-manager-publications": subscription.live})
        health = self.health
        if health is None:
            return
        problems = self.problems()
        if problems:
            health.set_not_ready("; ".join(problems))
        else:
            health.set_ready()
        record = self.driver.record
        health.set_stall(record.failing_since, f"dataplane passes failing (last: {record.last_error})")
        now, wall = self.clock(), time.time()
        health.publish({
            "host": self.hostname,
            "endpoints": dict(record.by_state),
            "endpoint_count": len(self.endpoint_api.table),
            "last_pass": record.last,
            "passes": record.passes,
            "failing_since": None if record.failing_since is None else wall - (now - record.failing_since),
            "resync": {"first_completed": self.resync.synced_wall, "in_progress": self.resync.current is not None,
                       "started": self.resync.started},
            "plugin": {"address": self.addresses.plugin, "connected": plugin.connected},
            "endpoint_api": {"address": self.addresses.endpoints, "last_request": self.endpoint_api.last_request_wall},
            "acl_manager": {"requests": self.addresses.acl_req, "requests_connected": acl_manager.connected,
                            "publications": self.addresses.acl_pub, "hearing": subscription.live,
                            "last_heard": wall - (now - subscription.heard_at) if subscription.live else None},
            "metrics": self.metrics.registry is not None,
        })
