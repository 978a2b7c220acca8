"""The real ``calico-felix`` process programming a real host, checked with packets.

Each test builds a throwaway "host" namespace (prefix ``tfx-``) and runs the
real calico-felix in it with ``ip netns exec``.  Felix's peers are fakes
driven by the test: a plugin (REP 9901, REQ to Felix's 9902) and an ACL
manager (ROUTER 9905, PUB 9906), served by one thread that entered the host
namespace, bound on that namespace's own 127.0.0.1, so nothing crosses to
the root namespace.  Endpoints are further namespaces on veth pairs (host
side ``tap`` + id[:11], endpoint side ``eth0`` with a /32 or /128 and a
default route out of eth0).

What the tests look at is what a user sees: pings and TCP connections that
get through or not, the exact replies on the wire, and the kernel's own
listings (``iptables-legacy-save`` or ``iptables-nft-save``, ``ipset list``,
``ip route``).  Felix runs with the default ``IptablesBackend = auto``,
which in a namespace holding no rules picks the backend of this machine's
``iptables`` command (nft on Debian 12); the tests of restarts, resyncs and
ACLs also run once with each backend set explicitly (``--iptables-backend``).
Denials are only checked after the allowed paths of the same set-up work,
so a denial cannot pass just because Felix has not programmed anything yet.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import zmq

import fuzzdata
import polling
import testkeys
from binding import BIND_WAIT_SECS, bind_when_free, close_and_wait
from calico import netns
from calico.common import messages, security
from calico.common.kernel_names import interface_name
from calico.felix import backend_check
from felix_dp_helpers import BACKENDS, HOST, Lab

PREFIX = "tfx-"
LOOPBACK = "127.0.0.1"
TIMEOUT_MS = 1500
KEEPALIVE_MS = 300
RETRY_MS = 200
FELIX_HOST = "host-1"  # Felix's short host name: its keys are felix/host-1's
WAIT = 30.0  # generous: a wait for a condition, never a timing assertion

FELIX_ARGV = [os.path.join(os.path.dirname(sys.executable), "calico-felix")]


wait_until = functools.partial(polling.wait_until, timeout=WAIT)
FAKE_EPOCH = "f00d"


# --- the fake control plane, inside the host namespace -----------------------------------

class ControlPlane:
    """Fake plugin and ACL manager, served by one thread in ``ns``.

    The plugin side holds ``endpoints`` (its view of this host) and answers
    RESYNCSTATE by announcing them; the ACL-manager side is an XPUB, as the
    real one is: it answers each subscription to an endpoint's topic with
    the ACLs it holds for it and each subscription to a group's topic with
    the group's GROUPMEMBERS (if it holds them), and answers
    GETGROUPMEMBERS the same way.  While "hung" it reads nothing, so what
    Felix sends meanwhile waits in the sockets, as for a stalled process.  Tests call
    the public methods from their own thread; the work is done in the
    serving thread, since ZeroMQ sockets belong to one thread."""

    def __init__(self, ns: str, heartbeat_interval: float = KEEPALIVE_MS / 1000.0):
        self.ns = ns
        self.heartbeat_interval = heartbeat_interval
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.acls: dict[str, dict[str, Any]] = {}
        self.resyncs: list[dict[str, Any]] = []
        self.announcement_replies: list[dict[str, Any]] = []
        self.acl_requests: list[str] = []      # topics subscribed to and GETGROUPMEMBERS asked, in order
        self.members: dict[str, list[str]] = {}
        self.member_seq: dict[str, int] = {}
        self._calls: queue.Queue = queue.Queue()
        # (raw, future, seconds to wait for the answer); in flight: (raw, future, deadline)
        self._requests: list[tuple[bytes, concurrent.futures.Future | None, float]] = []
        self._in_flight: tuple[bytes, concurrent.futures.Future | None, float] | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.plugin_up = False
        self.acl_manager_up = True  # False: it neither answers nor publishes (a hung manager)
        self._thread = threading.Thread(target=self._serve, name=f"control-plane-{ns}", daemon=True)

    # --- test-side API ------------------------------------------------------

    def start(self) -> "ControlPlane":
        self._thread.start()
        self._ready.wait(BIND_WAIT_SECS + 10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(10)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, future))
        return future.result(timeout)

    def request(self, msg: dict[str, Any] | bytes, timeout: float = 10.0) -> dict[str, Any] | None:
        """Send one request to Felix's 9902 as the plugin; the decoded reply
        (None if Felix did not answer in time)."""
        raw = msg if isinstance(msg, bytes) else messages.encode(msg)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.call(lambda: self._requests.append((raw, future, timeout)))
        return future.result(timeout + 5)

    def set_endpoint(self, ep: "EndpointNs", state: str = "enabled") -> dict[str, Any]:
        """Record ``ep`` in the plugin's view (announced in resyncs); returns
        its ENDPOINTCREATED fields."""
        fields = ep.fields(state)
        self.call(lambda: self.endpoints.__setitem__(ep.endpoint_id, fields))
        return fields

    def drop_endpoint(self, endpoint_id: str) -> None:
        self.call(lambda: self.endpoints.pop(endpoint_id, None))

    def create(self, ep: "EndpointNs", state: str = "enabled") -> dict[str, Any] | None:
        fields = self.set_endpoint(ep, state)
        return self.request(messages.make(messages.ENDPOINTCREATED, **fields))

    def destroy(self, endpoint_id: str) -> dict[str, Any] | None:
        self.drop_endpoint(endpoint_id)
        return self.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id=endpoint_id))

    def set_acls(self, endpoint_id: str, acls: dict[str, Any], publish: bool = True) -> None:
        def do() -> None:
            self.acls[endpoint_id] = acls
            if publish:
                self._publish_acls(endpoint_id)
        self.call(do)

    def set_members(self, group: str, addrs: list[str], publish: bool = True) -> None:
        """The group's whole membership, published as a GROUPMEMBERS."""
        def do() -> None:
            self.members[group] = list(addrs)
            self.member_seq[group] = self.member_seq.get(group, 0) + 1
            if publish:
                self._publish_members(group)
        self.call(do)

    def change_members(self, group: str, added: list[str] = (), removed: list[str] = (),
                       skip: int = 0) -> None:
        """A MEMBERSUPDATE; ``skip`` numbers are left out first (a gap)."""
        def do() -> None:
            held = [a for a in self.members[group] if a not in removed] + list(added)
            self.members[group] = held
            self.member_seq[group] += 1 + skip
            body = messages.encode(messages.make(messages.MEMBERSUPDATE, group=group, epoch=FAKE_EPOCH,
                                                 seq=self.member_seq[group], added=list(added),
                                                 removed=list(removed)))
            self.acl_pub.send_multipart([messages.members_topic(group), body])
        self.call(do)

    def publish_raw(self, frames: list[bytes]) -> None:
        self.call(lambda: self.acl_pub.send_multipart(frames))

    def hang_acl_manager(self, hung: bool = True) -> None:
        def do() -> None:
            self.acl_manager_up = not hung
        self.call(do)

    def stop_plugin(self) -> None:
        self.call(self._close_plugin)

    def start_plugin(self) -> None:
        self.call(self._open_plugin)

    # --- serving thread -------------------------------------------------------------

    def _serve(self) -> None:
        try:
            with netns.entered(self.ns):
                # The context's I/O threads start here, so they live in the
                # namespace too, as do all sockets' connections.
                self.ctx = zmq.Context()
                self._open_plugin()
                self.acl_router = self._socket(zmq.ROUTER, bind=messages.PORT_ACL_REQ)
                self.acl_pub = self._socket(zmq.XPUB, bind=messages.PORT_ACL_PUB, verbose=True)
                self._ready.set()
                self._loop()
        except BaseException as exc:  # reported to the test through start()
            self._error = exc
            self._ready.set()
        finally:
            for ctx in (getattr(self, "plugin_ctx", None), getattr(self, "ctx", None)):
                if ctx is not None and not ctx.closed:
                    ctx.destroy(linger=0)

    def _socket(self, kind: int, bind: int | None = None, connect: int | None = None,
                ctx: zmq.Context | None = None, verbose: bool = False) -> zmq.Socket:
        """A socket with the keys of the role the fake plays on that port
        (tests/testkeys.py): the plugin's or the ACL manager's."""
        sock = (ctx or self.ctx).socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if verbose:
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        if bind is not None:
            testkeys.as_server(sock, f"tcp://{LOOPBACK}:{bind}")
            bind_when_free(sock, f"tcp://{LOOPBACK}:{bind}")
        if connect is not None:
            testkeys.as_client(sock, f"tcp://{LOOPBACK}:{connect}", host=FELIX_HOST)
            sock.connect(f"tcp://{LOOPBACK}:{connect}")
        return sock

    def _open_plugin(self) -> None:
        if self.plugin_up:
            return
        # The plugin side is closed and bound again by stop_plugin/start_plugin:
        # its own context (made here, in the namespace) lets the close wait
        # until 9901 is really free (tests/binding.py).
        self.plugin_ctx = zmq.Context()
        self.plugin_rep = self._socket(zmq.REP, bind=messages.PORT_EP_RESYNC, ctx=self.plugin_ctx)
        self.plugin_req = self._socket(zmq.REQ, connect=messages.PORT_EP_FELIX, ctx=self.plugin_ctx)
        self.plugin_up = True

    def _close_plugin(self) -> None:
        if not self.plugin_up:
            return
        close_and_wait(self.plugin_ctx, self.plugin_rep, self.plugin_req)
        self.plugin_up = False
        if self._in_flight is not None and self._in_flight[1] is not None:
            self._in_flight[1].set_result(None)
        self._in_flight = None

    def _loop(self) -> None:
        next_heartbeat = 0.0
        while not self._stopping:
            poller = zmq.Poller()
            if self.acl_manager_up:
                poller.register(self.acl_router, zmq.POLLIN)
                poller.register(self.acl_pub, zmq.POLLIN)
            if self.plugin_up:
                poller.register(self.plugin_rep, zmq.POLLIN)
                poller.register(self.plugin_req, zmq.POLLIN)
            ready = dict(poller.poll(20))
            if self.plugin_up and self.plugin_rep in ready:
                self._on_plugin_request()
            if self.plugin_up and self.plugin_req in ready:
                self._on_felix_reply()
            if self.acl_router in ready and self.acl_manager_up:
                self._on_acl_request()
            if self.acl_pub in ready and self.acl_manager_up:
                self._on_subscription()
            now = time.monotonic()
            if now >= next_heartbeat and self.acl_manager_up:
                self.acl_pub.send_multipart([messages.TOPIC_ACL_HEARTBEAT,
                                             messages.encode(messages.make(messages.HEARTBEAT))])
                next_heartbeat = now + self.heartbeat_interval
            self._pump_requests(now)
            while True:
                try:
                    fn, future = self._calls.get_nowait()
                except queue.Empty:
                    break
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

    def _on_plugin_request(self) -> None:
        msg = json.loads(self.plugin_rep.recv())
        if msg["type"] == messages.RESYNCSTATE:
            self.resyncs.append(msg)
            announced = list(self.endpoints.values())
            self.plugin_rep.send(messages.encode(messages.reply(messages.RESYNCSTATE,
                                                                endpoint_count=len(announced))))
            for fields in announced:
                raw = messages.encode(messages.make(messages.ENDPOINTCREATED, resync_id=msg["resync_id"], **fields))
                self._requests.append((raw, None, 10.0))
        else:
            self.plugin_rep.send(messages.encode(messages.reply(msg["type"])))

    def _pump_requests(self, now: float) -> None:
        if not self.plugin_up:
            return
        if self._in_flight is not None and now > self._in_flight[2]:
            # Felix is gone: a REQ socket with an unanswered request is stuck.
            _, future, _ = self._in_flight
            if future is not None:
                future.set_result(None)
            self._in_flight = None
            self.plugin_req.close(linger=0)
            self.plugin_req = self._socket(zmq.REQ, connect=messages.PORT_EP_FELIX, ctx=self.plugin_ctx)
        if self._in_flight is None and self._requests:
            raw, future, timeout = self._requests.pop(0)
            self.plugin_req.send(raw)
            self._in_flight = (raw, future, now + timeout)

    def _on_felix_reply(self) -> None:
        reply = json.loads(self.plugin_req.recv())
        if self._in_flight is None:
            return
        _, future, _ = self._in_flight
        self._in_flight = None
        if future is None:
            self.announcement_replies.append(reply)
        else:
            future.set_result(reply)

    def _on_subscription(self) -> None:
        frame = self.acl_pub.recv()
        if not frame or frame[0] != 1:
            return
        topic = frame[1:]
        group = messages.group_of_topic(topic)
        if topic == messages.TOPIC_ACL_HEARTBEAT:
            return
        self.acl_requests.append(topic.decode())
        if group is not None:
            if group in self.members:
                self._publish_members(group)
        elif topic.decode() in self.acls:
            self._publish_acls(topic.decode())

    def _publish_members(self, group: str) -> None:
        body = messages.encode(messages.make(messages.GROUPMEMBERS, group=group, epoch=FAKE_EPOCH,
                                             seq=self.member_seq[group], addrs=self.members[group]))
        self.acl_pub.send_multipart([messages.members_topic(group), body])

    def _on_acl_request(self) -> None:
        identity, empty, body = self.acl_router.recv_multipart()
        msg = json.loads(body)
        if msg["type"] == messages.GETGROUPMEMBERS:
            self.acl_requests.append(f"GETGROUPMEMBERS {msg['group']}")
            self.acl_router.send_multipart([identity, empty, messages.encode(
                messages.reply(msg["type"], group=msg["group"]))])
            if msg["group"] in self.members:
                self._publish_members(msg["group"])
        elif msg["type"] == messages.GETACLSTATE:
            endpoint_id = msg["endpoint_id"]
            self.acl_requests.append(endpoint_id)
            known = endpoint_id in self.acls
            rc = messages.RC_SUCCESS if known else messages.RC_NOTEXIST
            self.acl_router.send_multipart([identity, empty, messages.encode(messages.reply(msg["type"], rc))])
            if known:
                self._publish_acls(endpoint_id)
        else:
            self.acl_router.send_multipart([identity, empty, messages.encode(messages.reply(msg["type"]))])

    def _publish_acls(self, endpoint_id: str) -> None:
        body = messages.encode(messages.make(messages.ACLUPDATE, acls=self.acls[endpoint_id]))
        self.acl_pub.send_multipart([endpoint_id.encode(), body])


