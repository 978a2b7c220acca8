"""Health and metrics over HTTP: ``/liveness``, ``/readiness``, ``/status``, ``/metrics``.

Every component (Felix, the plugin's two processes, the ACL manager) serves
these from one small HTTP server (``HealthServer``) on HealthHost:HealthPort
(default 127.0.0.1 and the component's port in ``DEFAULT_PORTS``):

* ``GET /liveness``: 200 ``live`` while the component makes progress, else
  503 and one line saying what stalled.  Progress means its event loop has
  turned within HealthTimeoutSecs (the loop stamps ``EventLoop.last_iteration``
  on every iteration, and wakes at least once a second), and, for Felix, that
  dataplane work waiting has not gone without a successful pass for as long;
* ``GET /readiness``: 200 ``ready`` once the component does its job (Felix:
  first resync complete, first dataplane pass applied, ACL manager heard;
  plugin: data directory read; ACL manager: first complete GETGROUPS
  snapshot), else 503 and the reason;
* ``GET /status``: the component's view as one JSON object (what
  ``calico-status`` prints);
* ``GET /metrics``: the Prometheus exposition of the component's own
  registry, when PrometheusMetricsEnabled (404 otherwise).

Threads.  The server runs in one daemon thread (``ThreadingHTTPServer``,
a thread per request) and only reads what the component's single loop
thread publishes in ``Health``: a float stamp, a string, a dict replaced
whole (never changed in place), and prometheus_client metrics, which are
thread-safe.  Nothing the HTTP side does can change the component: there is
no request that writes.

Bounds.  GET and HEAD only (anything else: 405); at most MAX_REQUEST_BYTES
read per connection (request line and headers; a body is never read); a
socket timeout of REQUEST_TIMEOUT_SECS and an overall deadline per
connection; at most MAX_CLIENTS connections served at once (more are
closed at once); HTTP/1.0, one request per connection.  A failing handler
is logged at DEBUG and the connection closed; a port that cannot be bound
is logged and tried again every BIND_RETRY_SECS, while the component runs
on.  Because the default address is the host's loopback, nothing in a
container (which has its own network namespace) or on the network reaches
it; set HealthHost to 0.0.0.0 only behind a firewall, for a remote scraper.

``calico-health`` (the images' HEALTHCHECK) asks one component's
``/readiness`` (or ``--liveness``) and exits 0 or 1 with the answer's line.
With no address it finds which component runs as the container's PID 1 and
reads that component's own settings for the address.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# Felix's is Calico's; the others are the next ports down, on the plugin host only.
DEFAULT_PORTS = {"felix": 9099, "plugin-network": 9098, "plugin-ep": 9097, "acl-manager": 9096}
DEFAULT_TIMEOUT_SECS = 90
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_SECS = 2.0
REQUEST_DEADLINE_SECS = 5.0
MAX_CLIENTS = 8
BIND_RETRY_SECS = 5.0
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Health:
    """What one component's loop thread publishes for the HTTP thread.

    The loop thread calls ``watch``, ``set_ready``/``set_not_ready``,
    ``publish`` and ``set_stall``; any thread may call ``liveness``,
    ``readiness`` and ``snapshot``.  Every published value is a float, a
    string, None or a dict that is replaced, never changed."""

    def __init__(self, component: str, timeout_secs: float = DEFAULT_TIMEOUT_SECS,
                 clock: Callable[[], float] = time.monotonic):
        self.component = component
        self.timeout = float(timeout_secs)
        self.clock = clock
        self.started = time.time()
        self._loop: Any = None
        self._not_ready: str | None = "starting"
        self._status: dict[str, Any] = {}
        self._stall: tuple[float, str] | None = None

    # --- the loop thread -----------------------------------------------------

    def watch(self, loop: Any) -> None:
        """Judge liveness by ``loop.last_iteration`` (an EventLoop, same clock)."""
        self._loop = loop

    def set_ready(self) -> None:
        self._not_ready = None

    def set_not_ready(self, reason: str) -> None:
        self._not_ready = reason

    def set_stall(self, since: float | None, what: str = "") -> None:
        """Work has waited since ``since`` (None: nothing waits) for ``what``."""
        self._stall = None if since is None else (since, what)

    def publish(self, status: Mapping[str, Any]) -> None:
        self._status = dict(status)

    # --- any thread ----------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        now = self.clock()
        loop = self._loop
        if loop is not None:
            idle = now - loop.last_iteration
            if idle > self.timeout:
                return False, (f"event loop stalled: no iteration for {idle:.0f} s "
                               f"(HealthTimeoutSecs {self.timeout:g})")
        stall = self._stall
        if stall is not None and now - stall[0] > self.timeout:
            return False, f"{stall[1]} for {now - stall[0]:.0f} s (HealthTimeoutSecs {self.timeout:g})"
        return True, "live"

    def readiness(self) -> tuple[bool, str]:
        live, reason = self.liveness()
        if not live:
            return False, reason
        not_ready = self._not_ready
        return (True, "ready") if not_ready is None else (False, not_ready)

    def snapshot(self) -> dict[str, Any]:
        live, live_reason = self.liveness()
        ready, ready_reason = self.readiness()
        return {"component": self.component, "pid": os.getpid(), "started": self.started,
                "now": time.time(), "live": live, "liveness": live_reason, "ready": ready,
                "readiness": ready_reason, **self._status}


# --- the HTTP server -------------------------------------------------------------

class _BoundedReader:
    """A request's input, cut off after ``budget`` bytes or the deadline."""

    def __init__(self, raw: Any, budget: int, deadline: float):
        self.raw = raw
        self.budget = budget
        self.deadline = deadline

    def _allowance(self, limit: int | None) -> int:
        if self.budget <= 0 or time.monotonic() > self.deadline:
            return 0
        return self.budget if limit is None or limit < 0 else min(limit, self.budget)

    def readline(self, limit: int | None = -1) -> bytes:
        allowed = self._allowance(limit)
        if not allowed:
            return b""
        line = self.raw.readline(allowed)
        self.budget -= len(line)
        return line

    def read(self, size: int | None = -1) -> bytes:
        allowed = self._allowance(size)
        if not allowed:
            return b""
        data = self.raw.read(allowed)
        self.budget -= len(data)
        return data

    def close(self) -> None:
        self.raw.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "calico-health"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_SECS
    server: "_Server"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.rfile = _BoundedReader(self.rfile, MAX_REQUEST_BYTES,  # type: ignore[assignment]
                                    time.monotonic() + REQUEST_DEADLINE_SECS)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse_method(self) -> None:
        self._send(405, "only GET and HEAD\n", extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        health = self.server.health
        if path == "/liveness":
            ok, reason = health.liveness()
            self._send(200 if ok else 503, reason + "\n", body=body)
        elif path == "/readiness":
            ok, reason = health.readiness()
            self._send(200 if ok else 503, reason + "\n", body=body)
        elif path == "/status":
            self._send(200, json.dumps(health.snapshot(), sort_keys=True) + "\n", "application/json", body=body)
        elif path == "/metrics":
            render = self.server.metrics
            if render is None:
                self._send(404, "metrics are off (PrometheusMetricsEnabled)\n", body=body)
            else:
                self._send(200, render(), METRICS_CONTENT_TYPE, body=body)
        else:
            self._send(404, "not found: try /liveness, /readiness, /status or /metrics\n", body=body)

    def _send(self, code: int, text: str | bytes, content_type: str = "text/plain; charset=utf-8",
              body: bool = True, extra: Mapping[str, str] | None = None) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard one writes an HTML page; one plain line is enough.
        self.close_connection = True
        try:
            self._send(code, f"{code} {message or self.responses.get(code, ('',))[0]}\n",
                       body=getattr(self, "command", "") != "HEAD")
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("health %s: " + format, self.client_address[0], *args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], health: Health, metrics: Callable[[], bytes] | None):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.health = health
        self.metrics = metrics
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the address up in DNS (getfqdn).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("health: %d requests in progress; closing a connection from %s", MAX_CLIENTS,
                      client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("health: request from %s failed", client_address[0], exc_info=True)


class HealthServer:
    """Serve ``health`` (and ``metrics``, a callable giving the exposition
    bytes) on host:port from a daemon thread."""

    def __init__(self, health: Health, host: str, port: int, metrics: Callable[[], bytes] | None = None):
        self.health = health
        self.host = host
        self.port = port
        self.metrics = metrics
        self._server: _Server | None = None
        self._stopping = threading.Event()
        self.serving = threading.Event()  # set once bound (port 0: ``port`` is then the one chosen)
        self._thread = threading.Thread(target=self._run, name=f"health-{health.component}", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def _run(self) -> None:
        failed_before = False
        while not self._stopping.is_set():
            try:
                self._server = _Server((self.host, self.port), self.health, self.metrics)
            except OSError as exc:
                if not failed_before:
                    log.error("health: cannot serve on %s (%s); trying again every %.0f s", self.url,
                              exc.strerror or exc, BIND_RETRY_SECS)
                    failed_before = True
                self._stopping.wait(BIND_RETRY_SECS)
                continue
            self.port = self._server.server_address[1]
            self.serving.set()
            log.info("health: serving /liveness, /readiness, /status%s on %s",
                     " and /metrics" if self.metrics else "", self.url)
            try:
                self._server.serve_forever(poll_interval=0.5)
            except Exception as exc:  # never seen; the component must not notice either way
                log.error("health: server stopped (%s); starting it again", exc)
            finally:
                self._server.server_close()
            if not self._stopping.is_set():
                self._stopping.wait(BIND_RETRY_SECS)

    def close(self) -> None:
        self._stopping.set()
        server = self._server
        if server is not None:
            server.shutdown()
        self._thread.join(5)


def serve(health: Health, enabled: bool, host: str, port: int, metrics: Any) -> HealthServer | None:
    """The component's health server, started (``metrics``: the component's
    metrics object; /metrics is served only when it has a registry), or None
    when HealthEnabled is off."""
    if not enabled:
        return None
    return HealthServer(health, host, port, metrics.render if metrics.registry is not None else None).start()


# --- settings shared by the components --------------------------------------------

def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    if host in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def base_url(host: str, port: int) -> str:
    host = connect_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET ``url``: (status, body text).  Raises OSError when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise reason if isinstance(reason, OSError) else OSError(str(reason)) from None


# --- calico-health: the images' HEALTHCHECK ------------------------------------

def _pid1_argv() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def component_of(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """(component, its own arguments) for a command line that runs one, else None."""
    for i, word in enumerate(argv):
        name = os.path.basename(word)
        rest = list(argv[i + 1:])
        if name in ("calico-felix",) or word == "calico.felix.main":
            return "felix", rest
        if name == "calico-acl-manager" or word == "calico.acl_manager.main":
            return "acl-manager", rest
        if name in ("calico-plugin", "plugin.py") or word == "calico.plugin.main":
            api = next((w for w in rest if w in ("ep", "network")), "ep")
            return f"plugin-{api}", rest
        if name in ("run_bird", "bird"):
            return "bird", rest
    return None


def health_url(component: str, args: Sequence[str]) -> str | None:
    """The base URL of this component's health server, from its own
    arguments and settings (None when its HealthEnabled is off)."""
    # Imported here: the registry takes this module's defaults.
    from calico.common import settings
    from calico.common.config import read_settings

    parser = settings.argument_parser(component)
    parsed, _rest = parser.parse_known_args(list(args))  # the plugin's API word is not a setting
    if component in settings.FILE_READERS:
        if parsed.config_file is None and not os.path.exists(settings.default("config_file", component)):
            parsed.config_file = os.devnull  # no config file here: the environment and the defaults
        config = read_settings(component, parsed)
        enabled, host, port = config.health_enabled, config.health_host, config.health_port
    else:
        values, _origins = settings.resolve_command_line(component, parsed, os.environ)
        enabled, host, port = values["health_enabled"], values["health_host"], values["health_port"]
    return base_url(host, port) if enabled else None


def _bird_check(args: Sequence[str]) -> tuple[bool, str]:
    from calico.common.bird_socket import BirdError, bird_command, find_bird_socket

    args = list(args)
    given = args[args.index("-s") + 1] if "-s" in args[:-1] else None  # bird ... -s SOCKET
    path = given or find_bird_socket()
    if path is None:
        return False, "BIRD: no control socket found"
    try:
        bird_command(path, "show status", timeout=3.0)
    except (OSError, BirdError) as exc:
        return False, f"BIRD: {exc}"
    return True, "BIRD answers on its control socket"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="calico-health",
        description="Ask a Calico component's /readiness (or /liveness); exit 0 if it says 200.")
    parser.add_argument("target", nargs="?", help="base URL (http://127.0.0.1:9099) or a component: felix, "
                        "acl-manager, plugin-ep, plugin-network, bird (default: the container's main process)")
    parser.add_argument("--liveness", action="store_true", help="ask /liveness instead of /readiness")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (%(default)s)")
    args = parser.parse_args(argv)
    target = args.target
    try:
        if target is None or not target.startswith("http"):
            if target is None:
                found = component_of(_pid1_argv())
                if found is None:
                    print("calico-health: no Calico component runs as PID 1; name one", file=sys.stderr)
                    return 2
                component, rest = found
            else:
                component, rest = target, []
                if component not in DEFAULT_PORTS and component != "bird":
                    print(f"calico-health: unknown component {target!r}", file=sys.stderr)
                    return 2
            if component == "bird":
                ok, line = _bird_check(rest)
                print(line)
                return 0 if ok else 1
            url = health_url(component, rest)
            if url is None:
                print(f"{component}: HealthEnabled is off; nothing to ask")
                return 0
        else:
            url = target.rstrip("/")
        code, text = get(f"{url}/{'liveness' if args.liveness else 'readiness'}", args.timeout)
    except OSError as exc:
        print(f"not answering: {exc}")
        return 1
    except Exception as exc:  # a bad setting: say it in one line
        print(f"calico-health: {exc}", file=sys.stderr)
        return 2
    print(f"{code} {text.strip()}")
    return 0 if code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
