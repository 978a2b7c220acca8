"""Felix's agent: one event loop between the control plane and the dataplane.

Four sockets (docs/protocol.md, "Ports"), each owned by one part:

* ``resync_client.ResyncClient``: the REQ to the plugin (RESYNCSTATE);
* ``endpoint_api.EndpointApi``: the REP on which the plugin pushes endpoints;
* ``acl_client.AclClient``: the REQ to the ACL manager (GETGROUPMEMBERS
  after a gap) and, through ``acl_subscription.AclSubscription``, the SUB on
  which the ACLs and group members arrive;

and, beside them, ``apply_driver.ApplyDriver`` (when to hand the desired
state to the dataplane), ``cluster_watch.ClusterWatch`` (cluster-wide
settings) and ``health_report.HealthReport`` (readiness, liveness,
/status).  The ``EndpointTable`` is the one shared piece of state: the
endpoint API and the ACL client record intent in it and mark the desired
state dirty.

The agent only builds the parts and wires them to the event loop.  The
health report and the driver are the loop's after callbacks (in that
order): a turn first runs the due timers and takes every message that marks
work, then one dataplane pass over the whole desired state, so every
message that was ready in one poll costs one kernel pass
(docs/architecture.md, "The order of one turn").  Every socket speaks CURVE with
this host's keys (``calico.common.security``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import zmq

from calico.common import messages, security
from calico.common.config import Config
from calico.common.security import ClusterKeys, Transport
from calico.common.validation import DEFAULT_POOL, DEFAULT_POOL6
from calico.common.zmqloop import Dialer, EventLoop, ReqChannel, tcp_address
from calico.felix.acl_client import AclClient
from calico.felix.acl_subscription import AclSubscription
from calico.felix.apply_driver import ApplyDriver, Dataplane
from calico.felix.cluster import ClusterSource
from calico.felix.cluster_watch import ClusterWatch
from calico.felix.endpoint_api import EndpointApi
from calico.felix.endpoints import EndpointTable, describe_pools, parse_pools
from calico.felix.health_report import HealthReport
from calico.felix.metrics import FelixMetrics
from calico.felix.resync_client import ChannelFactory, OnReply, ResyncClient
from calico.felix.state import EndpointSpec, GroupAddrs

log = logging.getLogger(__name__)

__all__ = ["Addresses", "Agent", "Dataplane"]


@dataclass(frozen=True)
class Addresses:
    """Where the four sockets connect or bind (ZeroMQ endpoint strings)."""

    plugin: str      # REQ  -> plugin's RESYNCSTATE REP
    endpoints: str   # REP  <- plugin's endpoint pushes (bound)
    acl_req: str     # REQ  -> ACL manager's ROUTER
    acl_pub: str     # SUB  -> ACL manager's PUB

    @classmethod
    def from_config(cls, config: Config) -> "Addresses":
        return cls(
            plugin=tcp_address(config.plugin_address, messages.PORT_EP_RESYNC),
            endpoints=tcp_address(config.local_address, messages.PORT_EP_FELIX),
            acl_req=tcp_address(config.acl_address, messages.PORT_ACL_REQ),
            acl_pub=tcp_address(config.acl_address, messages.PORT_ACL_PUB),
        )


class Agent:
    def __init__(self, config: Config, dataplane: Dataplane, *, addresses: Addresses | None = None,
                 context: zmq.Context | None = None, loop: EventLoop | None = None,
                 cluster: ClusterSource | None = None, keys: ClusterKeys | None = None,
                 health: Any = None, metrics: FelixMetrics | None = None):
        self.config = config
        self.metrics = metrics or FelixMetrics()
        self.dataplane = dataplane
        self.addresses = addresses = addresses or Addresses.from_config(config)
        self.context = context or zmq.Context.instance()
        self.loop = loop = loop or EventLoop()
        self.transport = transport = Transport(self.context, loop, keys, config.max_message_bytes)
        own_role = security.felix_host_role(config.felix_hostname)
        pools = parse_pools(config.ip_pool or (DEFAULT_POOL,), config.ip_pool6 or (DEFAULT_POOL6,))
        self.table = EndpointTable(pools, config.max_endpoints)
        self.timeout = config.connection_timeout_millis / 1000.0

        self.driver = ApplyDriver(dataplane, loop.clock, self.metrics, retry_ms=config.endpoint_retry_time_millis,
                                  desired=self._desired, first_pass_at=self._first_pass_at,
                                  on_pass=self.publish_health)
        # The sockets are made in this order (the poller serves them in it):
        # plugin REQ, endpoint REP, ACL manager REQ, ACL manager SUB.
        self.resync = ResyncClient(
            self._channel(transport.dialer(zmq.REQ, addresses.plugin, own_role, security.ROLE_PLUGIN_EP), "plugin"),
            self.table, loop.clock, self.metrics, hostname=config.felix_hostname,
            timeout_ms=config.connection_timeout_millis, interval_secs=config.resync_interval_secs,
            on_begin=self._resync_begins, remove_stale=self._remove_stale, mark_dirty=self.driver.mark_dirty,
            repair=self.driver.repair, last_pass_end=lambda: self.driver.last_apply_end)
        self.endpoint_api = EndpointApi(
            transport.listen(zmq.REP, addresses.endpoints, own_role, security.DOMAIN_FELIX_ENDPOINTS),
            self.table, self.resync, self.metrics, max_endpoints=config.max_endpoints,
            on_created=self._endpoint_created, forget=self._forget_endpoint, mark_dirty=self.driver.mark_dirty)
        loop.add_socket(self.endpoint_api.socket, self.endpoint_api.on_readable)
        subscription = functools.partial(
            AclSubscription, loop,
            lambda: transport.connect(zmq.SUB, addresses.acl_pub, security.ROLE_FELIX, security.ROLE_ACL_MANAGER),
            addresses.acl_pub, config.connection_timeout_millis)
        self.acls = AclClient(
            self._channel(transport.dialer(zmq.REQ, addresses.acl_req, security.ROLE_FELIX,
                                           security.ROLE_ACL_MANAGER), "acl-manager"),
            subscription, self.table, self.metrics, mark_dirty=self.driver.mark_dirty)
        self.health_report = HealthReport(health, self.metrics, loop.clock, hostname=config.felix_hostname,
                                          addresses=addresses, resync=self.resync, driver=self.driver,
                                          acls=self.acls, endpoint_api=self.endpoint_api)
        self.cluster = None if cluster is None else ClusterWatch(cluster, dataplane, self.driver.mark_dirty)  # type: ignore[arg-type]

        if self.cluster is not None:
            loop.add_timer(self.cluster.timer)
        loop.add_timer(self.resync.timer)
        loop.add_timer(self.acls.subscription.timer)
        if health is not None:
            health.watch(loop)
            # Every turn, as the dataplane pass: readiness and /status follow
            # each pass at once rather than on a clock of their own.
            loop.add_after(self.health_report.timer)
        loop.add_after(self.driver.timer)  # every turn, after the handlers and timers that mark work
        log.info("Felix %s: plugin %s, endpoints on %s, ACL manager %s / %s",
                 config.felix_hostname, addresses.plugin, addresses.endpoints, addresses.acl_req, addresses.acl_pub)
        log.info("Endpoint addresses must be in %s; at most %d endpoints; endpoint to host: %s",
                 describe_pools(pools), config.max_endpoints, config.default_endpoint_to_host_action)

    def _channel(self, dialer: Dialer, name: str) -> ChannelFactory:
        """How the part that owns the REQ channel to one peer opens it."""
        def open_channel(on_reply: OnReply, on_reset: Callable[[], None]) -> ReqChannel:
            return ReqChannel(self.loop, dialer, name, self.config.connection_timeout_millis,
                              self.config.connection_keepalive_interval_millis, on_reply=on_reply,
                              on_reset=on_reset, retry_lost_request=False)
        return open_channel

    # --- how the parts meet ----------------------------------------------------------

    def _desired(self) -> tuple[Mapping[str, EndpointSpec], GroupAddrs]:
        groups = self.acls.groups.known()
        return self.table.desired(groups.keys()), groups

    def _first_pass_at(self) -> float | None:
        """Not before the first resync; then wait up to ConnectionTimeoutMillis
        for the ACLs and group members of the endpoints it learnt, so a
        restart does not fail every endpoint closed meanwhile."""
        synced_at = self.resync.synced_at
        if synced_at is None:
            return None
        if self.table.without_acls() or self.acls.groups.unknown():
            return synced_at + self.timeout
        return synced_at

    def _resync_begins(self) -> None:
        self.endpoint_api.drop_parked()

    def _remove_stale(self, resync_id: str, stale: list[str]) -> None:
        self.endpoint_api.remove_stale(resync_id, stale)

    def _endpoint_created(self, endpoint_id: str) -> None:
        self.acls.watch(endpoint_id)

    def _forget_endpoint(self, endpoint_id: str) -> None:
        """Each part keeps what it knows of an endpoint in one place."""
        self.table.remove(endpoint_id)
        self.acls.forget(endpoint_id)
        self.driver.forget(endpoint_id)

    # --- life cycle -----------------------------------------------------------

    def start(self) -> None:
        self.health_report.set_not_ready("setting up the host (sysctls, top-level chains)")
        self.driver.start()
        self.resync.begin("start-up")
        self.publish_health()

    def run(self) -> None:
        self.start()
        try:
            self.loop.run()
        finally:
            self.close()

    def stop(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        self.resync.close()
        self.acls.acl_manager.close()
        self.loop.remove_socket(self.endpoint_api.socket)
        self.endpoint_api.socket.close(linger=0)
        self.acls.subscription.close()
        self.transport.close()

    def publish_health(self) -> None:
        """Readiness, the dataplane's progress and the /status view, for the health server."""
        self.health_report.publish()
