"""The cluster secret, key derivation, ZAP admission by role, and the loop's guard.

The keys are checked against the derivation written out independently here
(HMAC-SHA256 from the standard library, curve25519 from libzmq/libsodium),
and admission with real CURVE handshakes over loopback TCP inside this
process: a Transport served by an EventLoop on one side, plain pyzmq
sockets on the other.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat

import pytest
import zmq
from zmq.utils import z85

from calico.common import security
from calico.common.config import ConfigError, load_config
from calico.common.logs import RateLimitedLog
from calico.common.security import ClusterKeys, SecurityError, Transport, load_credentials, read_secret, write_secret
from calico.common.zmqloop import EventLoop

SECRET = bytes(range(32))


def test_every_role_key_is_hmac_of_the_secret_and_its_curve_public_key():
    keys = ClusterKeys(SECRET)
    for role in ("plugin-ep", "plugin-network", "acl-manager", "felix", "felix/host-1", "felix/h2"):
        want_secret = hmac.new(SECRET, b"calico-curve-v1/" + role.encode(), hashlib.sha256).digest()
        pair = keys.pair(role)
        assert z85.decode(pair.secret) == want_secret
        assert pair.public == zmq.curve_public(z85.encode(want_secret))
    # Distinct per role and per secret; the secret half never printed.
    assert keys.pair("felix/h1").public != keys.pair("felix/h2").public
    assert ClusterKeys(bytes(32)).pair("felix").public != keys.pair("felix").public
    assert keys.pair("felix").secret.decode() not in repr(keys.pair("felix")) + repr(keys)


@pytest.mark.parametrize("content", [SECRET.hex() + "\n", SECRET.hex()])
def test_a_secret_is_64_lower_case_hex_digits_on_one_line(tmp_path, content):
    path = tmp_path / "cluster.secret"
    path.write_text(content)
    assert read_secret(str(path)) == SECRET


@pytest.mark.parametrize("content", [
    "", "\n", SECRET.hex().upper() + "\n", SECRET.hex()[:-1] + "\n", SECRET.hex() + "0\n", SECRET.hex() + "\n\n",
    " " + SECRET.hex(), SECRET.hex() + " \n", SECRET.hex()[:-1] + "g\n", SECRET.hex()[:-1] + "²\n",
    SECRET.hex() + "\nextra\n",
])
def test_anything_else_is_refused(tmp_path, content):
    path = tmp_path / "cluster.secret"
    path.write_text(content)
    with pytest.raises(SecurityError, match="not 64 lower-case hex digits on one line"):
        read_secret(str(path))


def test_missing_secret_is_one_line_saying_what_to_do(tmp_path):
    path = str(tmp_path / "absent")
    with pytest.raises(SecurityError) as caught:
        load_credentials(path, False, "[security] Insecure = true")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"cluster secret {path}: no such file; ")
    assert "make_secret.sh" in text and "[security] Insecure = true" in text


def test_insecure_mode_has_no_keys_and_a_warning_and_ignores_the_file(tmp_path):
    credentials = load_credentials(str(tmp_path / "absent"), True, "--insecure")
    assert credentials.keys is None
    assert len(credentials.warnings) == 1 and credentials.warnings[0].startswith("INSECURE (--insecure)")


def test_write_secret_makes_a_private_file_once(tmp_path):
    path = str(tmp_path / "cluster.secret")
    assert write_secret(path)
    first = open(path).read()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) == 65 and first.endswith("\n") and int(first, 16) >= 0
    assert not write_secret(path) and open(path).read() == first
    assert load_credentials(path, False, "x").warnings == []


def test_a_secret_others_may_read_is_warned_about(tmp_path):
    path = str(tmp_path / "cluster.secret")
    write_secret(path)
    os.chmod(path, 0o644)
    warnings = load_credentials(path, False, "x").warnings
    assert len(warnings) == 1 and "mode 0644" in warnings[0] and "chmod 600" in warnings[0]


@pytest.mark.parametrize("text, value", [("true", True), ("Yes", True), ("1", True), (" on ", True),
                                         ("false", False), ("NO", False), ("0", False), ("off", False)])
def test_flags(text, value):
    assert security.parse_flag(text) is value


@pytest.mark.parametrize("text", ["", "2", "truee", "true\n1", "１"])
def test_bad_flags(text):
    with pytest.raises(ValueError):
        security.parse_flag(text)


def test_rate_limited_log_lets_a_burst_through_then_counts(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), burst=3, period=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        results = [limited("refused %s", n) for n in range(10)]
        now[0] = 61.0
        limited("refused %s", "later")
    assert results == [True] * 3 + [False] * 7
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1", "refused 2", "refused later (7 similar lines suppressed before this one)"]


# --- admission, with real handshakes -------------------------------------------------------------

class Server:
    """A Transport serving a REP socket as ``role`` in ``domain`` (loop pumped by the test)."""

    def __init__(self, keys: ClusterKeys | None, role: str, domain: str, admit=None):
        self.context = zmq.Context()
        self.loop = EventLoop()
        self.transport = Transport(self.context, self.loop, keys)
        self.rep = self.transport.listen(zmq.REP, "tcp://127.0.0.1:*", role, domain, admit)
        self.address = self.rep.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: list[tuple[bytes, str | None]] = []
        self.loop.add_socket(self.rep, self._serve)

    def _serve(self) -> None:
        frame = self.rep.recv(copy=False)
        self.received.append((frame.bytes, security.peer_role(frame)))
        self.rep.send(b"answer")

    def close(self) -> None:
        self.loop.remove_socket(self.rep)
        self.rep.close(linger=0)
        self.transport.close()
        self.context.term()


@pytest.fixture
def server():
    made = []

    def make(*args, **kwargs) -> Server:
        made.append(Server(*args, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


def ask(server: Server, client_keys: ClusterKeys | None, as_role: str, server_role: str,
        server_keys: ClusterKeys | None = None, rounds: int = 40) -> bytes | None:
    """One request from a client with these keys; the answer, or None."""
    sock = server.context.socket(zmq.REQ)
    sock.linger = 0
    try:
        if client_keys is not None:
            security.curve_client(sock, client_keys, as_role, server_role)
            if server_keys is not None:
                sock.curve_serverkey = server_keys.pair(server_role).public
        sock.connect(server.address)
        sock.send(b"question")
        for _ in range(rounds):
            server.loop.run_once(max_wait=0.05)
            if sock.poll(0):
                return sock.recv()
        return None
    finally:
        sock.close(linger=0)


def test_only_the_admitted_role_gets_an_answer_and_its_role_is_the_user_id(server, caplog):
    keys = ClusterKeys(SECRET)
    srv = server(keys, "acl-manager", security.DOMAIN_ACL_REQ)  # admits "felix"
    assert ask(srv, keys, "felix", "acl-manager") == b"answer"
    assert srv.received == [(b"question", "felix")]
    with caplog.at_level(logging.WARNING, logger="calico.common.security"):
        assert ask(srv, keys, "felix/h1", "acl-manager") is None                      # wrong role
        assert ask(srv, ClusterKeys(bytes(32)), "felix", "acl-manager", keys) is None  # another secret
        assert ask(srv, None, "", "") is None                                         # no CURVE
    assert len(srv.received) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert any("refused a connection from 127.0.0.1 on acl-manager-9905: the key of role 'felix/h1'" in line
               for line in lines), lines
    assert any("from 127.0.0.1 on acl-manager-9905: an unknown key (another secret" in line for line in lines), lines
    assert any("at the handshake: the peer does not use CURVE" in line for line in lines), lines


def test_a_client_checks_the_server_key_too(server):
    keys = ClusterKeys(SECRET)
    srv = server(keys, "felix/h2", security.DOMAIN_FELIX_ENDPOINTS)
    assert ask(srv, keys, "plugin-ep", "felix/h2") == b"answer"
    assert ask(srv, keys, "plugin-ep", "felix/h1") is None  # not the host we meant to reach


def test_admission_follows_a_changing_list(server):
    keys = ClusterKeys(SECRET)
    hosts = ["h1"]
    srv = server(keys, "plugin-ep", security.DOMAIN_EP_RESYNC, admit=lambda: [f"felix/{h}" for h in hosts])
    assert ask(srv, keys, "felix/h2", "plugin-ep") is None
    hosts.append("h2")
    assert ask(srv, keys, "felix/h2", "plugin-ep") == b"answer"
    assert srv.received[-1][1] == "felix/h2"


def test_insecure_transport_is_plain(server):
    srv = server(None, "plugin-ep", security.DOMAIN_EP_RESYNC)
    assert ask(srv, None, "", "") == b"answer"
    assert srv.received == [(b"question", None)]


def test_oversized_messages_are_dropped_by_the_socket(server):
    srv = server(None, "plugin-ep", security.DOMAIN_EP_RESYNC)
    srv.rep.close(linger=0)
    srv.loop.remove_socket(srv.rep)
    srv.transport.max_message_bytes = 1000
    srv.rep = srv.transport.listen(zmq.REP, "tcp://127.0.0.1:*", "plugin-ep", security.DOMAIN_EP_RESYNC)
    srv.address = srv.rep.getsockopt_string(zmq.LAST_ENDPOINT)
    srv.loop.add_socket(srv.rep, srv._serve)
    sock = srv.context.socket(zmq.REQ)
    sock.linger = 0
    sock.connect(srv.address)
    sock.send(b"x" * 1001)
    for _ in range(20):
        srv.loop.run_once(max_wait=0.05)
    assert srv.received == []
    sock.close(linger=0)
    assert ask(srv, None, "", "") == b"answer"


# --- the loop's guard -------------------------------------------------------------------------------

def test_a_failing_handler_is_logged_and_its_rep_socket_still_answers(caplog):
    context = zmq.Context()
    loop = EventLoop()
    rep = context.socket(zmq.REP)
    rep.bind("inproc://guard")
    req = context.socket(zmq.REQ)
    req.connect("inproc://guard")
    calls = []

    def handler():
        calls.append(rep.recv())
        if len(calls) == 1:
            raise RecursionError("maximum recursion depth exceeded")
        rep.send(b"fine")

    def failing_timer(now):
        raise KeyError("x")

    loop.add_socket(rep, handler)
    loop.add_timer(failing_timer)
    try:
        with caplog.at_level(logging.ERROR):
            req.send(b"first")
            loop.run_once(max_wait=0.5)
            assert req.poll(1000)
            assert b'"rc":"INVALID"' in req.recv()
            req.send(b"second")
            loop.run_once(max_wait=0.5)
            assert req.poll(1000) and req.recv() == b"fine"
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("the handler of a REP socket failed (RecursionError:" in line for line in lines), lines
        assert any("a timer failed (KeyError:" in line for line in lines), lines
    finally:
        req.close(linger=0)
        rep.close(linger=0)
        context.term()


# --- the settings ---------------------------------------------------------------------------------------

def write_cfg(tmp_path, text):
    path = tmp_path / "x.cfg"
    path.write_text(text)
    return str(path)


def test_security_settings_default_to_secure_and_the_images_path(tmp_path):
    config = load_config(write_cfg(tmp_path, "[global]\n"), env={})
    assert (config.cluster_secret_file, config.insecure, config.max_message_bytes) == (
        "/etc/calico/cluster.secret", False, 16 * 1024 * 1024)


@pytest.mark.parametrize("text, env, want", [
    ("[security]\nClusterSecretFile = /a\nInsecure = yes\n", {}, ("/a", True)),
    ("[security]\nClusterSecretFile = /a\nInsecure = false\n", {"CALICO_SECRET_FILE": "/b", "CALICO_INSECURE": "1"},
     ("/a", False)),                       # the file's value wins ...
    ("[security]\nClusterSecretFile =\nInsecure =\n", {"CALICO_SECRET_FILE": "/b", "CALICO_INSECURE": "1"},
     ("/b", True)),                        # ... an empty one leaves it to the environment
    ("", {"CALICO_SECRET_FILE": "/b"}, ("/b", False)),
])
def test_security_settings_from_file_then_environment(tmp_path, text, env, want):
    config = load_config(write_cfg(tmp_path, text), env=env)
    assert (config.cluster_secret_file, config.insecure) == want


@pytest.mark.parametrize("text, env, named", [
    ("[security]\nInsecure = perhaps\n", {}, "[security] Insecure = 'perhaps'"),
    ("", {"CALICO_INSECURE": "2"}, "environment CALICO_INSECURE = '2'"),
    ("[connection]\nMaxMessageBytes = 1000\n", {}, "below the minimum of 65536"),
    ("[connection]\nMaxMessageBytes = ١٠٠٠٠٠٠\n", {}, "[connection] MaxMessageBytes"),
    ("[security]\nSecret = x\n", {}, "[security] Secret: unknown key"),
])
def test_bad_security_settings_are_one_line(tmp_path, text, env, named):
    with pytest.raises(ConfigError) as caught:
        load_config(write_cfg(tmp_path, text), env=env)
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_every_socket_gets_the_message_size_limit():
    context = zmq.Context()
    loop = EventLoop()
    transport = Transport(context, loop, ClusterKeys(SECRET), max_message_bytes=70000)
    sockets = [transport.listen(zmq.REP, "tcp://127.0.0.1:*", "plugin-ep", security.DOMAIN_EP_RESYNC),
               transport.connect(zmq.SUB, "tcp://127.0.0.1:1", "felix", "acl-manager"),
               transport.dialer(zmq.REQ, "tcp://127.0.0.1:1", "felix", "acl-manager").open()]
    try:
        assert [s.getsockopt(zmq.MAXMSGSIZE) for s in sockets] == [70000] * 3
        assert sockets[0].getsockopt(zmq.CURVE_SERVER) == 1 and sockets[1].getsockopt(zmq.CURVE_SERVER) == 0
        assert sockets[0].getsockopt(zmq.ZAP_ENFORCE_DOMAIN) == 1
    finally:
        for sock in sockets:
            sock.close(linger=0)
        transport.close()
        context.term()
