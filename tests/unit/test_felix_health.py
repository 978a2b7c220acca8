"""Felix's readiness, liveness and metrics, with the agent's unit harness
(fake dataplane, inproc peers, fake clock: tests/unit/test_felix_agent.py).

Ready means: the first resync is complete, the first dataplane pass has
applied, and the ACL manager is heard.  Live means: the loop turns and
dataplane passes do not keep failing for HealthTimeoutSecs.  The metrics are
checked by value after known actions.
"""

from __future__ import annotations

import functools

import pytest

import test_felix_agent as harness_module
from calico.common import messages
from calico.common.health import Health
from calico.felix.agent import Agent
from calico.felix.kernel_writes import WriteCounter
from calico.felix.metrics import PrometheusFelixMetrics
from test_felix_agent import ALLOW_10, Harness, endpoint, synced

HEALTH_TIMEOUT = 30


class CountingDataplane(harness_module.FakeDataplane):
    """The fake dataplane with a WriteCounter and ``failed`` like the real one."""

    def __init__(self):
        super().__init__()
        self.writes = WriteCounter()
        self.failed = {}

    def apply(self, desired, groups):
        missing = super().apply(desired, groups)
        self.writes.route_requests += len(desired)
        self.writes.iptables_commits += 1
        return missing


@pytest.fixture
def h(monkeypatch):
    clock = harness_module.FakeClock()
    health = Health("felix", HEALTH_TIMEOUT, clock=clock)
    metrics = PrometheusFelixMetrics()
    monkeypatch.setattr(harness_module, "Agent", functools.partial(Agent, health=health, metrics=metrics))
    monkeypatch.setattr(harness_module, "FakeClock", lambda: clock)
    monkeypatch.setattr(harness_module, "FakeDataplane", CountingDataplane)
    harness = Harness()
    harness.health, harness.metrics = health, metrics
    harness.agent.start()
    try:
        yield harness
    finally:
        harness.close()


def sample(h, name, **labels):
    value = h.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def ready(h):
    h.agent.publish_health()
    return h.health.readiness()


def test_not_ready_until_resync_and_pass(h):
    ok, reason = ready(h)
    assert not ok and reason.startswith("first resync with the plugin (inproc://plugin-") and \
        "not hearing the ACL manager" in reason
    resync_id = h.expect_resync()["resync_id"]
    h.answer_resync(1)
    assert ready(h)[1].startswith("first resync with the plugin") and ": 0 of 1 endpoint(s) so far" in ready(h)[1]
    h.know_acls("ep1", ALLOW_10)  # the subscription is answered: that is hearing the ACL manager too
    assert h.request(dict(endpoint(), resync_id=resync_id))["rc"] == messages.RC_SUCCESS
    h.pump_until(lambda: h.passes, "the first pass")
    assert ready(h) == (True, "ready")


def test_not_ready_until_the_acl_manager_is_heard(h):
    h.resync()  # nothing to program: the first pass runs at once
    h.pump_until(lambda: h.passes, "the first pass")
    ok, reason = ready(h)
    assert not ok and reason.startswith("not hearing the ACL manager (nothing on inproc://acl-pub-")
    h.heartbeat()
    assert ready(h) == (True, "ready")


def test_first_pass_waiting_is_not_ready(h):
    h.heartbeat()
    h.resync(endpoint())  # no ACLs known: the first pass waits for them, up to the timeout
    ok, reason = ready(h)
    assert (ok, reason) == (False, "first dataplane pass not applied yet")
    h.advance(7)
    h.heartbeat()
    assert h.passes == 1
    assert ready(h) == (True, "ready")


def test_ready_goes_when_the_acl_manager_goes_quiet(h):
    synced(h)
    h.heartbeat()
    h.step()
    assert ready(h) == (True, "ready")
    h.advance(7)  # more than ConnectionTimeoutMillis without a publication
    ok, reason = ready(h)
    assert not ok and reason.startswith("not hearing the ACL manager (nothing on inproc://acl-pub-")
    h.heartbeat()
    assert ready(h) == (True, "ready")


def test_liveness_fails_when_the_loop_stops_and_when_passes_keep_failing(h):
    synced(h)
    h.heartbeat()
    h.step()
    assert h.health.liveness() == (True, "live")
    h.clock.now += HEALTH_TIMEOUT + 1  # nothing runs the loop
    ok, reason = h.health.liveness()
    assert not ok and reason.startswith("event loop stalled")
    h.step()
    assert h.health.liveness() == (True, "live")

    h.dataplane.failures_left = 1000
    h.know_acls("ep2", ALLOW_10)
    h.request(endpoint(endpoint_id="ep2", addr="192.168.1.2"))
    h.step()
    for _ in range(8):  # back-off doubles up to 30 s: the loop turns, the pass keeps failing
        h.advance(8)
        h.heartbeat()
    ok, reason = h.health.liveness()
    assert not ok and reason.startswith("dataplane passes failing (last: OSError: netlink said no) for ")
    assert sample(h, "felix_int_dataplane_failures_total") >= 3
    h.dataplane.failures_left = 0
    h.advance(31)
    assert h.health.liveness() == (True, "live")


