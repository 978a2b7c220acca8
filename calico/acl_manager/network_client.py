"""The ACL manager's side of the plugin's network API: groups in.

Three sockets, all to the plugin:

* SUB to its PUB (PluginAddress:9904), topics ``groups`` and
  ``networkheartbeat``;
* ``ReqChannel`` (REQ) to its REP (PluginAddress:9903) for GETGROUPS and
  keepalive HEARTBEATs;
* a monitor of the SUB socket, which tells when the subscription (re)connects.

A connection libzmq drops for a protocol error (such as a publication over
MaxMessageBytes) is never made again by that socket: when the subscription
is down and nothing has come for ConnectionTimeoutMillis, the SUB socket is
made afresh.

When we ask for every group (GETGROUPS):
* whenever the SUB socket completes a handshake with the plugin's PUB: at
  start, and after the plugin restarted (however quickly);
* once more when the first publication arrives on a new subscription, if a
  GETGROUPS was answered before it.  A handshake does not mean the PUB has
  taken our subscription in yet (ZeroMQ's slow joiner): the burst that
  followed that answer may have been published before it and lost, whole
  or in part.  The first publication received proves the subscription, so
  the burst after the repeated GETGROUPS is complete.  Until then no
  snapshot completes, so nothing is dropped on the strength of a burst
  that may have gone missing;
* when the REQ channel resets (the plugin stopped answering);
* when nothing (not even ``networkheartbeat``) has come on the SUB socket
  for ConnectionTimeoutMillis.
A GETGROUPS already queued and not yet sent is not duplicated.  How the
following burst replaces the whole state is described in ``network_store``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from calico.common import messages, security
from calico.common.config import Config
from calico.common.security import Transport
from calico.common.zmqloop import EventLoop, ReqChannel, tcp_address
from calico.acl_manager.metrics import AclMetrics
from calico.acl_manager.network_store import GroupSpec, SnapshotTracker

log = logging.getLogger("calico.acl_manager")

SUB_HWM = 100_000
SUB_BATCH = 200  # publications handled per wake-up, so timers and Felix's requests still get turns

GroupHandler = Callable[[dict[str, Any]], "GroupSpec | None"]


class NetworkApiClient:
    """The subscription to the plugin's groups, the GETGROUPS channel, and
    the tally that says when the burst after a GETGROUPS is complete.

    ``on_group(msg)`` takes one decoded GROUPUPDATE and returns the group's
    spec if it changed anything; ``on_batch`` gets the changed groups read
    in one wake-up (a group with no members maps to None);
    ``on_snapshot`` gets the names announced in a completed burst."""

    def __init__(self, loop: EventLoop, transport: Transport, config: Config, snapshot_quiet: float,
                 metrics: AclMetrics, on_group: GroupHandler,
                 on_batch: Callable[[dict[str, GroupSpec | None]], None],
                 on_snapshot: Callable[[set[str]], None]):
        self.loop = loop
        self.transport = transport
        self.metrics = metrics
        self.on_group = on_group
        self.on_batch = on_batch
        self.on_snapshot = on_snapshot
        self.snapshot = SnapshotTracker(snapshot_quiet)
        self.timeout = config.connection_timeout_millis / 1000.0
        self.sub_address = tcp_address(config.plugin_address, messages.PORT_NET_PUB)
        self._open_subscription()
        self.proven = False  # a publication has arrived on the current subscription
        self.answered_unproven = False  # a GETGROUPS was answered before that
        self.last_published_heard = self.loop.clock()
        dialer = transport.dialer(zmq.REQ, tcp_address(config.plugin_address, messages.PORT_NET_REQ),
                                  security.ROLE_ACL_MANAGER, security.ROLE_PLUGIN_NETWORK)
        self.channel = ReqChannel(loop, dialer, "network API", config.connection_timeout_millis,
                                  config.connection_keepalive_interval_millis,
                                  on_reply=self._on_reply, on_reset=self._on_reset)
        self.retry_getgroups_at: float | None = None
        self.last_request_reason = ""
        loop.add_timer(self._tick)

    def _open_subscription(self) -> None:
        self.sub = self.transport.client(zmq.SUB, security.ROLE_ACL_MANAGER, security.ROLE_PLUGIN_NETWORK,
                                         options={zmq.RCVHWM: SUB_HWM})
        self.sub.setsockopt(zmq.SUBSCRIBE, messages.TOPIC_GROUPS)
        self.sub.setsockopt(zmq.SUBSCRIBE, messages.TOPIC_NETWORK_HEARTBEAT)
        self.monitor = self.sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.sub.connect(self.sub_address)
        self.subscribed = False
        self.loop.add_socket(self.monitor, self._on_monitor)
        self.loop.add_socket(self.sub, self._on_publication)

    def _close_subscription(self) -> None:
        self.loop.remove_socket(self.sub)
        self.loop.remove_socket(self.monitor)
        self.sub.disable_monitor()
        self.monitor.close(linger=0)
        self.sub.close(linger=0)

    def close(self) -> None:
        self.channel.close()
        self._close_subscription()

    # --- asking for groups ---------------------------------------------------

    def request_groups(self, reason: str) -> None:
        if any(msg["type"] == messages.GETGROUPS for msg in self.channel.queue):
            log.debug("GETGROUPS already queued (%s)", reason)
            return
        # While the plugin stays down this repeats every timeout: say it once.
        level = logging.INFO if self.channel.connected or reason != self.last_request_reason else logging.DEBUG
        self.last_request_reason = reason
        log.log(level, "asking the plugin for every group: %s", reason)
        self.channel.send(messages.make(messages.GETGROUPS))
        self.metrics.getgroups_sent()
        self.snapshot.request_sent(self.loop.clock())

    def _on_reply(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        if request["type"] != messages.GETGROUPS:
            return
        self.loop.wake(self._tick)  # the burst's quiet period may start now
        if reply.get("rc", messages.RC_SUCCESS) == messages.RC_SUCCESS:
            log.info("plugin accepted GETGROUPS; its groups follow")
            self.snapshot.reply_received(self.loop.clock())
            if not self.proven:
                self.answered_unproven = True
            return
        log.warning("plugin refused GETGROUPS (%s: %s); asking again in %.1fs",
                    reply.get("rc"), reply.get("message", ""), self.timeout)
        self.snapshot.abandon()
        self.retry_getgroups_at = self.loop.clock() + self.timeout

    def _on_reset(self) -> None:
        # Keep every group: the plugin may merely be restarting.
        self.request_groups("the plugin's network API stopped answering")

    def _on_monitor(self) -> None:
        try:
            event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        self.loop.wake(self._tick)  # a snapshot can complete only while subscribed
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.subscribed = True
            self.proven = self.answered_unproven = False
            self.last_published_heard = self.loop.clock()
            self.snapshot.resubscribed()
            self.request_groups(f"subscribed to {self.sub_address}")
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            self.subscribed = self.proven = False
            log.warning("lost the subscription to %s; keeping the groups we have", self.sub_address)

    def _tick(self, now: float) -> float | None:
        waits = []
        if now - self.last_published_heard >= self.timeout:
            self.last_published_heard = now
            if not self.subscribed:
                # libzmq does not reconnect a connection it dropped for a
                # protocol error (a publication over MaxMessageBytes, say):
                # only a new socket does.
                log.debug("subscription to %s down: opening it afresh", self.sub_address)
                self._close_subscription()
                self._open_subscription()
            self.request_groups(f"nothing from {self.sub_address} for {self.timeout:.1f}s")
        waits.append(self.last_published_heard + self.timeout - now)
        if self.retry_getgroups_at is not None:
            if now >= self.retry_getgroups_at:
                self.retry_getgroups_at = None
                self.request_groups("retrying a refused GETGROUPS")
            else:
                waits.append(self.retry_getgroups_at - now)
        seen = self.snapshot.complete(now, self.subscribed and self.proven)
        if seen is not None:
            self.on_snapshot(seen)
        # Until the subscription is up and proven a quiet snapshot cannot
        # complete, so it sets no deadline (0 would spin the loop); becoming
        # proven wakes this timer.
        due = self.snapshot.next_due(now) if self.subscribed and self.proven else None
        if due is not None:
            waits.append(due)
        return min(waits)

    # --- groups in -----------------------------------------------------------

    def _on_publication(self) -> None:
        # Groups read in one wake-up are applied as one batch, so a burst
        # publishes each endpoint's ACLs once rather than once per group
        # that touches it.
        batch: dict[str, GroupSpec | None] = {}
        for _ in range(SUB_BATCH):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.last_published_heard = self.loop.clock()
            if not self.proven:
                self._subscription_proven()
            if len(frames) != 2:
                log.warning("publication of %d frames from %s ignored (want topic and body)",
                            len(frames), self.sub_address)
                continue
            topic, body = frames
            if topic == messages.TOPIC_GROUPS:
                spec = self._on_group_update(body)
                if spec is not None:
                    batch[spec.name] = spec if spec.members else None
            elif topic == messages.TOPIC_NETWORK_HEARTBEAT:
                log.debug("network heartbeat")
        if batch:
            self.on_batch(batch)

    def _subscription_proven(self) -> None:
        self.proven = True
        self.loop.wake(self._tick)  # a snapshot waiting on the proof may complete
        if self.answered_unproven:
            self.answered_unproven = False
            self.request_groups(f"first publication from {self.sub_address} since subscribing, after the last "
                                "GETGROUPS was answered: its groups may have been published before the "
                                "subscription took effect")

    def _on_group_update(self, body: bytes) -> GroupSpec | None:
        try:
            msg = messages.decode_request(body, {messages.GROUPUPDATE})
        except messages.MessageError as exc:
            log.warning("bad GROUPUPDATE from %s skipped: %s", self.sub_address, exc)
            return None
        self.snapshot.group_received(msg["group"], self.loop.clock())
        return self.on_group(msg)

    # --- for /status ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"requests": self.channel.address, "requests_connected": self.channel.connected,
                "subscription": self.sub_address, "subscribed": self.subscribed}

    def progress(self) -> str:
        """Where the first burst stands, for the not-ready reason."""
        return (f"GETGROUPS to {self.channel.address}: "
                f"{'answering' if self.channel.connected else 'no answer yet'}; subscription to "
                f"{self.sub_address}: {'up' if self.subscribed else 'down'}")
