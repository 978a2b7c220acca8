"""The real calico-felix process's health and metrics, asked over HTTP as an operator would.

Same set-up as test_felix_process.py (its ``env`` fixture: a throwaway host
namespace, the fake plugin and ACL manager inside it, endpoints on veth
pairs); Felix serves /readiness, /liveness, /status and /metrics on that
namespace's own 127.0.0.1:9099, and the test asks from inside it.  The
moments that matter are made to happen, never waited out on a clock:
readiness before and after the first resync, while the ACL manager is hung
and after; liveness while the event loop is held by the test hook
(CALICO_DEBUG_STALL_FILE) and after; metrics after endpoints of each state.
"""

from __future__ import annotations

import functools

from prometheus_client.parser import text_string_to_metric_families

import polling
from calico import netns
from calico.common.health import get
from test_felix_process import OPEN, WAIT, env  # noqa: F401 - env is the fixture

BASE = "http://127.0.0.1:9099"
HEALTH_ARGS = ("--prometheus-metrics-enabled", "true")
wait_until = functools.partial(polling.wait_until, timeout=WAIT, interval=0.1)


def ask(env, path):
    """(status, text) from Felix's health server in the host namespace; None while nothing answers."""
    with netns.entered(env.topo.host):
        try:
            return get(BASE + path, timeout=5.0)
        except OSError:
            return None


def answer_is(env, path, code, start=""):
    reply = ask(env, path)
    return reply is not None and reply[0] == code and reply[1].startswith(start) and reply


def metric(env, name, **labels):
    reply = ask(env, "/metrics")
    if reply is None:
        return None  # not answering yet (starting)
    assert reply[0] == 200, reply
    for family in text_string_to_metric_families(reply[1]):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def test_readiness_flips_with_the_first_resync_and_the_acl_manager(env):
    env.cp.stop_plugin()  # the plugin is not there yet: no resync can complete
    a = env.topo.endpoint("a", "192.168.10.1")
    env.cp.set_acls(a.endpoint_id, OPEN, publish=False)
    env.cp.set_endpoint(a)
    env.start_felix(*HEALTH_ARGS)
    code, text = wait_until(lambda: answer_is(env, "/readiness", 503, "first resync with the plugin"),
                            "503: first resync not complete")
    assert text.startswith("first resync with the plugin (tcp://127.0.0.1:9901) not complete")
    assert ask(env, "/liveness") == (200, "live\n")
    env.cp.start_plugin()
    wait_until(lambda: answer_is(env, "/readiness", 200), "200 once resynced and programmed",
               on_timeout=lambda: str(ask(env, "/readiness")))
    assert env.topo.has_route(a)  # ready means programmed

    env.cp.hang_acl_manager()
    wait_until(lambda: answer_is(env, "/readiness", 503, "not hearing the ACL manager"),
               "503 while the ACL manager is silent")
    assert ask(env, "/liveness") == (200, "live\n")  # not Felix's fault: still live
    env.cp.hang_acl_manager(False)
    wait_until(lambda: answer_is(env, "/readiness", 200), "200 once it is heard again")


def test_liveness_fails_while_the_event_loop_is_stuck(env, tmp_path, monkeypatch):
    stall = tmp_path / "stall"
    monkeypatch.setenv("CALICO_DEBUG_STALL_FILE", str(stall))
    env.start_felix(*HEALTH_ARGS, "--health-timeout-secs", "2")
    wait_until(lambda: answer_is(env, "/readiness", 200), "ready")
    stall.write_text("")
    code, text = wait_until(lambda: answer_is(env, "/liveness", 503), "503 while the loop is held")
    assert text.startswith("event loop stalled: no iteration for ")
    assert answer_is(env, "/readiness", 503, "event loop stalled")
    stall.unlink()
    wait_until(lambda: answer_is(env, "/liveness", 200), "live again")
    wait_until(lambda: answer_is(env, "/readiness", 200), "ready again")
    assert env.felix.alive


def test_metrics_and_status_after_known_endpoints(env):
    programmed = env.topo.endpoint("p", "192.168.10.1")
    waiting = env.topo.endpoint("w", "192.168.10.2")  # no ACLs anywhere: stays fail-closed, waiting
    missing = env.topo.endpoint("m", "192.168.10.3", plumb=False)  # its interface does not exist
    env.cp.set_acls(programmed.endpoint_id, OPEN, publish=False)
    env.cp.set_acls(missing.endpoint_id, OPEN, publish=False)
    for ep in (programmed, waiting, missing):
        env.cp.set_endpoint(ep)
    env.start_felix(*HEALTH_ARGS)
    wait_until(lambda: metric(env, "felix_active_local_endpoints") == 3, "3 endpoints",
               on_timeout=lambda: str(ask(env, "/metrics")))
    wait_until(lambda: metric(env, "felix_local_endpoints", state="programmed") == 1, "1 programmed")
    assert metric(env, "felix_local_endpoints", state="waiting-for-acls") == 1
    assert metric(env, "felix_local_endpoints", state="interface-missing") == 1
    assert metric(env, "felix_local_endpoints", state="fail-closed") == 0
    assert metric(env, "felix_resyncs_started_total") == 1
    assert metric(env, "felix_int_dataplane_apply_time_seconds_count") >= 1
    assert metric(env, "felix_kernel_writes_total", kind="iptables_commits") >= 1
    assert metric(env, "felix_kernel_writes_total", kind="route_requests") >= 1
    assert metric(env, "felix_iptables_save_calls_total") >= 2  # both families read at the first pass
    assert metric(env, "felix_iptables_restore_errors_total") == 0
    assert metric(env, "felix_int_dataplane_failures_total") == 0

    # The interface appears: the endpoint moves from interface-missing to programmed.
    env.topo.plumb(missing)
    wait_until(lambda: metric(env, "felix_local_endpoints", state="programmed") == 2, "2 programmed")
    assert metric(env, "felix_local_endpoints", state="interface-missing") == 0
    # Its ACLs arrive: the last one is programmed too.
    env.cp.set_acls(waiting.endpoint_id, OPEN)
    wait_until(lambda: metric(env, "felix_local_endpoints", state="programmed") == 3, "3 programmed")
    assert metric(env, "felix_acl_publications_total", type="ACLUPDATE") >= 3

    import json
    code, text = ask(env, "/status")
    status = json.loads(text)
    assert code == 200 and status["host"] == "host-1" and status["ready"]
    assert status["endpoints"]["programmed"] == 3 and status["endpoint_count"] == 3
    assert status["last_pass"]["ok"] and status["plugin"]["connected"] and status["acl_manager"]["hearing"]
