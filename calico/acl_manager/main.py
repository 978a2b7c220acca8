"""calico-acl-manager: groups in from the plugin, per-endpoint ACLs out to Felix.

One thread, one ``EventLoop`` over four sockets:

* SUB to the plugin's PUB (PluginAddress:9904), topics ``groups`` and
  ``networkheartbeat``;
* ``ReqChannel`` (REQ) to the plugin's REP (PluginAddress:9903) for GETGROUPS
  and keepalive HEARTBEATs;
* ROUTER and PUB on LocalAddress:9905/9906 for Felix (``publisher``);
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

Health (``calico.common.health``, HealthPort 9096 by default): ready once
the first GETGROUPS burst is complete (it has the groups); live while its
loop turns.  Metrics: ``calico.acl_manager.metrics``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any, Sequence

import zmq
from zmq.utils.monitor import recv_monitor_message

from calico.common import messages, security, settings
from calico.common.config import Config, ConfigError, read_settings, resolve_peers
from calico.common.health import Health, serve
from calico.common.logs import setup_logging
from calico.common.security import ClusterKeys, SecurityError, Transport, load_credentials
from calico.common.zmqloop import EventLoop, ReqChannel, tcp_address
from calico.acl_manager import metrics as acl_metrics
from calico.acl_manager.memberships import Memberships
from calico.acl_manager.network_store import GroupSpec, NetworkStore, SnapshotTracker
from calico.acl_manager.publisher import AclPublisher
from calico.acl_manager.rule_processor import RuleProcessor

log = logging.getLogger("calico.acl_manager")

INSECURE_SETTING = "[security] Insecure = true (or CALICO_INSECURE=1)"
SUB_HWM = 100_000
SUB_BATCH = 200  # publications handled per wake-up, so timers and Felix's requests still get turns


class AclManager:
    def __init__(self, config: Config, context: zmq.Context | None = None, snapshot_quiet: float = 1.0,
                 keys: ClusterKeys | None = None, health: Health | None = None,
                 metrics: acl_metrics.AclMetrics | None = None):
        self.config = config
        self.health = health
        self.metrics = metrics or acl_metrics.AclMetrics()
        self.context = context or zmq.Context.instance()
        self.loop = EventLoop()
        self.transport = Transport(self.context, self.loop, keys, config.max_message_bytes)
        self.store = NetworkStore()
        self.processor = RuleProcessor()
        self.memberships = Memberships()
        self.snapshot = SnapshotTracker(snapshot_quiet)
        self.timeout = config.connection_timeout_millis / 1000.0
        self.publisher = AclPublisher(self.loop, self.transport, config.local_address, self.processor.acls_for,
                                      config.connection_keepalive_interval_millis,
                                      members=self.memberships.snapshot, metrics=self.metrics)

        self.sub_address = tcp_address(config.plugin_address, messages.PORT_NET_PUB)
        self._open_subscription()
        self.proven = False  # a publication has arrived on the current subscription
        self.answered_unproven = False  # a GETGROUPS was answered before that
        self.last_published_heard = self.loop.clock()

        self.channel = ReqChannel(self.loop, self.transport.dialer(zmq.REQ, tcp_address(config.plugin_address,
                                                                                         messages.PORT_NET_REQ),
                                                                   security.ROLE_ACL_MANAGER,
                                                                   security.ROLE_PLUGIN_NETWORK),
                                  "network API", config.connection_timeout_millis,
                                  config.connection_keepalive_interval_millis,
                                  on_reply=self._on_reply, on_reset=self._on_reset)
        self.retry_getgroups_at: float | None = None
        self.last_request_reason = ""
        # For /status and the metrics.
        self.have_groups = False  # a GETGROUPS burst has completed
        self.snapshot_completed_at: float | None = None
        self.last_batch: dict[str, Any] | None = None
        if health is not None:
            health.watch(self.loop)
            self.loop.add_timer(self._health_timer)
        self.loop.add_timer(self._tick)
        log.info("ACL manager started: plugin at %s, subscribed to %s", config.plugin_address, self.sub_address)

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
            self._drop_unannounced(seen)
            self.metrics.snapshot_completed()
            self.snapshot_completed_at = time.time()
            if not self.have_groups:
                self.have_groups = True
                self.publish_health()
        due = self.snapshot.next_due(now)
        if due is not None:
            waits.append(due)
        return min(waits)

    def _drop_unannounced(self, seen: set[str]) -> None:
        stale = sorted(set(self.store.groups) - seen)
        log.info("plugin's snapshot complete: %d groups announced, %d dropped as gone%s",
                 len(seen), len(stale), f" ({', '.join(stale)})" if stale else "")
        for name in stale:
            self.store.remove(name)
        if stale:
            self._apply({name: None for name in stale})

    # --- groups in, ACLs out -------------------------------------------------

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
            self._apply(batch)

    def _subscription_proven(self) -> None:
        self.proven = True
        if self.answered_unproven:
            self.answered_unproven = False
            self.request_groups(f"first publication from {self.sub_address} since subscribing, after the last "
                                "GETGROUPS was answered: its groups may have been published before the "
                                "subscription took effect")

    def _on_group_update(self, body: bytes) -> GroupSpec | None:
        """Record one GROUPUPDATE; the spec if it changed anything, else None."""
        try:
            msg = messages.decode_request(body, {messages.GROUPUPDATE})
        except messages.MessageError as exc:
            log.warning("bad GROUPUPDATE from %s skipped: %s", self.sub_address, exc)
            return None
        spec = self.store.parse(msg)
        self.snapshot.group_received(spec.name, self.loop.clock())
        if not self.store.apply(spec):
            log.debug("group %s unchanged", spec.name)
            return None
        if spec.members:
            log.info("group %s: %d members, %d inbound and %d outbound rules",
                     spec.name, len(spec.members), len(spec.inbound), len(spec.outbound))
        else:
            log.info("group %s deleted (no members)", spec.name)
        return spec

    def _apply(self, batch: dict[str, GroupSpec | None]) -> None:
        started = time.monotonic()
        changes = self.processor.update(batch)
        # Members first: a Felix that learns from an ACLUPDATE that it needs
        # a group subscribes to it then, and gets the GROUPMEMBERS made now.
        membership = self.memberships.update(self.memberships.changes_for(batch, self.processor.groups,
                                                                          self.processor.referenced))
        for group, msg in membership:
            self.publisher.publish_members(group, msg)
        self.publisher.publish_all(changes)
        gone = sorted(ep for ep in changes if ep not in self.processor.acls)
        if gone:
            log.info("endpoints %s are in no group now: published empty ACLs and forgot them", ", ".join(gone))
        seconds = time.monotonic() - started
        log.info("groups %s: reconsidered %d endpoints, published %d ACLUPDATEs and %d membership changes "
                 "in %.1f ms", ", ".join(sorted(batch)), self.processor.recomputed, len(changes), len(membership),
                 seconds * 1000)
        self.metrics.computed(seconds)
        self.last_batch = {"at": time.time(), "seconds": round(seconds, 6), "groups": len(batch),
                           "acl_updates": len(changes), "membership_messages": len(membership)}
        self.metrics.sizes(len(self.processor.groups), len(self.processor.acls))

    # --- health and metrics --------------------------------------------------

    def _health_timer(self, now: float) -> float:
        self.metrics.sizes(len(self.processor.groups), len(self.processor.acls))
        self.publish_health()
        return 1.0

    def publish_health(self) -> None:
        health = self.health
        if health is None:
            return
        if self.have_groups:
            health.set_ready()
        else:
            health.set_not_ready(
                f"no complete set of groups from the plugin yet (GETGROUPS to {self.channel.address}: "
                f"{'answering' if self.channel.connected else 'no answer yet'}; subscription to "
                f"{self.sub_address}: {'up' if self.subscribed else 'down'})")
        pub = self.publisher
        health.publish({
            "groups": len(self.processor.groups),
            "endpoints": len(self.processor.acls),
            "referenced_groups": len(self.processor.referenced),
            "plugin": {"requests": self.channel.address, "requests_connected": self.channel.connected,
                       "subscription": self.sub_address, "subscribed": self.subscribed},
            "snapshot_completed": self.snapshot_completed_at,
            "last_batch": self.last_batch,
            "published": {"acl_updates": pub.published, "membership_messages": pub.published_members,
                          "bytes": pub.published_bytes},
            "metrics": self.metrics.registry is not None,
        })

    # --- life cycle ----------------------------------------------------------

    def run(self) -> None:
        self.loop.run()

    def close(self) -> None:
        self.channel.close()
        self._close_subscription()
        self.publisher.close()
        self.transport.close()


# --- command line -------------------------------------------------------------

def health_settings(argv: Sequence[str]) -> tuple[bool, str, int]:
    """(HealthEnabled, HealthHost, HealthPort) that ``calico-acl-manager argv`` serves on."""
    config = read_settings(settings.ACL_MANAGER, parse_args(argv))
    return config.health_enabled, config.health_host, config.health_port


def build_config(args: argparse.Namespace) -> Config:
    config = read_settings(settings.ACL_MANAGER, args)
    if not config.log_file_path:  # an empty LogFilePath (or --log-file '') is the default here, not "none"
        config.log_file_path = settings.default("log_file_path", settings.ACL_MANAGER)
    return resolve_peers(config, need=["plugin_address"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = settings.argument_parser(settings.ACL_MANAGER, "calico-acl-manager", __doc__.splitlines()[0])
    return parser.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"calico-acl-manager: {exc}", file=sys.stderr)
        return 2
    try:
        credentials = load_credentials(config.cluster_secret_file, config.insecure, INSECURE_SETTING)
    except SecurityError as exc:
        print(f"calico-acl-manager: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging("acl_manager", config.log_file_path, config.log_severity_file,
                      config.log_severity_screen, config.log_severity_sys)
    except OSError as exc:
        print(f"calico-acl-manager: [log] LogFilePath {config.log_file_path!r}: {exc.strerror}", file=sys.stderr)
        return 2
    settings.log_effective(log, settings.ACL_MANAGER, {**vars(config), "config_file": config.source},
                          config.origins, os.environ)
    for warning in credentials.warnings:
        log.warning("%s", warning)
    signal.signal(signal.SIGTERM, _terminate)
    metrics = acl_metrics.make(config.prometheus_metrics_enabled)
    health = Health("acl-manager", config.health_timeout_secs)
    server = serve(health, config.health_enabled, config.health_host, config.health_port, metrics)
    try:
        manager = AclManager(config, keys=credentials.keys, health=health, metrics=metrics)
    except zmq.ZMQError as exc:
        log.error("cannot start: %s (LocalAddress %r, PluginAddress %r)", exc, config.local_address,
                  config.plugin_address)
        return 1
    try:
        manager.publish_health()
        manager.run()
    except (KeyboardInterrupt, SystemExit):
        log.info("ACL manager stopping")
    finally:
        manager.close()
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