# --- endpoints: namespaces on veth pairs (the dataplane tests' Lab, with our prefix) ----------

@dataclass
class EndpointNs:
    endpoint_id: str
    addrs: tuple[str, ...]
    mac: str

    @property
    def interface(self) -> str:
        return interface_name(self.endpoint_id)

    @property
    def v4(self) -> str:
        return next(a for a in self.addrs if ":" not in a)

    @property
    def v6(self) -> str:
        return next(a for a in self.addrs if ":" in a)

    def fields(self, state: str = "enabled") -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "mac": self.mac, "state": state,
                "addrs": [{"addr": a} for a in self.addrs]}


class Topology(Lab):
    """The host namespace and endpoint namespaces (felix_dp_helpers.Lab,
    named ``tfx-...``); ``close`` removes them all."""

    def __init__(self, tag: str, backend: str):  # noqa: super().__init__ would name it tdp-
        self.tag = tag
        self.backend = backend  # the one Felix is to pick
        self.host = f"{PREFIX}{tag}"
        self.endpoint_ns = {}
        self.endpoints: dict[str, EndpointNs] = {}
        netns.remove(self.host)
        netns.create(self.host)

    def endpoint(self, name: str, *addrs: str, plumb: bool = True) -> EndpointNs:
        """An endpoint (id unique to this test); its namespace and veth pair
        are made now, or later with ``plumb`` (an interface that appears
        after the endpoint was announced)."""
        index = len(self.endpoints) + 1
        ep = EndpointNs(f"{name}{self.tag}", addrs, f"02:00:00:00:00:{index:02x}")
        self.endpoints[name] = ep
        if plumb:
            self.plumb(ep)
        return ep

    def plumb(self, ep: EndpointNs) -> None:
        self.add_endpoint(ep.endpoint_id, ep.addrs, ep.mac)

    def has_route(self, ep: EndpointNs, addr: str | None = None) -> bool:
        return f"{addr or ep.addrs[0]} dev {ep.interface} " in self.routes() + "\n"


