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
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import zmq

from calico.common.logs import setup_logging
from calico.common.security import DEFAULT_SECRET_FILE, SecurityError, Transport, load_credentials, parse_flag
from calico.common.validation import DECIMAL_RE, ValidationError, shown
from calico.common.zmqloop import DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, EventLoop
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
    args = parser.parse_args(argv)
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
    context = zmq.Context()
    transport = Transport(context, loop, credentials.keys, args.max_message_bytes)
    data = DataDirectory(args.data_dir, args.watch, args.poll_interval_ms / 1000.0)
    try:
        if args.api == "ep":
            api = EndpointApi(loop, transport, args.bind, args.connection_timeout_ms, args.keepalive_ms)
            where = api.address
        else:
            api = NetworkApi(loop, transport, args.bind, args.keepalive_ms)
            where = f"{api.rep_address} and {api.pub_address}"
    except zmq.ZMQError as exc:
        log.error("cannot bind the %s API on %s: %s", args.api, args.bind, exc)
        context.destroy(linger=0)  # closes the socket that failed to bind (term() would wait for it)
        return 1

    api.apply(data.state, data.load())  # the directory before the first request
    log.info("plugin %s API serving on %s, data directory %s", args.api, where, args.data_dir)

    def stop(signum: int, _frame: object) -> None:
        log.info("plugin %s API: %s received; stopping", args.api, signal.Signals(signum).name)
        loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    data.attach(loop, api.apply)
    try:
        loop.run()
    finally:
        data.close()
        api.close()
        transport.close()
        context.term()
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
