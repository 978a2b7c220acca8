"""``calico-plugin ep|network``: the plugin's two APIs as processes.

One process per API, as the seed ran them (``plugin.py ep`` and
``plugin.py network``), each a single event loop: the kernel says which
files of the data directory changed (inotify, polling as the fallback; see
calico/plugin/watcher.py), each loop wake-up applies one batch of them to
the store and hands the change to the API, and the API's sockets are served
in between.  The directory is read once before the sockets are served, so
the first RESYNCSTATE or GETGROUPS already sees every file.

The timing flags exist for tests and unusual networks; the defaults are the
config defaults of the other components (timeout 6000 ms, keepalive 2000 ms).
The cluster secret comes from ``--secret-file``, else ``CALICO_SECRET_FILE``,
else /etc/calico/cluster.secret (where the image has it); ``--insecure`` or
``CALICO_INSECURE=1`` runs without (see ``calico.common.security``).

Health (``calico.common.health``): each process serves /liveness,
/readiness and /status (and /metrics with ``--prometheus-metrics-enabled``)
on ``--health-host`` (127.0.0.1) and ``--health-port`` (9097 for ``ep``,
9098 for ``network``); ready once it has read the data directory.  Each
flag left out comes from the environment as the other components' settings
do (``CALICO_HEALTH_ENABLED``, ``CALICO_HEALTH_HOST``, ``CALICO_HEALTH_PORT``,
``CALICO_HEALTH_TIMEOUT_SECS``, ``CALICO_PROMETHEUS_METRICS_ENABLED``), then
the default.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import zmq

from calico.common import config as config_module
from calico.common.health import DEFAULT_HOST as DEFAULT_HEALTH_HOST
from calico.common.health import DEFAULT_PORTS, DEFAULT_TIMEOUT_SECS, Health, serve
from calico.common.logs import setup_logging
from calico.common.security import DEFAULT_SECRET_FILE, SecurityError, Transport, load_credentials, parse_flag
from calico.common.validation import DECIMAL_RE, ValidationError, shown
from calico.common.zmqloop import DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, EventLoop
from calico.plugin import metrics as plugin_metrics
from calico.plugin.ep_api import EndpointApi
from calico.plugin.network_api import NetworkApi
from calico.plugin.watcher import WATCH_MODES, DataDirectory

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/opt/plugin/data"
DEFAULT_LOG_FILES = {"ep": "/var/log/calico/plugin_ep.log", "network": "/var/log/calico/plugin_net.log"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
INSECURE_SETTING = "--insecure (or CALICO_INSECURE=1)"


def _positive_ms(text: str) -> int:
    if not DECIMAL_RE.fullmatch(text) or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a positive number of milliseconds")
    return int(text)


def _message_bytes(text: str) -> int:
    if not DECIMAL_RE.fullmatch(text) or int(text) < MIN_MAX_MESSAGE_BYTES:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of bytes >= {MIN_MAX_MESSAGE_BYTES}")
    return int(text)


def _insecure_from_env() -> bool:
    text = os.environ.get("CALICO_INSECURE", "").strip()
    try:
        return parse_flag(text) if text else False
    except ValidationError as exc:
        raise SecurityError(f"environment CALICO_INSECURE: {exc}") from None


# flag attribute -> (environment variable, parser of the config files' key)
HEALTH_SETTINGS = {
    "health_enabled": ("CALICO_HEALTH_ENABLED", parse_flag),
    "health_host": ("CALICO_HEALTH_HOST", config_module._listen_host),
    "health_port": ("CALICO_HEALTH_PORT", config_module._port),
    "health_timeout_secs": ("CALICO_HEALTH_TIMEOUT_SECS", config_module._positive_int),
    "prometheus_metrics_enabled": ("CALICO_PROMETHEUS_METRICS_ENABLED", parse_flag),
}


def _health_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Each health setting: the flag, else its environment variable, else the default."""
    defaults = {"health_enabled": True, "health_host": DEFAULT_HEALTH_HOST,
                "health_port": DEFAULT_PORTS[f"plugin-{args.api}"], "health_timeout_secs": DEFAULT_TIMEOUT_SECS,
                "prometheus_metrics_enabled": False}
    for attr, (var, parse) in HEALTH_SETTINGS.items():
        raw, where = getattr(args, attr), "--" + attr.replace("_", "-")
        if raw is None:
            raw, where = os.environ.get(var, "").strip() or None, f"environment {var}"
        if raw is None:
            setattr(args, attr, defaults[attr])
            continue
        try:
            setattr(args, attr, parse(raw))
        except ValueError as exc:
            parser.error(f"{where} {shown(raw)}: {exc}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="calico-plugin", description=__doc__.splitlines()[0])
    parser.add_argument("api", choices=("ep", "network"), help="which API to serve")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="directory of *.txt files (%(default)s)")
    parser.add_argument("--bind", default="*", help="address to bind the API sockets to (%(default)s: all)")
    parser.add_argument("--log-file", default=None,
                        help="log file (default /var/log/calico/plugin_ep.log or plugin_net.log; '' for none)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="level for the log file and the screen (%(default)s)")
    parser.add_argument("--connection-timeout-ms", type=_positive_ms, default=6000,
                        help="a Felix silent this long gets a fresh socket (%(default)s)")
    parser.add_argument("--keepalive-ms", type=_positive_ms, default=2000,
                        help="heartbeat after this much quiet (%(default)s)")
    parser.add_argument("--watch", choices=WATCH_MODES, default="auto",
                        help="how to notice changed files: inotify, except on network and FUSE file systems "
                             "(auto), inotify anywhere, or poll (%(default)s)")
    parser.add_argument("--poll-interval-ms", type=_positive_ms, default=100,
                        help="how often to poll when polling, and to check the directory itself (%(default)s)")
    parser.add_argument("--max-message-bytes", type=_message_bytes, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="a peer sending a larger message is disconnected (%(default)s)")
    parser.add_argument("--secret-file", default=None,
                        help=f"the cluster secret (default CALICO_SECRET_FILE, else {DEFAULT_SECRET_FILE})")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="no authentication or encryption, for experiments (or CALICO_INSECURE=1)")
    parser.add_argument("--health-enabled", metavar="BOOL",
                        help="serve /liveness, /readiness and /status (default CALICO_HEALTH_ENABLED, else true)")
    parser.add_argument("--health-host", metavar="IP",
                        help=f"address to serve them on (default CALICO_HEALTH_HOST, else {DEFAULT_HEALTH_HOST})")
    parser.add_argument("--health-port", metavar="PORT",
                        help=f"port (default CALICO_HEALTH_PORT, else {DEFAULT_PORTS['plugin-ep']} for ep, "
                             f"{DEFAULT_PORTS['plugin-network']} for network)")
    parser.add_argument("--health-timeout-secs", metavar="SECS",
                        help="not live once the event loop has not turned for this long (default "
                             f"CALICO_HEALTH_TIMEOUT_SECS, else {DEFAULT_TIMEOUT_SECS})")
    parser.add_argument("--prometheus-metrics-enabled", metavar="BOOL",
                        help="serve /metrics too (default CALICO_PROMETHEUS_METRICS_ENABLED, else false)")
    args = parser.parse_args(argv)
    _health_arguments(args, parser)
    if args.secret_file is None:
        args.secret_file = os.environ.get("CALICO_SECRET_FILE", "").strip() or DEFAULT_SECRET_FILE
    if args.log_file is None:
        args.log_file = DEFAULT_LOG_FILES[args.api]
    return args