# --- the real Felix ---------------------------------------------------------------------------

class FelixProcess:
    def __init__(self, topo: Topology, tmp_path, run: int, *extra: str):
        self.topo = topo
        self.log_file = str(tmp_path / f"felix-{run}.log")
        self.out_file = str(tmp_path / f"felix-{run}.out")
        self.config_file = str(tmp_path / "felix.cfg")
        secret_file = testkeys.write_secret_file(str(tmp_path / "cluster.secret"))
        with open(self.config_file, "w") as cfg:
            cfg.write("[global]\nResyncIntervalSecs = 3600\nIpPool = 192.168.0.0/16\nIpPool6 = fd00:10::/64\n"
                      "[log]\nLogSeverityScreen = WARNING\n"
                      f"[security]\nClusterSecretFile = {secret_file}\n")
        self.args = ["--config-file", self.config_file,
                     "--plugin-address", LOOPBACK, "--acl-address", LOOPBACK, "--local-address", LOOPBACK,
                     "--hostname", "host-1.example.com", "--log-file", self.log_file,
                     "--log-severity-file", "DEBUG",
                     "--connection-timeout-ms", str(TIMEOUT_MS), "--keepalive-ms", str(KEEPALIVE_MS),
                     "--endpoint-retry-ms", str(RETRY_MS), *extra]
        self.process: subprocess.Popen | None = None

    def start(self) -> "FelixProcess":
        with open(self.out_file, "ab") as out:
            self.process = subprocess.Popen(netns.argv(self.topo.host, [*FELIX_ARGV, *self.args]),
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9, by pid: no chance to tidy up."""
        if self.alive:
            os.kill(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> int | None:
        if not self.alive:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def count(self, text: str) -> int:
        return self.log().count(text)


# --- looking at the host and at traffic -------------------------------------------------------

def mentions(state: dict[str, str], ep: EndpointNs) -> list[str]:
    """Lines of the kernel state (Lab.kernel_state) that belong to this endpoint."""
    words = [ep.endpoint_id, ep.interface, *ep.addrs]
    return [line for text in state.values() for line in text.splitlines()
            if any(re.search(rf"(?<![\w.:]){re.escape(w)}(?![\w:])", line) for w in words)]


def duplicate_rules(save_text: str) -> list[str]:
    seen: set[str] = set()
    dups = []
    for line in save_text.splitlines():
        if line.startswith("-A "):
            if line in seen:
                dups.append(line)
            seen.add(line)
    return dups


def _gets_through(topo: Topology, src: EndpointNs, dst: str, kind: str, expect: bool) -> bool:
    if kind == "ping":
        return topo.ping(src.endpoint_id, dst, expect=expect)
    if kind.startswith("ping-from:"):
        return topo.ping(src.endpoint_id, dst, source=kind.split(":", 1)[1], expect=expect)
    if kind.startswith("tcp:"):
        return topo.tcp_ok(src.endpoint_id, dst, int(kind.split(":", 1)[1]), expect=expect)
    raise ValueError(kind)


Check = tuple[EndpointNs, str, str, bool]  # source, destination address, kind, expected to get through


def check_traffic(topo: Topology, checks: list[Check]) -> None:
    """Wait until every allowed path works, then check that every denied
    path is dropped; fail with the list of what got through wrongly."""
    for src, dst, kind, allowed in checks:
        if allowed:
            wait_until(lambda: _gets_through(topo, src, dst, kind, True),
                       f"{kind} {src.endpoint_id} -> {dst} to get through")
    leaks = [f"{kind} {src.endpoint_id} -> {dst} got through but should be dropped"
             for src, dst, kind, allowed in checks
             if not allowed and _gets_through(topo, src, dst, kind, False)]
    assert not leaks, "\n".join(leaks)


# --- fixtures ---------------------------------------------------------------------------------------

def allow(*rules: dict[str, Any], outbound: list[dict[str, Any]] | None = None, out_default: str = "allow",
          v6_in: list[dict[str, Any]] | None = None, v6_out_default: str = "allow") -> dict[str, Any]:
    return {"v4": {"inbound": list(rules), "outbound": outbound or [], "inbound_default": "deny",
                   "outbound_default": out_default},
            "v6": {"inbound": v6_in or [], "outbound": [], "inbound_default": "deny",
                   "outbound_default": v6_out_default}}


@dataclass
class Env:
    topo: Topology
    cp: ControlPlane
    tmp_path: Any
    started: list[FelixProcess] = field(default_factory=list)
    backend_flag: tuple[str, ...] = ()  # --iptables-backend, or nothing (auto)

    @property
    def felix(self) -> FelixProcess:
        return self.started[-1]

    def start_felix(self, *extra: str) -> FelixProcess:
        felix = FelixProcess(self.topo, self.tmp_path, len(self.started) + 1, *self.backend_flag, *extra)
        self.started.append(felix)
        return felix.start()

    def wait_synced(self, resyncs: int = 1) -> None:
        """Wait for this Felix run's ``resyncs``-th completed resync."""
        wait_until(lambda: self.felix.count(" complete: ") >= resyncs, f"Felix to complete resync #{resyncs}")
        assert self.felix.count(f"iptables backend: {self.topo.backend} (") == 1

    def wait_programmed(self, *eps: EndpointNs) -> None:
        """Routes first, then the dispatch rules: a pass writes routes before
        rules, so a route alone does not mean the pass is over."""
        for ep in eps:
            for addr in ep.addrs:
                wait_until(lambda: self.topo.has_route(ep, addr), f"route {addr} dev {ep.interface}")
            for version in sorted({6 if ":" in addr else 4 for addr in ep.addrs}):
                wait_until(lambda: f"-A felix-FROM-ENDPOINT -i {ep.interface} -g " in self.topo.iptables_save(version),
                           f"IPv{version} dispatch rule for {ep.interface}")

    def check(self, checks: list[Check]) -> None:
        check_traffic(self.topo, checks)


@pytest.fixture
def env(request, tmp_path):
    """Felix's world; ``indirect`` parametrisation names an iptables backend
    to set (else auto, which picks the iptables command's in an empty host)."""
    backend = getattr(request, "param", None)
    topo = Topology(uuid.uuid4().hex[:6], backend or backend_check.command_backend()[0])
    environment = None
    try:
        environment = Env(topo, ControlPlane(topo.host).start(), tmp_path,
                          backend_flag=("--iptables-backend", backend) if backend else ())
        yield environment
    finally:
        if environment is not None:
            for felix in environment.started:
                felix.kill()
                # Shown by pytest only when the test failed.
                lines = [line for line in felix.log().splitlines() if " DEBUG " not in line]
                print(f"--- {felix.log_file} (without DEBUG), last 60 lines:", *lines[-60:], sep="\n")
                print(open(felix.out_file, errors="replace").read()[-2000:])
            environment.cp.stop()
        topo.close()


def ok(msg_type: str) -> dict[str, str]:
    return {"type": msg_type, "rc": "SUCCESS", "message": ""}


# --- the tests ----------------------------------------------------------------------------------------

OPEN = allow({"cidr": "192.168.10.0/24"})


@pytest.mark.parametrize("env", BACKENDS, indirect=True)
def test_acls_decide_what_gets_through(env):
    """By address, by protocol and port, ICMP type, outbound as well as
    inbound, IPv4 and IPv6, and no spoofing."""
    a = env.topo.endpoint("a", "192.168.10.1", "fd00:10::1")
    b = env.topo.endpoint("b", "192.168.10.2")
    c = env.topo.endpoint("c", "192.168.10.3", "fd00:10::3")
    subnet = "192.168.10.0/28"  # also holds the address c will try to spoof
    env.cp.set_acls(a.endpoint_id, allow({"cidr": subnet, "protocol": "icmp", "icmp_type": 8},
                                         {"cidr": f"{b.v4}/32", "protocol": "tcp", "port": 8080},
                                         v6_in=[{"cidr": c.v6, "protocol": "icmpv6", "icmp_type": 128}]),
                    publish=False)
    env.cp.set_acls(b.endpoint_id, allow({"cidr": a.v4}, outbound=[{"cidr": a.v4}], out_default="deny"),
                    publish=False)
    env.cp.set_acls(c.endpoint_id, allow({"cidr": b.v4}), publish=False)
    for ep in (a, b, c):
        env.cp.set_endpoint(ep)
    env.start_felix()
    netns.run(env.topo.endpoint_ns[c.endpoint_id], ["ip", "addr", "add", "192.168.10.9/32", "dev", "eth0"])
    with contextlib.ExitStack() as stack:
        for ep in (a, b):
            for port in (8080, 9090):
                stack.enter_context(env.topo.listening(ep.endpoint_id, port))
        env.check([
            (c, a.v4, "ping", True),              # ICMP echo from the /28
            (b, a.v4, "ping", True),
            (b, a.v4, "tcp:8080", True),          # b may reach a's port 8080 ...
            (b, a.v4, "tcp:9090", False),         # ... and no other
            (c, a.v4, "tcp:8080", False),         # c may not (by address)
            (a, b.v4, "ping", True),              # everything from a
            (a, b.v4, "tcp:9090", True),
            (c, b.v4, "ping", False),             # b accepts a only
            (b, c.v4, "ping", False),             # c would accept b, but b may only send to a
            (a, c.v4, "ping", False),             # c accepts b only
            (c, a.v4, "ping-from:192.168.10.9", False),  # spoofed source, though a's ACL covers it
            (c, a.v6, "ping", True),              # IPv6: echo request from c's address
            (a, c.v6, "ping", False),             # c accepts no IPv6 at all
        ])
    assert env.topo.has_route(a, a.v6) and env.topo.has_route(c, c.v6)


def group_members(env: Env, set_name: str) -> set[str]:
    prefix = f"add {set_name} "
    return {line[len(prefix):] for line in env.topo.ipset_save().splitlines() if line.startswith(prefix)}


def group_sets(env: Env) -> set[str]:
    return {line.split()[1] for line in env.topo.ipset_save().splitlines()
            if line.startswith("create felix-") and line.split()[1][7:9] == "g-"}


def test_group_rules_match_one_shared_set_per_group_changed_member_by_member(env):
    a = env.topo.endpoint("a", "192.168.10.1", "fd00:10::1")
    b = env.topo.endpoint("b", "192.168.10.2")
    c = env.topo.endpoint("c", "192.168.10.3")
    web = {"group": "web", "cidr": None}
    for ep in (a, b, c):
        env.cp.set_acls(ep.endpoint_id, allow(web, v6_in=[web]), publish=False)
    env.cp.set_members("web", [a.v4, b.v4, a.v6], publish=False)
    for ep in (a, b, c):
        env.cp.set_endpoint(ep)
    env.start_felix()
    env.check([(a, b.v4, "ping", True), (b, a.v4, "ping", True), (a, c.v4, "ping", True),
               (c, a.v4, "ping", False), (c, b.v4, "ping", False)])  # c is not in web
    # Three endpoints name web: one set per family, holding web's members.
    assert group_sets(env) == {"felix-4g-web", "felix-6g-web"}
    assert group_members(env, "felix-4g-web") == {a.v4, b.v4}
    assert group_members(env, "felix-6g-web") == {a.v6}

    # c joins web: one entry added, no set replaced, no chain touched.
    rules_before = env.topo.iptables_save()
    env.cp.change_members("web", added=[c.v4])
    env.check([(c, a.v4, "ping", True), (c, b.v4, "ping", True)])
    assert group_members(env, "felix-4g-web") == {a.v4, b.v4, c.v4}
    assert "ipsets: 0 created, 1 edited (1 members), 0 replaced" in env.felix.log()
    assert env.topo.iptables_save() == rules_before

    # A change goes missing (b left, then that news was lost): Felix keeps
    # what it has, asks for the whole group, and takes the answer.
    env.cp.change_members("web", removed=[b.v4], skip=1)
    wait_until(lambda: "GETGROUPMEMBERS web" in env.cp.acl_requests, "Felix to ask for web again")
    env.check([(b, a.v4, "ping", False), (a, b.v4, "ping", True), (c, a.v4, "ping", True)])
    assert group_members(env, "felix-4g-web") == {a.v4, c.v4}

    # An endpoint naming a group whose members are not known yet stays
    # closed, even where another of its rules would let traffic in.
    d = env.topo.endpoint("d", "192.168.10.4")
    env.cp.set_acls(d.endpoint_id, allow({"cidr": "192.168.10.0/24"}, {"group": "db", "cidr": None}),
                    publish=False)
    assert env.cp.create(d) == ok("ENDPOINTCREATED")
    env.wait_programmed(d)
    env.check([(a, d.v4, "ping", False)])
    env.cp.set_members("db", [])
    env.check([(a, d.v4, "ping", True)])
    assert group_sets(env) == {"felix-4g-db", "felix-4g-web", "felix-6g-web"}
    # Nobody names db any more: its set goes.
    assert env.cp.destroy(d.endpoint_id) == ok("ENDPOINTDESTROYED")
    wait_until(lambda: group_sets(env) == {"felix-4g-web", "felix-6g-web"}, "db's set to be removed")


def test_no_acls_means_no_traffic_and_bad_rules_open_nothing(env):
    a = env.topo.endpoint("a", "192.168.10.1")
    b = env.topo.endpoint("b", "192.168.10.2")
    e = env.topo.endpoint("e", "192.168.10.5")
    for ep in (a, b):
        env.cp.set_acls(ep.endpoint_id, OPEN, publish=False)
    for ep in (a, b, e):
        env.cp.set_endpoint(ep)
    env.start_felix()
    env.wait_programmed(e)  # its route is there: Felix has programmed it, closed
    env.check([(a, b.v4, "ping", True), (a, e.v4, "ping", False), (e, a.v4, "ping", False)])

    # ACLs arrive, with malformed rules: only the one valid rule is programmed.
    env.cp.set_acls(e.endpoint_id, {"v4": {
        "inbound": [{"cidr": "192.168.10.300"},                 # bad address
                    {"group": "every one", "cidr": None},       # bad group name
                    {"cidr": "::/0"},                           # IPv6 in the v4 list
                    {"cidr": "0.0.0.0/0", "protocol": "tcp", "port": 70000},
                    {"cidr": a.v4, "protocol": "icmp"}],
        "outbound": [], "inbound_default": "deny", "outbound_default": "allow"}})
    env.check([(a, e.v4, "ping", True), (e, a.v4, "ping", True), (b, e.v4, "ping", False)])
    wait_until(lambda: env.felix.count("skipped") >= 4, "the skipped rules to be logged")
    unchanged = f"ACLs for endpoint {e.endpoint_id} unchanged"
    seen = env.felix.count(unchanged)
    env.cp.set_acls(e.endpoint_id, env.cp.acls[e.endpoint_id])  # the same again
    wait_until(lambda: env.felix.count(unchanged) > seen, "Felix to take the repeated ACLUPDATE")
    assert env.felix.count("skipped") == 4  # once each
    assert env.felix.alive


def test_live_endpoint_messages_get_exact_replies(env):
    a = env.topo.endpoint("a", "192.168.10.1")
    b = env.topo.endpoint("b", "192.168.10.2")
    for ep in (a, b):
        env.cp.set_acls(ep.endpoint_id, OPEN, publish=False)
    env.cp.set_endpoint(a)
    env.start_felix()
    env.wait_programmed(a)
    before = env.topo.kernel_state()

    assert env.cp.create(b) == ok("ENDPOINTCREATED")
    env.check([(a, b.v4, "ping", True), (b, a.v4, "ping", True)])
    assert env.cp.create(b) == ok("ENDPOINTCREATED")  # again: an update with nothing new

    # Update: b's address moves (its namespace follows, as a container's would).
    old = b.v4
    b_ns = env.topo.endpoint_ns[b.endpoint_id]
    netns.run(b_ns, ["ip", "addr", "del", f"{old}/32", "dev", "eth0"])
    netns.run(b_ns, ["ip", "addr", "add", "192.168.10.12/32", "dev", "eth0"])
    netns.run(b_ns, ["ip", "route", "replace", "default", "dev", "eth0"])
    b.addrs = ("192.168.10.12",)
    env.cp.set_endpoint(b)
    assert env.cp.request(messages.make(messages.ENDPOINTUPDATED, **b.fields())) == ok("ENDPOINTUPDATED")
    env.check([(a, b.v4, "ping", True)])
    # A pass removes the routes it no longer wants last, after the rules.
    wait_until(lambda: not env.topo.has_route(b, old), f"the route to {old} removed")

    ghost = {"endpoint_id": "ghost", "mac": "02:00:00:00:09:09", "state": "enabled",
             "addrs": [{"addr": "192.168.10.99"}]}
    reply = env.cp.request(messages.make(messages.ENDPOINTUPDATED, **ghost))
    assert (reply["type"], reply["rc"]) == ("ENDPOINTUPDATED", "NOTEXIST") and "ghost" in reply["message"]
    reply = env.cp.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="ghost"))
    assert (reply["type"], reply["rc"]) == ("ENDPOINTDESTROYED", "NOTEXIST") and "ghost" in reply["message"]

    # Destroy: route, neighbour entry, chains and sets go; the host is as before b came.
    assert env.cp.destroy(b.endpoint_id) == ok("ENDPOINTDESTROYED")
    wait_until(lambda: not mentions(env.topo.kernel_state(), b), f"everything of {b.endpoint_id} removed")
    assert env.topo.kernel_state() == before
    env.check([(a, a.v4, "ping", True), (b, a.v4, "ping", False)])


