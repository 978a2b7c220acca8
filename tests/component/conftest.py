"""Shared helpers for component tests: real processes, fake ZeroMQ peers.

Component tests start a real component (``calico-plugin``,
``calico-acl-manager``...) as a subprocess and talk to it over ZeroMQ on
loopback, as its real peers would.  Each test file owns a 127.0.x.0/24
range so concurrent runs do not collide on the fixed ports (plugin tests:
127.0.1.x; ACL manager tests: another range).

Fixtures (everything they make is closed or killed at teardown, pass or fail):

``wait_until(predicate, what="", timeout=15.0, interval=0.02)`` (tests/polling.py)
    Call ``predicate`` until it returns something truthy; return that value.
    On timeout fail the test naming ``what``.  Use generous timeouts: this
    is a wait for a condition, never a timing assertion.

``spawn(args, name, log_file=None)`` -> ``Component``
    Run ``[sys.executable, *args]`` (e.g. ``["-m", "calico.plugin.main",
    "ep", ...]``) with stdout+stderr going to ``<tmp>/<name>.out``.
    ``Component``: ``.pid``, ``.alive``, ``.output()`` (screen text),
    ``.log()`` (the ``log_file`` text if given, else the screen text),
    ``.count(text)`` (occurrences in ``.log()``), ``.stop()`` (SIGTERM, then
    SIGKILL after 5 s; returns the exit code), ``.kill()`` (SIGKILL).  The
    process is killed by pid at teardown, and dies with the test runner
    even when that is killed itself (PR_SET_PDEATHSIG).

``peers`` -> ``Peers``, a factory of fake peers, each with its own context.
    Every peer speaks CURVE with keys derived from the test secret
    (tests/testkeys.py), as the role its port says (``role``/``host``
    choose another; ``keys=None`` makes it a plain, unauthenticated peer,
    ``keys=testkeys.OTHER_KEYS`` a stranger's):
    ``peers.rep(address, responder=None, role=None, host=None)`` -> ``RepPeer``: binds a REP
        socket served by a thread (a failed bind raises in the test).
        ``.received`` is the list of decoded requests (raw bytes if not
        JSON); ``responder(msg)`` returns the reply dict, or raw bytes
        (default: same type, rc SUCCESS).  ``.of_type(t)``
        filters ``.received``; ``.close()`` unbinds (a dead peer).
    ``peers.req(address, timeout=5.0, role=None, host=None, keys=KEYS)`` -> ``ReqPeer``: ``.request(msg)``
        sends a dict (or raw bytes, or a list of frames) and returns the
        decoded reply, or None on timeout (the socket is then made afresh,
        as a real REQ client must).
    ``peers.sub(address, topics, role=None, keys=KEYS)`` -> ``SubPeer``: thread-collected
        ``(topic, decoded body)`` pairs in ``.received``;
        ``.of_topic(topic)`` filters them.
    ``peers.pub(address, role=None)`` -> ``PubPeer``: ``.publish(topic, msg)``.

``start_plugin(api, data_dir, bind, *extra_args, name=None, secure=True)`` -> ``Component``
    Run the real ``calico-plugin ep|network`` (via ``python -m
    calico.plugin.main``) on ``bind`` with its log file in the test's tmp
    dir and the test cluster's secret, and return once it says it is serving.

``loopback_range(name)`` (context manager)
    Hold an exclusive lock for one address range (e.g. ``"127.0.1"``) while
    a test uses it, so two test runs on one machine (two engineers, or a
    loop) take turns instead of colliding on the fixed ports.  Use it in an
    autouse fixture of each test module.

``zmq_request(msg_type, **fields)`` builds a request dict stamped with
``issued`` (it is ``calico.common.messages.make``).

``intruders`` -> ``Intruders``: the peers that must get nothing from a
port (``testkeys.intruders``: every wrong role, a stranger's keys, no CURVE).
    ``.ask(address, msg, rightful, host=None)`` -> ``{label: reply}``, each
        None if nothing came back (1 s each).
    ``.subscribe(address, topics, rightful)`` -> ``{label: SubPeer}``.

``peers.socket(kind, address, role=None, host=None, keys=KEYS)``: a plain
pyzmq socket of any kind (DEALER, XSUB...), with the keys, connected.

``barrage(req, payloads, limit)``: send every payload (bytes, or a list of
frames) through ``req`` in turn and check each answer: nothing for a
message over ``limit`` bytes (the socket must drop it unread), else a
reply whose rc is SUCCESS or INVALID (or one of ``rcs``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable

import pytest
import zmq

import polling
import testkeys
from binding import BIND_WAIT_SECS, bind_when_free, close_and_wait
from calico.common import messages
from calico.common.security import ClusterKeys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@pytest.fixture
def wait_until():
    return functools.partial(polling.wait_until, interval=0.02)


# --- real components --------------------------------------------------------

# Run in the child: ask for SIGKILL when the test runner dies
# (PR_SET_PDEATHSIG survives exec), give up if it already has, then exec the
# component.  Done after the fork rather than in preexec_fn, which is unsafe
# in a process with threads (the fake peers).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n"
)


@contextlib.contextmanager
def loopback_range(name: str):
    with open(f"/tmp/calico-component-{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(name="loopback_range")
def loopback_range_fixture():
    return loopback_range


class Component:
    def __init__(self, args: list[str], name: str, out_path: str, log_file: str | None):
        self.name = name
        self.out_path = out_path
        self.log_file = log_file
        with open(out_path, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args],
                                            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        self.pid = self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        return self._read(self.out_path)

    def log(self) -> str:
        return self._read(self.log_file) if self.log_file else self.output()

    def count(self, text: str) -> int:
        return self.log().count(text)

    def stop(self, timeout: float = 5.0) -> int:
        if self.alive:
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
        return self.process.wait()


@pytest.fixture
def spawn(tmp_path):
    started: list[Component] = []

    def start(args: list[str], name: str, log_file: str | None = None) -> Component:
        component = Component(args, name, str(tmp_path / f"{name}.out"), log_file)
        started.append(component)
        return component

    yield start
    for component in started:
        component.kill()


@pytest.fixture
def start_plugin(spawn, tmp_path, cluster_secret_file):
    def start(api: str, data_dir, bind: str, *extra_args: str, name: str | None = None,
              secure: bool = True) -> Component:
        name = name or f"plugin-{api}"
        log_file = str(tmp_path / f"{name}.log")
        security_args = ["--secret-file", cluster_secret_file] if secure else ["--insecure"]
        component = spawn(["-m", "calico.plugin.main", api, "--data-dir", str(data_dir), "--bind", bind,
                           "--log-file", log_file, *security_args, *extra_args], name, log_file)
        try:
            polling.wait_until(lambda: "serving on" in component.log() or not component.alive, what=f"{name} to start")
        except BaseException:
            print(f"--- {name} screen output ---\n{component.output()}")
            raise
        assert component.alive, f"{name} exited: {component.output()}"
        return component

    return start


# --- fake peers -------------------------------------------------------------

class _Threaded:
    """A socket owned by one background thread (ZeroMQ sockets are not
    thread-safe); the thread polls so that close() is prompt."""

    def __init__(self, context: zmq.Context):
        self.context = context
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.received: list[Any] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            sock = self._make_socket()
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            while not self._stopping.is_set():
                if poller.poll(20):
                    self._serve(sock)
        finally:
            self._release(sock)

    def _release(self, sock: zmq.Socket) -> None:
        sock.close(linger=0)

    def _start(self) -> None:
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread.start()
        self._ready.wait(BIND_WAIT_SECS + 5)
        if self._error is not None:
            raise RuntimeError(f"{type(self).__name__} on {self.address}: {self._error}")

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _record(self, item: Any) -> None:
        with self._lock:
            self.received.append(item)

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.received)


def success_reply(msg: Any) -> dict[str, Any]:
    if not isinstance(msg, dict):
        return messages.reply("UNKNOWN", messages.RC_INVALID, "not JSON")
    return messages.reply(msg.get("type", "UNKNOWN"))


class RepPeer(_Threaded):
    """Owns its context, so that once ``close()`` returns the address is
    free for the next peer or component (tests/binding.py)."""

    def __init__(self, address: str, responder: Callable[[Any], dict] | None = None, role: str | None = None,
                 host: str | None = None, keys: ClusterKeys | None = testkeys.KEYS):
        super().__init__(zmq.Context())
        self.address = address
        self.responder = responder or success_reply
        self.role, self.host, self.keys = role, host, keys
        self._start()

    def _make_socket(self) -> zmq.Socket:
        sock = self.context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        testkeys.as_server(sock, self.address, self.role, self.host, self.keys)
        try:
            bind_when_free(sock, self.address)
        except zmq.ZMQError:
            close_and_wait(self.context, sock)
            raise
        return sock

    def _release(self, sock: zmq.Socket) -> None:
        close_and_wait(self.context, sock)

    def _serve(self, sock: zmq.Socket) -> None:
        msg = _decode(sock.recv())
        self._record(msg)
        reply = self.responder(msg)
        sock.send(reply if isinstance(reply, bytes) else json.dumps(reply).encode())

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.snapshot() if isinstance(m, dict) and m.get("type") == msg_type]


class SubPeer(_Threaded):
    def __init__(self, context: zmq.Context, address: str, topics: list[bytes], role: str | None = None,
                 keys: ClusterKeys | None = testkeys.KEYS):
        super().__init__(context)
        self.address = address
        self.topics = topics
        self.role, self.keys = role, keys
        self._start()

    def _make_socket(self) -> zmq.Socket:
        sock = self.context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        testkeys.as_client(sock, self.address, self.role, keys=self.keys)
        for topic in self.topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(self.address)
        return sock

    def _serve(self, sock: zmq.Socket) -> None:
        frames = sock.recv_multipart()
        self._record((frames[0], _decode(frames[1]) if len(frames) > 1 else None))

    def of_topic(self, topic: bytes) -> list[Any]:
        return [body for t, body in self.snapshot() if t == topic]


class ReqPeer:
    """Used from the test's own thread only."""

    def __init__(self, context: zmq.Context, address: str, timeout: float = 5.0, role: str | None = None,
                 host: str | None = None, keys: ClusterKeys | None = testkeys.KEYS):
        self.context = context
        self.address = address
        self.timeout = timeout
        self.role, self.host, self.keys = role, host, keys
        self.socket = self._open()

    def _open(self) -> zmq.Socket:
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        testkeys.as_client(sock, self.address, self.role, self.host, self.keys)
        sock.connect(self.address)
        return sock

    def request(self, msg: dict | bytes | list[bytes], timeout: float | None = None) -> Any:
        if isinstance(msg, dict):
            self.socket.send(json.dumps(msg).encode())
        elif isinstance(msg, list):
            self.socket.send_multipart(msg)
        else:
            self.socket.send(msg)
        if self.socket.poll(int((timeout or self.timeout) * 1000)):
            return _decode(self.socket.recv())
        self.socket.close(linger=0)
        self.socket = self._open()
        return None

    def close(self) -> None:
        self.socket.close(linger=0)