def test_metrics_after_known_actions(h):
    h.heartbeat()
    h.dataplane.missing = {"ep3"}
    synced(h, endpoint(), endpoint(endpoint_id="ep3", addr="192.168.1.3"))
    h.request(endpoint(endpoint_id="ep4", addr="192.168.1.4"))  # no ACLs for it anywhere
    h.step()
    h.pump_until(lambda: sample(h, "felix_active_local_endpoints") == 3, "three endpoints")
    assert sample(h, "felix_resyncs_started_total") == 1
    assert sample(h, "felix_local_endpoints", state="programmed") == 1
    assert sample(h, "felix_local_endpoints", state="interface-missing") == 1
    assert sample(h, "felix_local_endpoints", state="waiting-for-acls") == 1
    assert sample(h, "felix_local_endpoints", state="fail-closed") == 0
    passes = len(h.dataplane.applied)
    assert sample(h, "felix_int_dataplane_apply_time_seconds_count") == passes
    assert sample(h, "felix_dataplane_passes_total") == passes
    assert sample(h, "felix_kernel_writes_total", kind="iptables_commits") == passes
    assert sample(h, "felix_kernel_writes_total", kind="route_requests") == sum(len(d) for d in h.dataplane.applied)
    assert sample(h, "felix_endpoint_requests_total", type="ENDPOINTCREATED") == 3
    assert sample(h, "felix_acl_publications_total", type="ACLUPDATE") == 2
    h.request_raw(b"not json")
    assert sample(h, "felix_endpoint_requests_total", type="rejected") == 1
    h.agent.publish_health()
    assert sample(h, "felix_peer_connected", peer="acl-manager-publications") == 1

    h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="ep4"))
    h.step()
    h.pump_until(lambda: sample(h, "felix_active_local_endpoints") == 2, "two endpoints")
    assert sample(h, "felix_local_endpoints", state="waiting-for-acls") == 0
    status = h.health.snapshot()
    assert status["endpoints"]["programmed"] == 1 and status["endpoint_count"] == 2
    assert status["last_pass"]["ok"] and status["last_pass"]["endpoints"] == 2


def test_tool_runs_are_counted_by_kind():
    metrics = PrometheusFelixMetrics()
    for tool, ok in (("iptables-legacy-restore", True), ("ip6tables-legacy-restore", False),
                     ("iptables-nft-restore", True), ("iptables-legacy-save", True), ("ipset", False),
                     ("ipset", True), ("something-else", False)):
        metrics.tool_run(tool, ok)
    value = metrics.registry.get_sample_value
    assert value("felix_iptables_restore_calls_total") == 3
    assert value("felix_iptables_restore_errors_total") == 1
    assert value("felix_iptables_save_calls_total") == 1
    assert value("felix_ipset_calls_total", {"method": "restore"}) == 2
    assert value("felix_ipset_errors_total", {"method": "restore"}) == 1


def test_kernel_writes_move_by_what_changed():
    metrics = PrometheusFelixMetrics()
    writes = WriteCounter()
    metrics.kernel_writes(writes.snapshot(), 0)
    writes.ipset_requests, writes.sysctl_writes = 5, 2
    metrics.kernel_writes(writes.snapshot(), 1)
    writes.ipset_requests = 7
    metrics.kernel_writes(writes.snapshot(), 1)
    value = metrics.registry.get_sample_value
    assert value("felix_kernel_writes_total", {"kind": "ipset_requests"}) == 7
    assert value("felix_kernel_writes_total", {"kind": "sysctl_writes"}) == 2
    assert value("felix_kernel_writes_total", {"kind": "tunnel_requests"}) == 0
    assert value("felix_ipset_calls_total", {"method": "netlink"}) == 7
    assert value("felix_ipset_errors_total", {"method": "netlink"}) == 1


def test_tools_report_every_run(monkeypatch):
    import subprocess

    from calico.felix import tools

    seen = []
    monkeypatch.setattr(tools, "observers", [lambda tool, ok: seen.append((tool, ok)), lambda *a: 1 / 0])

    def runner(argv, **kwargs):
        if argv[0] == "/sbin/boom":
            raise subprocess.TimeoutExpired(argv, 1)
        return subprocess.CompletedProcess(argv, 0 if argv[0].endswith("ok") else 1, "", "no")
    tools.run_tool(["/usr/sbin/ok"], runner=runner)
    with pytest.raises(tools.ToolError):
        tools.run_tool(["ipset", "restore"], runner=runner)
    with pytest.raises(subprocess.TimeoutExpired):
        tools.run_tool(["/sbin/boom"], runner=runner)
    assert seen == [("ok", True), ("ipset", False), ("boom", False)]
