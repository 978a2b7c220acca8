"""The health server: what /liveness, /readiness, /status and /metrics say,
and that no HTTP client, however bad, can crash it, stall it or change anything.

A real ``HealthServer`` on 127.0.0.1 (port 0: the kernel picks one) over a
``Health`` driven by a fake clock and a fake loop; clients are plain sockets
or urllib.  Nothing waits on time except through polling.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest

import polling
from calico.common import health as health_module
from calico.common.health import Health, HealthServer, component_of, get
from calico.common.metrics import exposition, new_registry

WAIT = 30.0


class FakeLoop:
    def __init__(self, clock):
        self.last_iteration = clock()


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def served(clock):
    """(health, loop, server, registry) with metrics on."""
    health = Health("test", timeout_secs=10, clock=clock)
    loop = FakeLoop(clock)
    health.watch(loop)
    registry = new_registry()
    from prometheus_client import Counter

    Counter("test_things", "Things.", registry=registry).inc(3)
    server = HealthServer(health, "127.0.0.1", 0, exposition(registry)).start()
    assert server.serving.wait(WAIT)
    yield health, loop, server
    server.close()


def url(server, path):
    return f"http://127.0.0.1:{server.port}{path}"


def raw_request(server, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


# --- what it says -----------------------------------------------------------------

def test_readiness_follows_what_the_component_publishes(served):
    health, loop, server = served
    assert get(url(server, "/readiness")) == (503, "starting\n")
    health.set_not_ready("first resync with the plugin not complete")
    assert get(url(server, "/readiness")) == (503, "first resync with the plugin not complete\n")
    health.set_ready()
    assert get(url(server, "/readiness")) == (200, "ready\n")


def test_liveness_fails_when_the_loop_stops_turning_and_comes_back(served, clock):
    health, loop, server = served
    health.set_ready()
    assert get(url(server, "/liveness")) == (200, "live\n")
    clock.now += 10  # exactly the timeout: still live
    assert get(url(server, "/liveness"))[0] == 200
    clock.now += 1.5
    code, text = get(url(server, "/liveness"))
    assert code == 503 and text.startswith("event loop stalled: no iteration for 12 s")
    # A stalled loop's readiness is stale: not ready either, for the same reason.
    assert get(url(server, "/readiness")) == (code, text)
    loop.last_iteration = clock.now
    assert get(url(server, "/liveness")) == (200, "live\n")
    assert get(url(server, "/readiness")) == (200, "ready\n")


def test_liveness_fails_when_work_has_waited_too_long(served, clock):
    health, loop, server = served
    health.set_stall(clock.now, "dataplane passes failing (last: OSError: no)")
    clock.now += 11
    loop.last_iteration = clock.now  # the loop turns; the work does not get done
    code, text = get(url(server, "/liveness"))
    assert (code, text) == (503, "dataplane passes failing (last: OSError: no) for 11 s (HealthTimeoutSecs 10)\n")
    health.set_stall(None)
    assert get(url(server, "/liveness"))[0] == 200


def test_status_is_the_published_view_with_both_verdicts(served):
    health, loop, server = served
    health.publish({"endpoints": {"programmed": 2}, "host": "host-1"})
    code, text = get(url(server, "/status"))
    status = json.loads(text)
    assert code == 200
    assert status["component"] == "test" and status["host"] == "host-1"
    assert status["endpoints"] == {"programmed": 2}
    assert (status["live"], status["ready"], status["readiness"]) == (True, False, "starting")


def test_metrics_are_the_components_own_registry(served):
    health, loop, server = served
    code, text = get(url(server, "/metrics"))
    assert code == 200
    assert "test_things_total 3.0" in text
    assert "_created" not in text


def test_metrics_off_is_404_and_says_which_setting(clock):
    server = HealthServer(Health("test", clock=clock), "127.0.0.1", 0).start()
    try:
        assert server.serving.wait(WAIT)
        assert get(url(server, "/metrics")) == (404, "metrics are off (PrometheusMetricsEnabled)\n")
    finally:
        server.close()


def test_registries_are_per_component():
    from prometheus_client import Counter

    first, second = new_registry(), new_registry()
    Counter("same_name", "x", registry=first).inc()
    Counter("same_name", "x", registry=second)  # no clash: not the global registry
    assert b"same_name_total 1.0" in exposition(first)()
    assert b"same_name_total 0.0" in exposition(second)()


# --- nothing a client sends changes anything or stops the server --------------------

def test_only_get_and_head(served):
    health, loop, server = served
    health.set_ready()
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        reply = raw_request(server, f"{method} /readiness HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello".encode())
        assert reply.startswith(b"HTTP/1.0 405 "), (method, reply[:60])
        assert b"Allow: GET, HEAD" in reply
    head = raw_request(server, b"HEAD /readiness HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and head.endswith(b"\r\n\r\n")  # headers only
    assert get(url(server, "/readiness")) == (200, "ready\n")


def test_unknown_paths_and_queries(served):
    health, loop, server = served
    assert get(url(server, "/"))[0] == 404
    assert get(url(server, "/../etc/passwd"))[0] == 404
    assert get(url(server, "/liveness?verbose=1")) == (200, "live\n")


@pytest.mark.parametrize("garbage", [
    b"\x00\xff\xfe garbage\r\n\r\n",
    b"GET /readiness HTTP/1.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.0\r\n\r\n",
    b"GET /readiness HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
    b"GET /readiness HTTP/9.9\r\n\r\n",
    b"\r\n\r\n",
])
def test_garbage_gets_at_most_an_answer_and_the_server_carries_on(served, garbage):
    health, loop, server = served
    try:
        reply = raw_request(server, garbage)
    except (ConnectionResetError, BrokenPipeError):
        reply = b""  # cut off after MAX_REQUEST_BYTES: also fine
    assert len(reply) < 4096
    assert get(url(server, "/liveness")) == (200, "live\n")


def test_silent_clients_neither_stall_the_server_nor_hold_it_for_ever(served):
    """More idle connections than MAX_CLIENTS: the extra ones are closed at
    once, the others time out; then the server answers again."""
    health, loop, server = served
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
            for _ in range(health_module.MAX_CLIENTS + 4)]
    try:
        # Each idle connection ends: closed at once (no slot) or after the request timeout.
        for sock in idle:
            assert sock.recv(100) == b""

        def answered():
            try:
                return get(url(server, "/liveness"), timeout=5.0) == (200, "live\n")
            except OSError:
                return False
        polling.wait_until(answered, "the server to answer after the idle clients", WAIT, 0.1)
    finally:
        for sock in idle:
            sock.close()


def test_many_clients_at_once(served):
    health, loop, server = served
    health.set_ready()
    results = []

    def client():
        try:
            results.append(get(url(server, "/readiness"), timeout=WAIT))
        except OSError as exc:  # a connection closed for want of a slot
            results.append(("refused", str(exc)))
    threads = [threading.Thread(target=client) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(results) == 40
    assert all(r == (200, "ready\n") or r[0] == "refused" for r in results), results
    assert (200, "ready\n") in results


def test_a_port_in_use_is_retried_until_free(clock, monkeypatch):
    monkeypatch.setattr(health_module, "BIND_RETRY_SECS", 0.1)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    server = HealthServer(Health("test", clock=clock), "127.0.0.1", port).start()
    try:
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{port}/liveness", timeout=1.0)  # the holder never answers
        holder.close()
        assert server.serving.wait(WAIT)
        assert get(f"http://127.0.0.1:{port}/liveness") == (200, "live\n")
    finally:
        holder.close()
        server.close()


def test_ipv6_loopback(clock):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = HealthServer(Health("test", clock=clock), "::1", 0).start()
    try:
        if not server.serving.wait(5):
            pytest.skip("no IPv6 loopback here")
        assert get(f"http://[::1]:{server.port}/liveness") == (200, "live\n")
    finally:
        server.close()


# --- calico-health ------------------------------------------------------------------

@pytest.mark.parametrize("argv, found", [
    (["/usr/bin/python3", "/usr/local/bin/calico-felix", "--config-file=/etc/calico/felix.cfg"],
     ("felix", ["--config-file=/etc/calico/felix.cfg"])),
    (["/usr/bin/python3", "/usr/local/bin/calico-acl-manager", "--config-file=/etc/calico/acl_manager.cfg"],
     ("acl-manager", ["--config-file=/etc/calico/acl_manager.cfg"])),
    (["python", "/opt/scripts/plugin.py", "network"], ("plugin-network", ["network"])),
    (["python", "/opt/scripts/plugin.py", "ep"], ("plugin-ep", ["ep"])),
    (["/usr/bin/python3", "-m", "calico.plugin.main", "ep", "--bind", "1.2.3.4"],
     ("plugin-ep", ["ep", "--bind", "1.2.3.4"])),
    (["bird", "-f", "-c", "/etc/bird/bird1.conf", "-s", "/run/bird/bird.ctl"],
     ("bird", ["-f", "-c", "/etc/bird/bird1.conf", "-s", "/run/bird/bird.ctl"])),
    (["bash"], None),
    ([], None),
])
def test_calico_health_knows_the_component_from_its_command_line(argv, found):
    assert component_of(argv) == found


def test_calico_health_reads_the_components_own_settings(tmp_path, monkeypatch):
    cfg = tmp_path / "felix.cfg"
    cfg.write_text("[health]\nHealthHost = 0.0.0.0\nHealthPort = 9199\n")
    monkeypatch.delenv("CALICO_HEALTH_PORT", raising=False)
    assert health_module.health_url("felix", [f"--config-file={cfg}"]) == "http://127.0.0.1:9199"
    assert health_module.health_url("felix", [f"--config-file={cfg}", "--health-port", "9200"]) == \
        "http://127.0.0.1:9200"
    assert health_module.health_url("plugin-network", ["network"]) == "http://127.0.0.1:9098"
    assert health_module.health_url("plugin-ep", ["ep", "--health-host", "::1"]) == "http://[::1]:9097"
    acl_cfg = tmp_path / "acl_manager.cfg"
    acl_cfg.write_text("[global]\nPluginAddress = 10.0.0.1\n")
    assert health_module.health_url("acl-manager", ["--config-file", str(acl_cfg)]) == "http://127.0.0.1:9096"
    monkeypatch.setenv("CALICO_HEALTH_PORT", "9300")  # as docker run -e, when the file leaves it out
    assert health_module.health_url("acl-manager", ["--config-file", str(acl_cfg)]) == "http://127.0.0.1:9300"
    cfg.write_text("[health]\nHealthEnabled = false\n")
    assert health_module.health_url("felix", [f"--config-file={cfg}"]) is None


def test_calico_health_exit_status(served, capsys):
    health, loop, server = served
    assert health_module.main([f"http://127.0.0.1:{server.port}"]) == 1
    assert capsys.readouterr().out == "503 starting\n"
    health.set_ready()
    assert health_module.main([f"http://127.0.0.1:{server.port}"]) == 0
    assert health_module.main(["--liveness", f"http://127.0.0.1:{server.port}/"]) == 0
    assert capsys.readouterr().out == "200 ready\n200 live\n"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert health_module.main([f"http://127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().out.startswith("not answering: ")