class PubPeer:
    """Owns its context, like RepPeer."""

    def __init__(self, address: str, role: str | None = None):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        testkeys.as_server(self.socket, address, role)
        try:
            bind_when_free(self.socket, address)
        except zmq.ZMQError:
            self.close()
            raise

    def publish(self, topic: bytes, msg: dict) -> None:
        self.socket.send_multipart([topic, json.dumps(msg).encode()])

    def close(self) -> None:
        if not self.context.closed:
            close_and_wait(self.context, self.socket)


class Peers:
    def __init__(self):
        self.context = zmq.Context()
        self._made: list[Any] = []

    def _keep(self, peer):
        self._made.append(peer)
        return peer

    def rep(self, address: str, responder: Callable[[Any], dict] | None = None, role: str | None = None,
            host: str | None = None, keys: ClusterKeys | None = testkeys.KEYS) -> RepPeer:
        return self._keep(RepPeer(address, responder, role, host, keys))

    def req(self, address: str, timeout: float = 5.0, role: str | None = None, host: str | None = None,
            keys: ClusterKeys | None = testkeys.KEYS) -> ReqPeer:
        return self._keep(ReqPeer(self.context, address, timeout, role, host, keys))

    def sub(self, address: str, topics: list[bytes], role: str | None = None,
            keys: ClusterKeys | None = testkeys.KEYS) -> SubPeer:
        return self._keep(SubPeer(self.context, address, topics, role, keys))

    def pub(self, address: str, role: str | None = None) -> PubPeer:
        return self._keep(PubPeer(address, role))

    def socket(self, kind: int, address: str, role: str | None = None, host: str | None = None,
               keys: ClusterKeys | None = testkeys.KEYS) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        testkeys.as_client(sock, address, role, host, keys)
        sock.connect(address)
        return sock

    def close(self) -> None:
        for peer in reversed(self._made):
            peer.close()
        # destroy, not term: a socket a test made on this context and left
        # open must not hang the teardown.
        self.context.destroy(linger=0)