def one_endpoint_programmed(env: Env, *felix_args: str) -> tuple[EndpointNs, dict[str, str]]:
    """Felix running with one endpoint ``a`` (open ACLs) programmed; ``a``
    and the kernel state then."""
    a = env.topo.endpoint("a", "192.168.10.1")
    env.cp.set_acls(a.endpoint_id, OPEN, publish=False)
    env.cp.set_endpoint(a)
    env.start_felix(*felix_args)
    env.wait_programmed(a)
    return a, env.topo.kernel_state()


def test_malformed_requests_get_invalid_and_felix_keeps_serving(env):
    a, before = one_endpoint_programmed(env)
    good = a.fields()
    cases = [
        (b"this is not json", "UNKNOWN", "not JSON"),
        (messages.encode(messages.make(messages.ENDPOINTCREATED, **dict(good, mac="aa:bb:cc:dd:ee"))),
         "ENDPOINTCREATED", "'mac'"),
        (messages.encode(messages.make(messages.ENDPOINTCREATED, **dict(good, addrs=[{"addr": "192.168.1"}]))),
         "ENDPOINTCREATED", "'addrs'"),
        (messages.encode(messages.make(messages.ENDPOINTUPDATED, **dict(good, state="paused"))),
         "ENDPOINTUPDATED", "'state'"),
        (messages.encode(messages.make(messages.ENDPOINTCREATED, **dict(good, endpoint_id="../../etc"))),
         "ENDPOINTCREATED", "'endpoint_id'"),
        (messages.encode({"type": "ENDPOINTEXPLODED", "endpoint_id": a.endpoint_id}), "UNKNOWN",
         "'ENDPOINTEXPLODED'"),
    ]
    for raw, reply_type, field_name in cases:
        reply = env.cp.request(raw)
        assert (reply["type"], reply["rc"]) == (reply_type, "INVALID"), raw
        assert field_name in reply["message"], reply
    assert env.cp.request(messages.make(messages.HEARTBEAT)) == ok("HEARTBEAT")
    assert env.felix.alive and env.felix.count("rejected request") == len(cases)
    assert env.topo.kernel_state() == before  # the endpoint it had is untouched
    b = env.topo.endpoint("b", "192.168.10.2")  # and it still takes good requests
    env.cp.set_acls(b.endpoint_id, OPEN, publish=False)
    assert env.cp.create(b) == ok("ENDPOINTCREATED")
    env.check([(a, b.v4, "ping", True)])


