"""calico-acl-manager: groups in from the plugin, per-endpoint ACLs out to Felix.

One thread, one ``EventLoop`` over five sockets: three to the plugin for
the groups (``network_client``: its SUB, its GETGROUPS REQ channel and the
SUB's monitor, and when and why every group is asked for), and the ROUTER
and PUB on LocalAddress:9905/9906 for Felix (``publisher``).

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

from calico.common import settings
from calico.common.config import Config, ConfigError, read_settings, resolve_peers
from calico.common.health import Health, serve
from calico.common.logs import setup_logging
from calico.common.security import ClusterKeys, SecurityError, Transport, load_credentials
from calico.common.zmqloop import EventLoop
from calico.acl_manager import metrics as acl_metrics
from calico.acl_manager.memberships import Memberships
from calico.acl_manager.network_client import NetworkApiClient
from calico.acl_manager.network_store import GroupSpec, NetworkStore
from calico.acl_manager.publisher import AclPublisher
from calico.acl_manager.rule_processor import RuleProcessor

log = logging.getLogger("calico.acl_manager")

INSECURE_SETTING = "[security] Insecure = true (or CALICO_INSECURE=1)"


class AclManager:
    """Groups from the plugin (``network_client``) in, each endpoint's ACLs
    and the groups' members out to Felix (``publisher``)."""

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
        self.publisher = AclPublisher(self.loop, self.transport, config.local_address, self.processor.acls_for,
                                      config.connection_keepalive_interval_millis,
                                      members=self.memberships.snapshot, metrics=self.metrics)
        self.plugin = NetworkApiClient(self.loop, self.transport, config, snapshot_quiet, self.metrics,
                                       on_group=self._on_group_update, on_batch=self._apply,
                                       on_snapshot=self._on_snapshot)
        # For /status and the metrics.
        self.have_groups = False  # a GETGROUPS burst has completed
        self.snapshot_completed_at: float | None = None
        self.last_batch: dict[str, Any] | None = None
        if health is not None:
            health.watch(self.loop)
            # Once a second, and at once after each change (_apply wakes it):
            # /status follows every change without being rebuilt every turn.
            self.loop.add_timer(self._health_timer)
        log.info("ACL manager started: plugin at %s, subscribed to %s", config.plugin_address,
                 self.plugin.sub_address)

    # --- groups in, ACLs out -------------------------------------------------

    def _on_snapshot(self, seen: set[str]) -> None:
        self._drop_unannounced(seen)
        self.metrics.snapshot_completed()
        self.snapshot_completed_at = time.time()
        if not self.have_groups:
            self.have_groups = True
            self.publish_health()

    def _drop_unannounced(self, seen: set[str]) -> None:
        stale = sorted(set(self.store.groups) - seen)
        log.info("plugin's snapshot complete: %d groups announced, %d dropped as gone%s",
                 len(seen), len(stale), f" ({', '.join(stale)})" if stale else "")
        for name in stale:
            self.store.remove(name)
        if stale:
            self._apply({name: None for name in stale})

    def _on_group_update(self, msg: dict[str, Any]) -> GroupSpec | None:
        """Record one GROUPUPDATE; the spec if it changed anything, else None."""
        spec = self.store.parse(msg)
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
        if self.health is not None:
            self.loop.wake(self._health_timer)

    # --- health and metrics --------------------------------------------------

    def _health_timer(self, now: float) -> float:
        self.publish_health()
        return 1.0

    def publish_health(self) -> None:
        health = self.health
        if health is None:
            return
        if self.have_groups:
            health.set_ready()
        else:
            health.set_not_ready(f"no complete set of groups from the plugin yet ({self.plugin.progress()})")
        pub = self.publisher
        health.publish({
            "groups": len(self.processor.groups),
            "endpoints": len(self.processor.acls),
            "referenced_groups": len(self.processor.referenced),
            "plugin": self.plugin.status(),
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
        self.plugin.close()
        self.publisher.close()
        self.transport.close()


# --- command line -------------------------------------------------------------

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
