"""Felix's agent: one event loop between the control plane and the dataplane.

Four sockets (docs/protocol.md): a REQ to the plugin (RESYNCSTATE), a REP on
which the plugin pushes endpoints, a REQ to the ACL manager (GETGROUPMEMBERS
after a gap) and a SUB on which the ACLs and group members arrive.  Handlers only record intent in the
``EndpointTable`` and mark the desired state dirty; a timer registered last
then hands the whole desired state to ``dataplane.apply`` once, so every
message that was ready in one poll costs one kernel pass.

Start-up and restarts.  Until the first resync with the plugin completes the
agent programs nothing: applying the empty table of a freshly started Felix
would tear down every endpoint a previous run left working.  After it, the
first pass also waits (at most ConnectionTimeoutMillis) for the ACLs of the
endpoints it learnt, so a restart does not fail every endpoint closed for
the moment between learning an endpoint and hearing its ACLs.

ACLs and group members come by subscription alone.  Felix subscribes to
each endpoint's topic when it learns the endpoint, and to a group's topic
while some endpoint's rules name the group (``groups``); the ACL manager's
XPUB answers every subscription with the current state (ACLUPDATE,
GROUPMEMBERS), and a SUB socket repeats its subscriptions by itself
whenever it reconnects, so a restarted ACL manager hears them all again.
A gap in a group's sequence numbers is answered by asking for the whole
group (GETGROUPMEMBERS on the REQ channel); the members held meanwhile
stay in force.  An endpoint stays fail-closed until its ACLs and the
members of every group they name are known.

Lost peers are rebuilt, never waited for: the plugin's REQ channel resets
into a new resync; a subscription to the ACL manager quiet for
ConnectionTimeoutMillis (not even ``aclheartbeat``) is made afresh, which
subscribes to everything again, as libzmq never reconnects a connection it
dropped for a protocol error (an ACLUPDATE over MaxMessageBytes); the ACLs
already programmed stay in force meanwhile.  Every socket speaks CURVE with
this host's keys (``calico.common.security``).

Felix checks what it is told, even by the plugin (``EndpointTable.refusal``):
an address outside the pools (IpPool, IpPool6), an address or interface
that is another endpoint's, or a creation beyond MaxEndpoints is answered
INVALID, and an endpoint we had keeps what it had.  A refused announcement
still counts towards its resync.  Refusals that may clear (the other
endpoint goes, the host gets room) are parked and taken when they do, so a
resync that announces an address before the stale endpoint holding it is
removed still converges.

The dataplane reports endpoints whose interface does not exist yet; a timer
retries them every EndpointRetryTimeMillis.  If a pass raises, the dataplane
forgets what it believed about the kernel and the pass is retried after a
growing back-off, so a persistent fault is neither a busy loop nor a crash.

Health and metrics (``calico.common.health``, ``calico.felix.metrics``).
The agent tells its ``Health`` when it is ready (first resync complete,
first dataplane pass applied, and the ACL manager heard within
ConnectionTimeoutMillis) and since when passes have been failing (a
liveness failure once that lasts HealthTimeoutSecs), and publishes its view
for ``/status`` after every pass and every second: endpoints by what the
last pass made of them, the last pass, the peers.  Metrics are recorded
where things happen; with metrics off those calls do nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import zmq

from calico.common import messages, security
from calico.common.config import Config
from calico.common.security import ClusterKeys, Transport
from calico.common.zmqloop import EventLoop, ReqChannel, tcp_address
from calico.common.validation import DEFAULT_POOL, DEFAULT_POOL6
from calico.felix.cluster import POLL_INTERVAL_SECS, ClusterSource
from calico.felix.endpoints import (FULL, Change, EndpointTable, Refusal, Resync, acls_from_wire, describe_acls,
                                    describe_pools, in_pools, parse_pools, spec_from_message)
from calico.felix.groups import GroupMembers, Outcome
from calico.felix.metrics import ENDPOINT_STATES, FelixMetrics
from calico.felix.state import EndpointSpec

log = logging.getLogger(__name__)

ENDPOINT_REQUESTS = frozenset({messages.ENDPOINTCREATED, messages.ENDPOINTUPDATED,
                               messages.ENDPOINTDESTROYED, messages.HEARTBEAT})
MEMBERS_TYPES = frozenset({messages.GROUPMEMBERS, messages.MEMBERSUPDATE})
BACKOFF_MIN_SECS = 0.5
BACKOFF_MAX_SECS = 30.0


class Dataplane(Protocol):
    def start(self) -> None: ...
    def apply(self, desired: Mapping[str, EndpointSpec], groups: Mapping[str, frozenset[str]]) -> set[str]: ...
    def forget_kernel_cache(self) -> None: ...
    def retry_failed_endpoints(self) -> None: ...


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
        self.health = health  # calico.common.health.Health, or None
        self.metrics = metrics or FelixMetrics()
        self.dataplane = dataplane
        self.addresses = addresses or Addresses.from_config(config)
        self.context = context or zmq.Context.instance()
        self.loop = loop or EventLoop()
        self.transport = Transport(self.context, self.loop, keys, config.max_message_bytes)
        own_role = security.felix_host_role(config.felix_hostname)
        pools = parse_pools(config.ip_pool or (DEFAULT_POOL,), config.ip_pool6 or (DEFAULT_POOL6,))
        self.table = EndpointTable(pools, config.max_endpoints)
        # Refused for a conflict that may clear (another endpoint's address
        # or interface, the MaxEndpoints bound): taken once it has, without
        # waiting for the next resync.  Newer news for the endpoint replaces it.
        self._parked: dict[str, dict[str, Any]] = {}
        self._full_reported = False
        self.timeout = config.connection_timeout_millis / 1000.0
        self.retry_interval = config.endpoint_retry_time_millis / 1000.0
        self.resync_interval = float(config.resync_interval_secs)
        now = self.loop.clock()

        # Resync state.
        self.resync: Resync | None = None
        self.synced_at: float | None = None     # first resync completed
        self._resync_progress_at = now
        self._resync_retry_at: float | None = None
        self._next_periodic_resync = now + self.resync_interval
        self._plugin_resets_unanswered = 0

        # ACL manager state.
        self._subscribed: set[str] = set()
        self._acl_problems: dict[str, frozenset[str]] = {}
        self._acl_heard_at = now
        self._acl_live = False
        self.groups = GroupMembers()
        self._members_asked: set[str] = set()  # GETGROUPMEMBERS queued or in flight

        # Dataplane state.
        self.dirty = False
        self.applied_once = False
        self.missing: set[str] = set()
        self._retry_at: float | None = None
        self._failures = 0
        self._last_apply_end = now
        # What /status and calico-status show (wall-clock times).
        self._failing_since: float | None = None  # loop clock: first failed pass since the last good one
        self._last_error = ""
        self._last_pass: dict[str, Any] | None = None
        self._by_state: dict[str, int] = {state: 0 for state in ENDPOINT_STATES}
        self._passes = 0
        self._synced_wall: float | None = None
        self._last_request_wall: float | None = None
        self._resyncs = 0

        self.plugin = ReqChannel(self.loop, self.transport.dialer(zmq.REQ, self.addresses.plugin, own_role,
                                                                  security.ROLE_PLUGIN_EP), "plugin",
                                 config.connection_timeout_millis, config.connection_keepalive_interval_millis,
                                 on_reply=self._on_plugin_reply, on_reset=self._on_plugin_reset,
                                 retry_lost_request=False)
        self.endpoint_socket = self.transport.listen(zmq.REP, self.addresses.endpoints, own_role,
                                                     security.DOMAIN_FELIX_ENDPOINTS)
        self.loop.add_socket(self.endpoint_socket, self._on_endpoint_requests)
        self.acl_manager = ReqChannel(self.loop, self.transport.dialer(zmq.REQ, self.addresses.acl_req,
                                                                       security.ROLE_FELIX,
                                                                       security.ROLE_ACL_MANAGER), "acl-manager",
                                      config.connection_timeout_millis,
                                      config.connection_keepalive_interval_millis,
                                      on_reply=self._on_acl_reply, on_reset=self._on_acl_reset,
                                      retry_lost_request=False)
        self._open_acl_socket()
        self._acl_reopen_at = now + self.timeout
        # Cluster-wide settings (NAT, IP-in-IP): the dataplane gets each new view.
        self.cluster = cluster
        if cluster is not None:
            self.loop.add_timer(self._cluster_timer)
        self.loop.add_timer(self._resync_timer)
        self.loop.add_timer(self._acl_timer)
        if self.health is not None:
            self.health.watch(self.loop)
            self.loop.add_timer(self._health_timer)
        self.loop.add_after(self._apply_timer)  # every turn, after the handlers and timers that mark work
        log.info("Felix %s: plugin %s, endpoints on %s, ACL manager %s / %s",
                 config.felix_hostname, self.addresses.plugin, self.addresses.endpoints,
                 self.addresses.acl_req, self.addresses.acl_pub)
        log.info("Endpoint addresses must be in %s; at most %d endpoints; endpoint to host: %s",
                 describe_pools(pools), config.max_endpoints, config.default_endpoint_to_host_action)

    def _open_acl_socket(self) -> None:
        self.acl_socket = self.transport.connect(zmq.SUB, self.addresses.acl_pub, security.ROLE_FELIX,
                                                 security.ROLE_ACL_MANAGER)
        self.acl_socket.setsockopt(zmq.SUBSCRIBE, messages.TOPIC_ACL_HEARTBEAT)
        for endpoint_id in self._subscribed:
            self.acl_socket.setsockopt(zmq.SUBSCRIBE, endpoint_id.encode())
        for group in self.groups.needed():
            self.acl_socket.setsockopt(zmq.SUBSCRIBE, messages.members_topic(group))
        self.loop.add_socket(self.acl_socket, self._on_acl_publications)

    def _reopen_acl_socket(self) -> None:
        """libzmq never reconnects a connection it dropped for a protocol
        error (a publication over MaxMessageBytes, a failed handshake): a
        subscription silent for ConnectionTimeoutMillis is made afresh."""
        log.debug("ACL manager: opening the subscription to %s afresh", self.addresses.acl_pub)
        self.loop.remove_socket(self.acl_socket)
        self.acl_socket.close(linger=0)
        self._open_acl_socket()

    # --- life cycle -----------------------------------------------------------

    def start(self) -> None:
        self._set_not_ready("setting up the host (sysctls, top-level chains)")
        self.dataplane.start()
        self._count_kernel_writes()
        self.begin_resync("start-up")
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
        self.plugin.close()
        self.acl_manager.close()
        for sock in (self.endpoint_socket, self.acl_socket):
            self.loop.remove_socket(sock)
            sock.close(linger=0)
        self.transport.close()

    def _cluster_timer(self, now: float) -> float:
        view = self.cluster.poll() if self.cluster is not None else None
        if view is not None:
            self.dataplane.set_cluster(view)  # type: ignore[attr-defined]
            self.dirty = True
        return POLL_INTERVAL_SECS

    # --- resync with the plugin -----------------------------------------------

    def begin_resync(self, reason: str, level: int = logging.INFO) -> None:
        """Ask the plugin for every endpoint of this host; any resync still
        running is abandoned (its count no longer means anything)."""
        self.resync = Resync(str(uuid.uuid4()), reason)
        self._resyncs += 1
        self.metrics.resync_started()
        self._parked.clear()  # the plugin announces afresh whatever it still has
        self._resync_retry_at = None
        self._resync_progress_at = self.loop.clock()
        self.plugin.clear()
        self.plugin.send(messages.make(messages.RESYNCSTATE, resync_id=self.resync.resync_id,
                                       hostname=self.config.felix_hostname))
        log.log(level, "Resync %s started (%s) for host %s", self.resync.resync_id, reason,
                self.config.felix_hostname)

    def _on_plugin_reset(self) -> None:
        # A plugin that stays down resets the channel every timeout: say so
        # once, then quietly keep trying.
        self._plugin_resets_unanswered += 1
        self.begin_resync("plugin connection lost",
                          logging.INFO if self._plugin_resets_unanswered == 1 else logging.DEBUG)

    def _on_plugin_reply(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        if request["type"] != messages.RESYNCSTATE:
            return
        self._plugin_resets_unanswered = 0
        resync = self.resync
        if resync is None or request.get("resync_id") != resync.resync_id:
            log.debug("Reply to abandoned resync %s ignored", request.get("resync_id"))
            return
        count = reply.get("endpoint_count")
        if reply.get("rc", messages.RC_SUCCESS) != messages.RC_SUCCESS or count is None:
            log.warning("Resync %s refused by the plugin (rc %s: %r); retrying in %.1fs", resync.resync_id,
                        reply.get("rc"), reply.get("message") or "no endpoint_count", self.timeout)
            self.resync = None
            self._resync_retry_at = self.loop.clock() + self.timeout
            return
        resync.expected = count
        self._resync_progress_at = self.loop.clock()
        log.info("Resync %s: plugin will send %d endpoint(s)", resync.resync_id, count)
        self._check_resync_complete()

    def _check_resync_complete(self) -> None:
        resync = self.resync
        if resync is None or not resync.complete:
            return
        self.resync = None
        stale = resync.stale(self.table.ids())
        for endpoint_id in stale:
            log.info("Endpoint %s removed: not in resync %s", endpoint_id, resync.resync_id)
            self._forget_endpoint(endpoint_id)
        if stale:
            self._retry_parked()  # an announcement may have been refused for a stale endpoint's address
        log.info("Resync %s complete: %d endpoint(s), %d removed", resync.resync_id, len(self.table), len(stale))
        if self.synced_at is None:
            self.synced_at = self.loop.clock()
            self._synced_wall = time.time()
            self.dirty = True  # the first pass, even for an empty table: it removes leftovers
        elif stale:
            self.dirty = True

    def _resync_timer(self, now: float) -> float:
        if now >= self._next_periodic_resync:
            self._next_periodic_resync = now + self.resync_interval
            self.dataplane.forget_kernel_cache()
            self.dataplane.retry_failed_endpoints()
            self.dirty = True  # re-read the kernel and repair any drift
            self.begin_resync("periodic")
        elif self._resync_retry_at is not None and now >= self._resync_retry_at:
            self.begin_resync("retry")
        elif self.resync is not None and self.resync.expected is not None:
            # The plugin promised endpoints that stopped coming: start again
            # rather than wait for ever (the quiet time is counted from our
            # own last pass too, since a long pass delays our reading).
            quiet_since = max(self._resync_progress_at, self._last_apply_end)
            if now - quiet_since >= 2 * self.timeout:
                log.warning("Resync %s stalled at %d of %d endpoint(s); starting again",
                            self.resync.resync_id, len(self.resync.counted), self.resync.expected)
                self.begin_resync("stalled")
        deadlines = [self._next_periodic_resync - now, self.timeout]
        if self._resync_retry_at is not None:
            deadlines.append(self._resync_retry_at - now)
        return min(deadlines)

    # --- endpoint API (REP) -----------------------------------------------------

    def _on_endpoint_requests(self) -> None:
        while True:
            try:
                raw = self.endpoint_socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_request_wall = time.time()
            try:
                answer = self.handle_endpoint_request(raw)
            except Exception as exc:  # a bug must not wedge the REP socket
                log.exception("Endpoint request failed unexpectedly: %s", exc)
                answer = messages.reply("UNKNOWN", messages.RC_INVALID, f"internal error: {exc}")
            self.endpoint_socket.send(messages.encode(answer))

    def handle_endpoint_request(self, raw: bytes) -> dict[str, Any]:
        """One request from the plugin to its reply (never raises on bad input)."""
        try:
            msg = messages.decode_request(raw, ENDPOINT_REQUESTS)
        except messages.MessageError as exc:
            log.warning("Endpoint API: rejected request (%s)", exc)
            self._count_rejected_announcement(raw)
            self.metrics.endpoint_request("rejected")
            return messages.invalid_reply(exc)
        msg_type = msg["type"]
        self.metrics.endpoint_request(msg_type)
        if msg_type == messages.HEARTBEAT:
            return messages.reply(messages.HEARTBEAT)
        if msg_type == messages.ENDPOINTDESTROYED:
            return self._destroy(msg["endpoint_id"])
        return self._create_or_update(msg)

    def _create_or_update(self, msg: dict[str, Any]) -> dict[str, Any]:
        msg_type = msg["type"]
        spec = spec_from_message(msg)
        endpoint_id = spec.endpoint_id
        self._parked.pop(endpoint_id, None)  # this message is newer
        if msg_type == messages.ENDPOINTUPDATED and endpoint_id not in self.table:
            log.warning("ENDPOINTUPDATED for unknown endpoint %s: NOTEXIST", endpoint_id)
            return messages.reply(msg_type, messages.RC_NOTEXIST, f"endpoint {endpoint_id} does not exist")
        refusal = self.table.refusal(spec)
        if refusal is not None:
            self._refuse(msg, refusal)
            # It still counts towards a resync; an endpoint we had keeps what it had.
            known = endpoint_id if endpoint_id in self.table else None
            self._note_for_resync(msg_type, msg.get("resync_id"), endpoint_id, known)
            return messages.reply(msg_type, messages.RC_INVALID, refusal.reason)
        change = self._accept(spec)
        self._note_for_resync(msg_type, msg.get("resync_id"), endpoint_id, endpoint_id)
        if change is Change.UPDATED:
            self._retry_parked()  # it may have let go of an address
        return messages.reply(msg_type)

    def _accept(self, spec: EndpointSpec, waited: bool = False) -> Change:
        endpoint_id = spec.endpoint_id
        change = self.table.upsert(spec)
        state = "enabled" if spec.enabled else "disabled"
        after = " (its conflict has cleared)" if waited else ""
        if change is Change.CREATED:
            log.info("Endpoint %s created: %s, mac %s, %s%s", endpoint_id,
                     " ".join(spec.addrs) or "no addresses", spec.mac, state, after)
            self._subscribe(endpoint_id)  # the ACL manager answers with its ACLs
            self.dirty = True
        elif change is Change.UPDATED:
            log.info("Endpoint %s updated: %s, mac %s, %s%s", endpoint_id,
                     " ".join(spec.addrs) or "no addresses", spec.mac, state, after)
            self.dirty = True
        else:
            log.debug("Endpoint %s unchanged", endpoint_id)
        return change

    def _refuse(self, msg: dict[str, Any], refusal: Refusal) -> None:
        """One log line per refusal, except that a full host says so once
        until it has room again; conflicts that may clear are parked."""
        endpoint_id = msg["endpoint_id"]
        parked = refusal.may_clear and (endpoint_id in self._parked or len(self._parked) < self.config.max_endpoints)
        if parked:
            self._parked[endpoint_id] = {k: v for k, v in msg.items() if k != "resync_id"}
        full = refusal.kind == FULL
        level = logging.DEBUG if full and self._full_reported else logging.WARNING
        self._full_reported = self._full_reported or full
        log.log(level, "%s for endpoint %s refused (INVALID): %s%s", msg["type"], endpoint_id, refusal.reason,
                "; taken when that clears" if parked else "")

    def _retry_parked(self) -> None:
        """Take parked messages whose conflict has cleared."""
        if len(self.table) < self.config.max_endpoints:
            self._full_reported = False
        progress = True
        while progress and self._parked:
            progress = False
            for endpoint_id, msg in list(self._parked.items()):
                if msg["type"] == messages.ENDPOINTUPDATED and endpoint_id not in self.table:
                    del self._parked[endpoint_id]
                    continue
                spec = spec_from_message(msg)
                if self.table.refusal(spec) is not None:
                    continue
                del self._parked[endpoint_id]
                self._accept(spec, waited=True)
                if self.resync is not None:
                    self.resync.live(endpoint_id)
                progress = True

    def _destroy(self, endpoint_id: str) -> dict[str, Any]:
        self._parked.pop(endpoint_id, None)
        if self.resync is not None:
            self.resync.destroyed(endpoint_id)
        if endpoint_id not in self.table:
            log.warning("ENDPOINTDESTROYED for unknown endpoint %s: NOTEXIST", endpoint_id)
            return messages.reply(messages.ENDPOINTDESTROYED, messages.RC_NOTEXIST,
                                  f"endpoint {endpoint_id} does not exist")
        log.info("Endpoint %s destroyed", endpoint_id)
        self._forget_endpoint(endpoint_id)
        self._retry_parked()
        self.dirty = True
        return messages.reply(messages.ENDPOINTDESTROYED)

    def _note_for_resync(self, msg_type: str, resync_id: Any, key: str, endpoint_id: str | None) -> None:
        resync = self.resync
        if resync is None:
            return
        if msg_type == messages.ENDPOINTCREATED and resync_id == resync.resync_id:
            resync.announced(key, endpoint_id)
            self._resync_progress_at = self.loop.clock()
            self._check_resync_complete()
        elif endpoint_id is not None:
            resync.live(endpoint_id)

    def _count_rejected_announcement(self, raw: bytes) -> None:
        """A resync announcement we had to reject still counts towards the
        resync, or the resync would never complete.  Its endpoint, if it has
        a usable id, keeps what it had: rejecting new values of an endpoint
        is no reason to tear down its old ones."""
        if self.resync is None:
            return
        msg = messages.peek(raw)
        if msg is None or msg.get("type") != messages.ENDPOINTCREATED:
            return
        endpoint_id = msg.get("endpoint_id")
        known = endpoint_id if isinstance(endpoint_id, str) and endpoint_id in self.table else None
        key = known or f"rejected:{zlib.crc32(raw):08x}"
        self._note_for_resync(messages.ENDPOINTCREATED, msg.get("resync_id"), key, known)

    def _forget_endpoint(self, endpoint_id: str) -> None:
        self.table.remove(endpoint_id)
        if endpoint_id in self._subscribed:
            self._subscribed.discard(endpoint_id)
            self.acl_socket.setsockopt(zmq.UNSUBSCRIBE, endpoint_id.encode())
        self._unsubscribe_groups(self.groups.forget(endpoint_id))
        self._acl_problems.pop(endpoint_id, None)
        self.missing.discard(endpoint_id)

    # --- ACL manager ------------------------------------------------------------

    def _subscribe(self, endpoint_id: str) -> None:
        if endpoint_id not in self._subscribed:
            self._subscribed.add(endpoint_id)
            self.acl_socket.setsockopt(zmq.SUBSCRIBE, endpoint_id.encode())

    def _subscribe_groups(self, groups: list[str]) -> None:
        for group in groups:
            log.info("Subscribing to the members of group %s", group)
            self.acl_socket.setsockopt(zmq.SUBSCRIBE, messages.members_topic(group))

    def _unsubscribe_groups(self, groups: list[str]) -> None:
        for group in groups:
            log.info("Group %s: no endpoint here names it now; dropping its members", group)
            self.acl_socket.setsockopt(zmq.UNSUBSCRIBE, messages.members_topic(group))
            self._members_asked.discard(group)
        if groups:
            self.dirty = True

    def _ask_for_members(self, group: str, why: str) -> None:
        if group in self._members_asked:
            return
        self._members_asked.add(group)
        log.info("Group %s: %s; asking the ACL manager for all its members (keeping the ones we have)", group, why)
        self.acl_manager.send(messages.make(messages.GETGROUPMEMBERS, group=group))

    def _on_acl_reset(self) -> None:
        # Nothing is in flight after a reset: ask again for what was pending.
        self.acl_manager.clear()
        asked, self._members_asked = sorted(self._members_asked), set()
        for group in asked:
            if self.groups.is_needed(group):
                self._ask_for_members(group, "still missing members after the ACL manager stopped answering")

    def _on_acl_reply(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        if request["type"] != messages.GETGROUPMEMBERS:
            return
        group = request["group"]
        self._members_asked.discard(group)
        rc = reply.get("rc", messages.RC_SUCCESS)
        if rc != messages.RC_SUCCESS:
            log.warning("ACL manager refused GETGROUPMEMBERS for group %s (%s: %r)", group, rc, reply.get("message"))

    def _on_acl_publications(self) -> None:
        while True:
            try:
                frames = self.acl_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._heard_from_acl_manager()
            if len(frames) != 2:
                log.warning("ACL publication with %d frame(s) ignored (want topic and body)", len(frames))
                continue
            topic, body = frames
            if topic == messages.TOPIC_ACL_HEARTBEAT:
                self.metrics.acl_publication(messages.HEARTBEAT)
                continue
            group = messages.group_of_topic(topic)
            if group is not None:
                self.handle_members(group, body)
            else:
                self.handle_acl_update(topic, body)

    def handle_acl_update(self, topic: bytes, body: bytes) -> None:
        endpoint_id = topic.decode("utf-8", errors="replace")
        if endpoint_id not in self.table:
            # Subscriptions match by prefix, and a destroyed endpoint's ACLs
            # may still be in flight: neither is ours to program.
            log.debug("ACLUPDATE on topic %r ignored: not an endpoint of this host", endpoint_id)
            return
        try:
            msg = messages.decode_request(body, {messages.ACLUPDATE})
        except messages.MessageError as exc:
            log.warning("ACLUPDATE for endpoint %s rejected (%s); keeping its previous ACLs", endpoint_id, exc)
            self.metrics.acl_publication("rejected")
            return
        self.metrics.acl_publication(messages.ACLUPDATE)
        acls, problems = acls_from_wire(msg["acls"])
        reported = self._acl_problems.get(endpoint_id, frozenset())
        for problem in problems:
            if problem not in reported:
                log.warning("ACLUPDATE for endpoint %s: skipped %s", endpoint_id, problem)
        self._acl_problems[endpoint_id] = frozenset(problems)
        if self.table.set_acls(endpoint_id, acls):
            log.info("ACLs for endpoint %s: %s", endpoint_id, describe_acls(acls))
            self.dirty = True
        else:
            log.debug("ACLs for endpoint %s unchanged", endpoint_id)
        added, dropped = self.groups.need(endpoint_id, acls.groups)
        self._subscribe_groups(added)
        self._unsubscribe_groups(dropped)

    def handle_members(self, group: str, body: bytes) -> None:
        """A GROUPMEMBERS or MEMBERSUPDATE on a group's topic."""
        if not self.groups.is_needed(group):
            log.debug("membership of group %s ignored: no endpoint here names it", group)
            return
        try:
            msg = messages.decode_request(body, MEMBERS_TYPES)
        except messages.MessageError as exc:
            log.warning("Membership message for group %s rejected (%s); keeping the members we have", group, exc)
            self.metrics.acl_publication("rejected")
            return
        self.metrics.acl_publication(msg["type"])
        if msg["group"] != group:
            log.warning("%s for group %s arrived on group %s's topic; ignored", msg["type"], msg["group"], group)
            return
        msg = self._inside_pools(msg)
        if msg["type"] == messages.GROUPMEMBERS:
            outcome = self.groups.snapshot(msg)
            self._members_asked.discard(group)
        else:
            outcome = self.groups.delta(msg)
        held = self.groups.held(group)
        if outcome is Outcome.GAP:
            self._ask_for_members(group, f"missed a change (have {held.epoch}/{held.seq}, got "  # type: ignore[union-attr]
                                         f"{msg['epoch']}/{msg['seq']})")
        elif outcome is Outcome.CHANGED:
            log.info("Group %s: %d addresses (%s seq %d)", group, len(held.addrs), msg["type"],  # type: ignore[union-attr]
                     msg["seq"])
            self.dirty = True

    def _inside_pools(self, msg: dict[str, Any]) -> dict[str, Any]:
        """No address outside the pools joins a group's set, whoever says so:
        endpoints can only hold pool addresses (``EndpointTable.refusal``),
        so such a member is a mistake or an attempt to let a stranger in."""
        key = "addrs" if msg["type"] == messages.GROUPMEMBERS else "added"
        outside = [addr for addr in msg[key] if not in_pools(addr, self.table.pools)]
        if not outside:
            return msg
        log.warning("Group %s: ignoring %d address(es) outside the pools (%s): %s", msg["group"], len(outside),
                    describe_pools(self.table.pools), " ".join(outside[:5]) + (" ..." if len(outside) > 5 else ""))
        dropped = set(outside)
        return dict(msg, **{key: [addr for addr in msg[key] if addr not in dropped]})

    def _heard_from_acl_manager(self) -> None:
        self._acl_heard_at = self.loop.clock()
        if self._acl_live:
            return
        self._acl_live = True
        log.info("ACL manager: publications arriving from %s", self.addresses.acl_pub)

    def _acl_timer(self, now: float) -> float:
        if self._acl_live and now - self._acl_heard_at >= self.timeout:
            self._acl_live = False
            log.warning("ACL manager: nothing heard on %s for %.1fs; subscribing afresh (the ACLs we have stay "
                        "in force)", self.addresses.acl_pub, now - self._acl_heard_at)
            self._reopen_acl_socket()
            self._acl_reopen_at = now + self.timeout
        elif not self._acl_live and now >= self._acl_reopen_at:
            self._reopen_acl_socket()
            self._acl_reopen_at = now + self.timeout
        if self._acl_live:
            return max(self._acl_heard_at + self.timeout - now, 0.0)
        return max(self._acl_reopen_at - now, 0.0)

    # --- dataplane ---------------------------------------------------------------

    def _apply_timer(self, now: float) -> float | None:
        if self.synced_at is None:
            return None
        if not self.applied_once and (self.table.without_acls() or self.groups.unknown()):
            first_pass_at = self.synced_at + self.timeout
            if now < first_pass_at:
                return first_pass_at - now
        retry_due = self._retry_at is not None and now >= self._retry_at
        in_backoff = self._failures > 0 and not retry_due
        if (self.dirty and not in_backoff) or retry_due:
            self.apply()
        if self._retry_at is None:
            return None
        return max(self._retry_at - self.loop.clock(), 0.0)

    def apply(self) -> None:
        """One dataplane pass over the whole desired state."""
        groups = self.groups.known()
        desired = self.table.desired(groups.keys())
        self.dirty = False
        self._retry_at = None
        started, started_wall = time.perf_counter(), time.time()
        try:
            missing = self.dataplane.apply(desired, groups)
        except Exception as exc:
            self._pass_done(started, started_wall, desired, error=exc)
            self._failures += 1
            backoff = min(BACKOFF_MIN_SECS * 2 ** (self._failures - 1), BACKOFF_MAX_SECS)
            log.error("Dataplane pass failed (%s: %s); re-reading the kernel, retrying in %.1fs",
                      type(exc).__name__, exc, backoff)
            log.debug("Dataplane failure detail", exc_info=True)
            try:
                self.dataplane.forget_kernel_cache()
            except Exception as forget_exc:
                log.error("Dataplane could not forget its kernel cache: %s", forget_exc)
            self._last_apply_end = self.loop.clock()
            self._retry_at = self._last_apply_end + backoff
            return
        if self._failures:
            log.info("Dataplane pass succeeded again after %d failure(s)", self._failures)
        self._failures = 0
        self.applied_once = True
        self._last_apply_end = self.loop.clock()
        self._note_missing(set(missing) & set(desired), desired)
        self._pass_done(started, started_wall, desired)
        if self.missing:
            self._retry_at = self._last_apply_end + self.retry_interval
        log.debug("Dataplane pass done: %d endpoint(s), %d waiting for their interface",
                  len(desired), len(self.missing))

    # --- health and metrics --------------------------------------------------------

    def _pass_done(self, started: float, started_wall: float, desired: Mapping[str, EndpointSpec],
                   error: Exception | None = None) -> None:
        seconds = time.perf_counter() - started
        self._passes += 1
        self.metrics.pass_done(seconds, error is None)
        self._count_kernel_writes()
        if error is None:
            self._failing_since = None
            failed = getattr(self.dataplane, "failed", {})
            by_state = dict.fromkeys(ENDPOINT_STATES, 0)
            for endpoint_id, spec in desired.items():
                if endpoint_id in self.missing:
                    state = "interface-missing"
                elif endpoint_id in failed:
                    state = "fail-closed"
                elif not spec.enabled:
                    state = "disabled"
                elif spec.acls is None:
                    state = "waiting-for-acls"
                else:
                    state = "programmed"
                by_state[state] += 1
            self._by_state = by_state
            self.metrics.endpoints(len(desired), by_state)
        else:
            if self._failing_since is None:
                self._failing_since = self.loop.clock()
            self._last_error = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        self._last_pass = {"at": started_wall, "seconds": round(seconds, 6), "ok": error is None,
                           "endpoints": len(desired), "error": None if error is None else self._last_error}
        self.publish_health()

    def _count_kernel_writes(self) -> None:
        writes = getattr(self.dataplane, "writes", None)
        if writes is not None:
            ipsets = getattr(self.dataplane, "ipsets", None)
            self.metrics.kernel_writes(writes.snapshot(), getattr(ipsets, "request_errors", 0))

    def _set_not_ready(self, reason: str) -> None:
        if self.health is not None:
            self.health.set_not_ready(reason)

    def _health_timer(self, now: float) -> float:
        self.publish_health()
        return 1.0

    def readiness_problems(self) -> list[str]:
        """Why Felix is not ready (empty: ready)."""
        problems = []
        if self.synced_at is None:
            resync = self.resync
            progress = (f": {len(resync.counted)} of {resync.expected} endpoint(s) so far"
                        if resync is not None and resync.expected is not None else "")
            problems.append(f"first resync with the plugin ({self.addresses.plugin}) not complete{progress}")
        elif not self.applied_once:
            problems.append("first dataplane pass not applied yet" +
                            (f" (failing: {self._last_error})" if self._failures else ""))
        if not self._acl_live:
            problems.append(f"not hearing the ACL manager (nothing on {self.addresses.acl_pub})")
        return problems

    def publish_health(self) -> None:
        """Readiness, the dataplane's progress and the /status view, for the health server."""
        connected = {"plugin": self.plugin.connected, "acl-manager-requests": self.acl_manager.connected,
                     "acl-manager-publications": self._acl_live}
        self.metrics.peers(connected)
        health = self.health
        if health is None:
            return
        problems = self.readiness_problems()
        if problems:
            health.set_not_ready("; ".join(problems))
        else:
            health.set_ready()
        health.set_stall(self._failing_since, f"dataplane passes failing (last: {self._last_error})")
        now, wall = self.loop.clock(), time.time()
        health.publish({
            "host": self.config.felix_hostname,
            "endpoints": dict(self._by_state),
            "endpoint_count": len(self.table),
            "last_pass": self._last_pass,
            "passes": self._passes,
            "failing_since": None if self._failing_since is None else wall - (now - self._failing_since),
            "resync": {"first_completed": self._synced_wall, "in_progress": self.resync is not None,
                       "started": self._resyncs},
            "plugin": {"address": self.addresses.plugin, "connected": self.plugin.connected},
            "endpoint_api": {"address": self.addresses.endpoints, "last_request": self._last_request_wall},
            "acl_manager": {"requests": self.addresses.acl_req, "requests_connected": self.acl_manager.connected,
                            "publications": self.addresses.acl_pub, "hearing": self._acl_live,
                            "last_heard": wall - (now - self._acl_heard_at) if self._acl_live else None},
            "metrics": self.metrics.registry is not None,
        })

    def _note_missing(self, missing: set[str], desired: Mapping[str, EndpointSpec]) -> None:
        for endpoint_id in sorted(missing - self.missing):
            log.info("Endpoint %s: interface %s does not exist yet; retrying every %d ms", endpoint_id,
                     desired[endpoint_id].interface, self.config.endpoint_retry_time_millis)
        for endpoint_id in sorted(self.missing - missing):
            if endpoint_id in desired:
                log.info("Endpoint %s: interface %s now present and programmed", endpoint_id,
                         desired[endpoint_id].interface)
        self.missing = missing