def test_felix_refuses_what_would_let_one_endpoint_pose_as_another(env):
    """The attack of issue 9: an endpoint's update claiming a neighbour's
    address is refused, and its anti-spoofing stays what it was (packets)."""
    a = env.topo.endpoint("a", "192.168.10.1")
    b = env.topo.endpoint("b", "192.168.10.2")
    c = env.topo.endpoint("c", "192.168.10.3")
    for ep in (a, b, c):
        env.cp.set_acls(ep.endpoint_id, OPEN, publish=False)
        env.cp.set_endpoint(ep)
    env.start_felix()
    env.check([(b, a.v4, "ping", True), (b, c.v4, "ping", True)])
    before = env.topo.kernel_state()
    widen = messages.make(messages.ENDPOINTUPDATED, **dict(b.fields(), addrs=[{"addr": b.v4}, {"addr": a.v4}]))
    assert env.cp.request(widen) == {"type": "ENDPOINTUPDATED", "rc": "INVALID",
                                     "message": f"address {a.v4} belongs to endpoint {a.endpoint_id}"}
    outside = messages.make(messages.ENDPOINTCREATED, **dict(b.fields(), endpoint_id="x" + b.endpoint_id,
                                                              addrs=[{"addr": "10.9.9.9"}]))
    assert env.cp.request(outside) == {"type": "ENDPOINTCREATED", "rc": "INVALID",
                                       "message": "address 10.9.9.9 is outside the pool (192.168.0.0/16)"}
    # b takes a's address for itself anyway: it still cannot send as a.
    netns.run(env.topo.endpoint_ns[b.endpoint_id], ["ip", "addr", "add", f"{a.v4}/32", "dev", "eth0"])
    env.check([(b, c.v4, "ping", True), (b, c.v4, f"ping-from:{a.v4}", False)])
    assert env.topo.kernel_state() == before
    assert env.felix.count("refused (INVALID)") == 2


