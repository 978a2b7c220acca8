"""``calico-felix``: read the config, set up logging, run the agent.

The config file holds the operator's settings (docs/architecture.md, "Configuration").  The
command-line flags after ``--config-file`` override single keys (each
declared with its key in ``calico.common.settings``); they exist
for tests and one-off runs (several Felixes on one machine, each in its own
namespace with its own log), and go through the same checks as the file, so
a bad value is one line on stderr naming the key, and exit status 2.

The health server (``calico.common.health``: /liveness, /readiness,
/status, and /metrics when PrometheusMetricsEnabled) starts before
anything else, so it answers "not ready" while Felix sets up the host.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Sequence

from calico.common import settings
from calico.common.config import Config, ConfigError, read_settings, resolve_peers, resolve_pools
from calico.common.logs import setup_logging
from calico.common.netns import owned_addresses
from calico.common.security import SecurityError, load_credentials

log = logging.getLogger(__name__)

INSECURE_SETTING = "[security] Insecure = true (or CALICO_INSECURE=1)"


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = settings.argument_parser(settings.FELIX, "calico-felix", "Calico Felix: the per-host agent.")
    return parser.parse_args(argv)


def _read(args: argparse.Namespace) -> Config:
    return read_settings(settings.FELIX, args)


def load(argv: Sequence[str] | None = None) -> Config:
    config = resolve_pools(_read(_arguments(argv)))
    return resolve_peers(config, need=["plugin_address", "acl_address", "felix_hostname"],
                         local_addresses=owned_addresses)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(argv)
        credentials = load_credentials(config.cluster_secret_file, config.insecure, INSECURE_SETTING)
    except (ConfigError, SecurityError) as exc:
        print(f"calico-felix: {exc}", file=sys.stderr)
        return 2
    setup_logging("felix", config.log_file_path, config.log_severity_file,
                  config.log_severity_screen, config.log_severity_sys)
    settings.log_effective(log, settings.FELIX, {**vars(config), "config_file": config.source}, config.origins,
                          os.environ)
    for warning in credentials.warnings:
        log.warning("%s", warning)

    from calico.common.health import Health, serve
    from calico.felix import metrics as felix_metrics
    from calico.felix import tools

    metrics = felix_metrics.make(config.prometheus_metrics_enabled)
    health = Health("felix", config.health_timeout_secs)
    server = serve(health, config.health_enabled, config.health_host, config.health_port, metrics)
    if metrics.registry is not None:
        tools.observers.append(metrics.tool_run)

    from calico.felix.agent import Agent
    from calico.felix.cluster import ClusterSource
    from calico.felix.dataplane import Dataplane

    try:
        cluster = ClusterSource(config.felix_hostname)
    except ConfigError as exc:
        log.error("Felix cannot start: %s", exc)
        print(f"calico-felix: {exc}", file=sys.stderr)
        return 2
    log.info("Cluster settings: %s", cluster.view.describe())
    try:
        agent = Agent(config, Dataplane(cluster=cluster.view,
                                        endpoint_to_host_action=config.default_endpoint_to_host_action,
                                        iptables_backend=config.iptables_backend),
                      cluster=cluster, keys=credentials.keys, health=health, metrics=metrics)
    except Exception as exc:
        log.error("Felix cannot start: %s", exc)
        return 1

    def stop(signum: int, _frame: object) -> None:
        log.info("Signal %d: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    except Exception as exc:
        log.error("Felix stopped: %s", exc)
        log.debug("Felix failure detail", exc_info=True)
        return 1
    finally:
        if server is not None:
            server.close()
    log.info("Felix stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