def _setup_logging(args: argparse.Namespace) -> None:
    component = f"plugin-{args.api}"
    try:
        setup_logging(component, args.log_file, file_level=args.log_level, screen_level=args.log_level)
    except OSError as exc:
        setup_logging(component, "", screen_level=args.log_level)
        log.warning("cannot write log file %s (%s); logging to the screen only", args.log_file, exc.strerror)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        insecure = args.insecure or _insecure_from_env()
        credentials = load_credentials(args.secret_file, insecure, INSECURE_SETTING)
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
            api = EndpointApi(loop, transport, args.bind, args.connection_timeout_ms, args.keepalive_ms, metrics)
            where = api.address
        else:
            api = NetworkApi(loop, transport, args.bind, args.keepalive_ms, metrics)
            where = f"{api.rep_address} and {api.pub_address}"
    except zmq.ZMQError as exc:
        log.error("cannot bind the %s API on %s: %s", args.api, args.bind, exc)
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
    loop.add_timer(publish_health)

    def stop(signum: int, _frame: object) -> None:
        log.info("plugin %s API: %s received; stopping", args.api, signal.Signals(signum).name)
        loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    data.attach(loop, lambda state, change: api.apply(state, change, data.changed_at))
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


def health_settings(argv: list[str]) -> tuple[bool, str, int]:
    """(health enabled, host, port) that ``calico-plugin argv`` serves on."""
    args = parse_args(argv)
    return args.health_enabled, args.health_host, args.health_port


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