def test_endpoints_cannot_reach_their_host_by_default(env):
    """Felix's own port and any other on the host are out of a container's
    reach; traffic beyond the host is not affected."""
    a = env.topo.endpoint("a", "192.168.10.1")
    env.cp.set_acls(a.endpoint_id, OPEN, publish=False)
    env.cp.set_endpoint(a)
    env.topo.add_uplink()
    env.start_felix()
    env.wait_programmed(a)
    with env.topo.listening(HOST, 7001):
        wait_until(lambda: env.topo.tcp_ok("uplink", "10.65.9.1", 7001), "the host's port to answer the uplink")
        env.check([(a, "10.65.9.2", "ping", True), (a, "10.65.9.1", "ping", False),
                   (a, "10.65.9.1", "tcp:7001", False)])


def test_interface_created_after_the_endpoint_is_programmed(env):
    a = env.topo.endpoint("a", "192.168.10.1")
    late = env.topo.endpoint("late", "192.168.10.7", plumb=False)
    for ep in (a, late):
        env.cp.set_acls(ep.endpoint_id, OPEN, publish=False)
    env.cp.set_endpoint(a)
    env.start_felix()
    env.wait_synced()
    assert env.cp.create(late) == ok("ENDPOINTCREATED")
    wait_until(lambda: env.felix.count(f"interface {late.interface} does not exist yet"), "Felix to notice")
    env.topo.plumb(late)
    env.check([(a, late.v4, "ping", True), (late, a.v4, "ping", True)])
    wait_until(lambda: env.felix.count(f"interface {late.interface} now present"), "Felix to say so")