@pytest.fixture
def peers():
    made = Peers()
    yield made
    made.close()


@pytest.fixture
def zmq_request():
    return messages.make


class Intruders:
    def __init__(self, peers: Peers):
        self.peers = peers

    def ask(self, address: str, msg: dict, rightful: str, host: str | None = None) -> dict[str, Any]:
        return {label: self.peers.req(address, timeout=1.0, role=role, host=host, keys=keys).request(msg)
                for label, role, keys in testkeys.intruders(rightful)}

    def subscribe(self, address: str, topics: list[bytes], rightful: str) -> dict[str, SubPeer]:
        return {label: self.peers.sub(address, topics, role=role, keys=keys)
                for label, role, keys in testkeys.intruders(rightful)}


@pytest.fixture
def intruders(peers):
    return Intruders(peers)


@pytest.fixture
def barrage():
    def send(req: ReqPeer, payloads: list[bytes | list[bytes]], limit: int,
             rcs: tuple[str, ...] = (messages.RC_SUCCESS, messages.RC_INVALID)) -> None:
        for payload in payloads:
            size = sum(map(len, payload)) if isinstance(payload, list) else len(payload)
            reply = req.request(payload, timeout=2.0)
            if size > limit:
                assert reply is None, f"a message of {size} bytes was read"
            else:
                assert isinstance(reply, dict) and reply.get("rc") in rcs, (payload[:200], reply)
    return send
