"""``calico-plugin ep|network``: the plugin's two APIs as processes.

One process per API, as the seed ran them (``plugin.py ep`` and
``plugin.py network``), each a single event loop: the kernel says which
files of the data directory changed (inotify, polling as the fallback; see
calico/plugin/watcher.py), each loop wake-up applies one batch of them to
the store and hands the change to the API, and the API's sockets are served
in between.  The directory is read once before the sockets are served, so
the first RESYNCSTATE or GETGROUPS already sees every file.

The plugin has no config file: every flag is a setting of
``calico.common.settings`` (the same defaults as the other components'
config keys: timeout 6000 ms, keepalive 2000 ms...), and a flag left out
comes from the setting's environment variable where it has one
(``CALICO_SECRET_FILE``, ``CALICO_INSECURE``, the ``CALICO_HEALTH_*``
ones), then the default.  The cluster secret is /etc/calico/cluster.secret
by default (where the image has it); ``--insecure`` runs without (see
``calico.common.security``).

Health (``calico.common.health``): each process serves /liveness,
/readiness and /status (and /metrics with ``--prometheus-metrics-enabled``)
on ``--health-host`` (127.0.0.1) and ``--health-port`` (9097 for ``ep``,
9098 for ``network``); ready once it has read the data directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import zmq

from calico.common import settings
from calico.common.health import Health, serve
from calico.common.logs import setup_logging
from calico.common.security import SecurityError, Transport, load_credentials
from calico.common.zmqloop import EventLoop
from calico.plugin import metrics as plugin_metrics
from calico.plugin.ep_api import EndpointApi
from calico.plugin.network_api import NetworkApi
from calico.plugin.store import DataState, StateChange
from calico.plugin.watcher import DataDirectory

log = logging.getLogger(__name__)

INSECURE_SETTING = "--insecure (or CALICO_INSECURE=1)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The API and every setting (``args.origins``: where each came from)."""
    parser = argparse.ArgumentParser(prog="calico-plugin", description=__doc__.splitlines()[0])
    parser.add_argument("api", choices=("ep", "network"), help="which API to serve")
    settings.add_flags(parser, settings.PLUGIN_EP)  # both APIs take the same flags
    args = parser.parse_args(argv)
    try:
        values, args.origins = settings.resolve_command_line(f"plugin-{args.api}", args, os.environ)
    except settings.SettingError as exc:
        parser.error(str(exc))
    vars(args).update(values)
    return args


def _setup_logging(args: argparse.Namespace) -> None:
    component = f"plugin-{args.api}"
    try:
        setup_logging(component, args.log_file_path, file_level=args.log_level, screen_level=args.log_level)
    except OSError as exc:
        setup_logging(component, "", screen_level=args.log_level)
        log.warning("cannot write log file %s (%s); logging to the screen only", args.log_file_path, exc.strerror)
    settings.log_effective(log, component, vars(args), args.origins, os.environ)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        credentials = load_credentials(args.cluster_secret_file, args.insecure, INSECURE_SETTING)
    except SecurityError as exc:
        print(f"calico-plugin: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args)
    for warning in credentials.warnings:
        log.warning("%s", warning)
    loop = EventLoop()
    metrics = plugin_metrics.make(args.prometheus_metrics_enabled, args.api)
    health = Health(f"plugin-{args.api}", args.health_timeout_secs)
    health.set_not_ready(f"reading the data directory {args.data_dir}")
    server = serve(health, args.health_enabled, args.health_host, args.health_port, metrics)
    context = zmq.Context()
    transport = Transport(context, loop, credentials.keys, args.max_message_bytes)
    data = DataDirectory(args.data_dir, args.watch, args.poll_interval_ms / 1000.0)
    try:
        if args.api == "ep":
            api = EndpointApi(loop, transport, args.local_address, args.connection_timeout_millis, args.connection_keepalive_interval_millis, metrics)
            where = api.address
        else:
            api = NetworkApi(loop, transport, args.local_address, args.connection_keepalive_interval_millis, metrics)
            where = f"{api.rep_address} and {api.pub_address}"
    except zmq.ZMQError as exc:
        log.error("cannot bind the %s API on %s: %s", args.api, args.local_address, exc)
        context.destroy(linger=0)  # closes the socket that failed to bind (term() would wait for it)
        if server is not None:
            server.close()
        return 1

    api.apply(data.state, data.load())  # the directory before the first request
    log.info("plugin %s API serving on %s, data directory %s", args.api, where, args.data_dir)
    health.watch(loop)

    def publish_health(now: float) -> float:
        # Ready once the directory has been read; a directory that cannot be
        # read at start (a missing mount) has told us nothing yet.
        if data.watcher.read_once:
            health.set_ready()
        else:
            health.set_not_ready(f"data directory {args.data_dir} not read yet: {data.watcher.error}")
        state = data.state
        files, bad = data.file_counts()
        metrics.data(files, bad, len(state.hosts), len(state.endpoints), len(state.groups))
        health.publish({"data_dir": data.watcher.path, "watch": data.watcher.mode,
                        "data_dir_error": data.watcher.error, "files": files, "bad_files": bad,
                        "hosts": len(state.hosts), "endpoints": len(state.endpoints), "groups": len(state.groups),
                        "problems": state.problems, "api": api.status(),
                        "metrics": metrics.registry is not None})
        return 1.0

    publish_health(loop.clock())
    # Once a second (the links' queues), and at once after each change the
    # directory brings (below): counting 10,000 files every turn would be
    # work in proportion to the directory, not to what changed.
    loop.add_timer(publish_health)

    def stop(signum: int, _frame: object) -> None:
        log.info("plugin %s API: %s received; stopping", args.api, signal.Signals(signum).name)
        loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def on_change(state: DataState, change: StateChange) -> None:
        api.apply(state, change, data.changed_at)
        loop.wake(publish_health)

    data.attach(loop, on_change)
    try:
        loop.run()
    finally:
        data.close()
        api.close()
        transport.close()
        context.term()
        if server is not None:
            server.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