@pytest.mark.parametrize("env", BACKENDS, indirect=True)
def test_restart_with_changed_endpoints_converges(env):
    """kill -9, change the plugin's endpoints, start again: the kernel ends
    exactly as a clean start with the new endpoints leaves it."""
    a = env.topo.endpoint("a", "192.168.10.1")
    b = env.topo.endpoint("b", "192.168.10.2")
    c = env.topo.endpoint("c", "192.168.10.3", "fd00:10::3")
    d = env.topo.endpoint("d", "192.168.10.4")
    pristine = env.topo.kernel_state()
    for ep in (a, b, c):
        env.cp.set_acls(ep.endpoint_id, OPEN, publish=False)
        env.cp.set_endpoint(ep)
    env.start_felix()
    env.check([(a, b.v4, "ping", True), (a, c.v4, "ping", True)])
    assert mentions(env.topo.kernel_state(), c)

    env.felix.kill()
    env.cp.drop_endpoint(c.endpoint_id)                                   # gone while Felix was down
    env.cp.set_acls(d.endpoint_id, OPEN, publish=False)
    env.cp.set_endpoint(d)                                                # new while Felix was down
    env.cp.set_acls(b.endpoint_id, allow({"cidr": a.v4}), publish=False)  # b now accepts a only
    env.start_felix()
    env.wait_synced()
    env.check([(a, d.v4, "ping", True), (a, b.v4, "ping", True), (d, b.v4, "ping", False),
               (a, c.v4, "ping", False)])
    restarted = env.topo.kernel_state()
    assert mentions(restarted, c) == [], "leftovers of a vanished endpoint"
    for table in ("iptables", "ip6tables"):
        assert duplicate_rules(restarted[table]) == []

    # The reference: the same host emptied by Felix, then programmed afresh.
    env.felix.kill()
    for ep in (a, b, d):
        env.cp.drop_endpoint(ep.endpoint_id)
    env.start_felix()
    env.wait_synced()
    wait_until(lambda: not any(mentions(env.topo.kernel_state(), ep) for ep in (a, b, d)),
               "Felix to remove every endpoint")
    emptied = env.topo.kernel_state()
    assert (emptied["routes"], emptied["neighbours"], emptied["ipsets"]) == (
        pristine["routes"], pristine["neighbours"], pristine["ipsets"])
    env.felix.kill()
    for ep in (a, b, d):
        env.cp.set_endpoint(ep)
    env.start_felix()
    env.wait_synced()
    env.check([(a, d.v4, "ping", True), (a, b.v4, "ping", True), (d, b.v4, "ping", False)])
    assert env.topo.kernel_state() == restarted


def test_plugin_restart_means_a_resync(env):
    a = env.topo.endpoint("a", "192.168.10.1")
    b = env.topo.endpoint("b", "192.168.10.2")
    d = env.topo.endpoint("d", "192.168.10.4")
    for ep in (a, b, d):
        env.cp.set_acls(ep.endpoint_id, OPEN, publish=False)
    env.cp.set_endpoint(a)
    env.cp.set_endpoint(b)
    env.start_felix()
    env.check([(a, b.v4, "ping", True)])
    first_resync = env.cp.resyncs[-1]["resync_id"]

    env.cp.stop_plugin()
    wait_until(lambda: env.felix.count("plugin connection lost"), "Felix to notice the plugin is gone")
    env.cp.drop_endpoint(b.endpoint_id)  # the plugin comes back knowing other endpoints
    env.cp.set_endpoint(d)
    env.cp.start_plugin()
    resync = wait_until(lambda: [r for r in env.cp.resyncs if r["resync_id"] != first_resync], "a new resync")[0]
    assert resync["hostname"] == "host-1"  # up to the first dot
    env.wait_synced(2)
    env.check([(a, d.v4, "ping", True), (a, b.v4, "ping", False)])
    wait_until(lambda: not env.topo.has_route(b), f"the route to {b.v4} removed")  # last in a pass


@pytest.mark.parametrize("env", BACKENDS, indirect=True)
def test_resync_with_nothing_changed_writes_nothing(env):
    """Periodic resyncs (each makes the dataplane re-read the whole kernel)
    with nothing new: the kernel's listings stay identical, netlink reports
    no change, and the dataplane counts no write."""
    a = env.topo.endpoint("a", "192.168.10.1")
    b = env.topo.endpoint("b", "192.168.10.2", "fd00:10::2")
    for ep in (a, b):
        env.cp.set_acls(ep.endpoint_id, allow({"cidr": "192.168.10.0/24", "protocol": "tcp", "port": [80, 90]},
                                              {"cidr": "192.168.10.0/24", "protocol": "icmp"},
                                              v6_in=[{"cidr": "::/0"}]), publish=False)
        env.cp.set_endpoint(ep)
    env.start_felix("--resync-interval-secs", "1")
    env.check([(a, b.v4, "ping", True)])
    env.wait_synced(2)
    before = env.topo.kernel_state()
    passes = env.felix.count("dataplane pass:")
    monitor = subprocess.Popen(netns.argv(env.topo.host, ["ip", "monitor", "route", "neigh"]),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        completed = env.felix.count(" complete: ")
        env.wait_synced(completed + 2)  # two more periodic resyncs
        wait_until(lambda: env.felix.count("dataplane pass:") >= passes + 2, "their dataplane passes")
    finally:
        monitor.terminate()
        events = monitor.communicate(timeout=10)[0]
    assert env.topo.kernel_state() == before
    # The kernel makes changes of its own (link-local addresses after DAD,
    # neighbours learnt from traffic); Felix's are its routes (proto 80) and
    # its permanent and proxy neighbour entries.
    felix_events = [line for line in events.splitlines()
                    if "proto 80" in line or "PERMANENT" in line or " proxy" in line]
    assert felix_events == [], "netlink changes during resyncs with nothing new:\n" + "\n".join(felix_events)
    new_passes = env.felix.log().split("dataplane pass:")[passes + 1:]
    assert new_passes and all(p.startswith(" 2 endpoints, 0 kernel writes") for p in new_passes), new_passes


def test_acl_manager_lost_keeps_acls_then_catches_up(env):
    a = env.topo.endpoint("a", "192.168.10.1")
    b = env.topo.endpoint("b", "192.168.10.2")
    for ep in (a, b):
        env.cp.set_acls(ep.endpoint_id, OPEN, publish=False)
        env.cp.set_endpoint(ep)
    env.start_felix()
    env.check([(a, b.v4, "ping", True)])

    env.cp.hang_acl_manager()
    wait_until(lambda: env.felix.count("ACL manager: nothing heard"), "Felix to notice the ACL manager is quiet")
    env.check([(a, b.v4, "ping", True), (b, a.v4, "ping", True)])  # carries on with what it knew
    env.cp.set_acls(b.endpoint_id, allow(), publish=False)  # changed while nobody could hear
    asked = len(env.cp.acl_requests)
    env.cp.hang_acl_manager(False)
    # Felix subscribed afresh while it heard nothing; the subscriptions wait
    # in the socket until the manager reads them, and each brings the ACLs.
    wait_until(lambda: {a.endpoint_id, b.endpoint_id} <= set(env.cp.acl_requests[asked:]),
               "the ACL manager to hear Felix's subscriptions again")
    env.check([(b, a.v4, "ping", True), (a, b.v4, "ping", False)])


@pytest.mark.parametrize("env", BACKENDS, indirect=True)
def test_restart_with_nothing_changed_writes_nothing(env):
    """A Felix killed and started again over an unchanged host waits for the
    ACLs before its first pass, which then has nothing to write (so no
    endpoint is failed closed, even for a moment)."""
    a = env.topo.endpoint("a", "192.168.10.1")
    b = env.topo.endpoint("b", "192.168.10.2", "fd00:10::2")
    for ep in (a, b):
        env.cp.set_acls(ep.endpoint_id, allow({"cidr": "192.168.10.0/24", "protocol": "icmp"},
                                              v6_in=[{"cidr": "::/0"}]), publish=False)
        env.cp.set_endpoint(ep)
    env.start_felix()
    env.check([(a, b.v4, "ping", True), (b, a.v4, "ping", True)])
    before = env.topo.kernel_state()
    env.felix.kill()
    env.start_felix()
    env.wait_synced()
    wait_until(lambda: env.felix.count("dataplane pass:"), "the first dataplane pass")
    first_pass = env.felix.log().split("dataplane pass:")[1].splitlines()[0]
    assert first_pass.startswith(" 2 endpoints, 0 kernel writes"), first_pass
    assert env.topo.kernel_state() == before


# --- who may talk to Felix, and what it survives (issue 9) -----------------------------------------

def ask_from_namespace(ns: str, address: str, msg: dict[str, Any], role: str | None, keys, timeout: float = 1.0):
    """One request to ``address`` from a fresh socket inside ``ns`` (its own
    thread and context, as ControlPlane's): the raw reply, or None."""
    result: dict[str, Any] = {}

    def run() -> None:
        with netns.entered(ns):
            ctx = zmq.Context()
            try:
                sock = ctx.socket(zmq.REQ)
                sock.linger = 0
                testkeys.as_client(sock, address, role, FELIX_HOST, keys)
                sock.connect(address)
                sock.send(messages.encode(msg))
                result["reply"] = sock.recv() if sock.poll(int(timeout * 1000)) else None
                sock.close(linger=0)
            finally:
                ctx.destroy(linger=0)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout + 10)
    return result.get("reply")


def test_only_the_plugin_gets_answers_on_9902(env):
    a, before = one_endpoint_programmed(env)
    address = f"tcp://{LOOPBACK}:{messages.PORT_EP_FELIX}"
    destroy = messages.make(messages.ENDPOINTDESTROYED, endpoint_id=a.endpoint_id)
    replies = {label: ask_from_namespace(env.topo.host, address, destroy, role, keys)
               for label, role, keys in testkeys.intruders(security.ROLE_PLUGIN_EP)}
    assert replies == {label: None for label in replies}, replies
    assert set(replies) >= {"role felix", "role felix/h1", "role acl-manager", "another secret", "no CURVE"}
    assert "refused a connection" in env.felix.log()
    # Nothing changed, and the plugin's own key still gets through.
    assert env.topo.kernel_state() == before
    env.check([(a, a.v4, "ping", True)])
    assert env.cp.request(messages.make(messages.HEARTBEAT)) == ok("HEARTBEAT")


def test_a_barrage_on_every_input_leaves_felix_serving(env):
    limit = 262144
    a, before = one_endpoint_programmed(env, "--max-message-bytes", str(limit))
    b = env.topo.endpoint("b", "192.168.10.2")
    env.cp.set_acls(b.endpoint_id, OPEN, publish=False)
    valid = messages.make(messages.ENDPOINTCREATED, **b.fields())
    for raw in fuzzdata.barrage(valid, messages.make(messages.ENDPOINTDESTROYED, endpoint_id="x"), oversize=limit):
        reply = env.cp.request(raw, timeout=3.0 if len(raw) > limit else 10.0)
        if len(raw) > limit:
            assert reply is None, "an oversized message was read"
        else:
            assert reply is not None and reply["rc"] in ("SUCCESS", "INVALID", "NOTEXIST"), (raw[:200], reply)
    # Publications on a's topic: malformed, deep, oversized.
    topic = a.endpoint_id.encode()
    for body in fuzzdata.barrage(messages.make(messages.ACLUPDATE, acls=OPEN), oversize=limit):
        env.cp.publish_raw([topic, body])
    env.cp.publish_raw([topic])
    env.cp.publish_raw([topic, b"{}", b"three"])
    # Still answering, and still programming good changes end to end: b
    # (which some mutations created, then changed) as the plugin says now,
    # and a's ACLs as the ACL manager says now.
    assert env.cp.request(messages.make(messages.HEARTBEAT)) == ok("HEARTBEAT")
    env.cp.destroy(b.endpoint_id)
    assert env.cp.create(b) == ok("ENDPOINTCREATED")
    env.cp.set_acls(a.endpoint_id, allow())  # a now accepts nothing
    env.check([(a, b.v4, "ping", True), (b, a.v4, "ping", False)])
    assert env.felix.alive and "carrying on" not in env.felix.log()
    assert mentions(before, b) == []


def test_insecure_felix_warns_at_start(env):
    env.start_felix("--insecure", "true", "--secret-file", "/nonexistent")  # no secret needed then
    wait_until(lambda: env.felix.count("INSECURE ([security] Insecure = true"), "the warning")
    assert " WARNING " in next(line for line in env.felix.log().splitlines() if "INSECURE" in line)
