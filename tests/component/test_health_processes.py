"""Health and metrics of the real plugin and ACL manager processes, over HTTP on loopback.

Addresses (this file's range, 127.0.7.0/24): the plugin binds 127.0.7.1
(9901, 9903, 9904, health 9097 / 9098); the fake Felix h1 127.0.7.2:9902;
the ACL manager 127.0.7.3 (9905, 9906, health 9096); the fake plugin it
talks to 127.0.7.4 (9903, 9904).  Every value checked is one a user would
see: /readiness and /liveness answers, /metrics samples after known
actions.  Nothing is timed: each check polls until the value is there.
"""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from calico.common import messages
from calico.common.datafiles import Endpoint, endpoint_file_text, write_file_atomically
from calico.common.health import get
from test_acl_manager_process import FakePlugin

PLUGIN = "127.0.7.1"
FELIX_H1 = "127.0.7.2"
ACL = "127.0.7.3"
FAKE_PLUGIN = "127.0.7.4"
CLUSTER = f"[felix h1]\nip={FELIX_H1}\nhost=h1\n"
FAST = ["--connection-timeout-ms", "1500", "--keepalive-ms", "300", "--poll-interval-ms", "50"]
EP_HEALTH = f"http://{PLUGIN}:9097"
NET_HEALTH = f"http://{PLUGIN}:9098"
ACL_HEALTH = f"http://{ACL}:9096"


@pytest.fixture(autouse=True)
def own_address_range(loopback_range):
    with loopback_range("127.0.7"):
        yield


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    (path / "felix.txt").write_text(CLUSTER)
    return path


def write_endpoint(data_dir, eid, ip, host="h1", groups=("web",)):
    ep = Endpoint(eid, (ip,), "aa:bb:cc:00:00:01", host, tuple(groups))
    write_file_atomically(str(data_dir / f"{eid}.txt"), endpoint_file_text(ep))


def answer(url):
    """(status, text), or None while nothing answers."""
    try:
        return get(url, timeout=5.0)
    except OSError:
        return None


def metrics(base) -> dict[tuple[str, tuple], float]:
    code, text = get(f"{base}/metrics")
    assert code == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(base, name, **labels):
    return metrics(base).get((name, tuple(sorted(labels.items()))))


def plugin_args(api, *extra):
    return [*FAST, "--health-host", PLUGIN, "--prometheus-metrics-enabled", "true", *extra]


# --- the plugin -------------------------------------------------------------------

def test_plugin_ready_only_once_its_data_directory_is_read(tmp_path, spawn, cluster_secret_file, wait_until):
    missing = tmp_path / "not-mounted-yet"
    log_file = str(tmp_path / "ep.log")
    spawn(["-m", "calico.plugin.main", "ep", "--data-dir", str(missing), "--bind", PLUGIN, "--log-file", log_file,
           "--secret-file", cluster_secret_file, *plugin_args("ep")], "plugin-ep", log_file)
    code, text = wait_until(lambda: answer(f"{EP_HEALTH}/readiness"), what="the plugin's health server")
    wait_until(lambda: answer(f"{EP_HEALTH}/readiness")[1].startswith(f"data directory {missing} not read yet"),
               what="a readiness answer naming the directory")
    assert answer(f"{EP_HEALTH}/readiness")[0] == 503
    assert answer(f"{EP_HEALTH}/liveness") == (200, "live\n")
    missing.mkdir()
    (missing / "felix.txt").write_text(CLUSTER)
    wait_until(lambda: answer(f"{EP_HEALTH}/readiness") == (200, "ready\n"), what="ready once the directory is there")


def test_endpoint_api_metrics_after_known_changes(data_dir, start_plugin, peers, wait_until):
    write_endpoint(data_dir, "ep1", "192.168.1.1")
    felix = peers.rep(f"tcp://{FELIX_H1}:9902", host="h1")
    start_plugin("ep", data_dir, PLUGIN, *plugin_args("ep"))
    wait_until(lambda: answer(f"{EP_HEALTH}/readiness") == (200, "ready\n"), what="ready")
    wait_until(lambda: sample(EP_HEALTH, "calico_plugin_files") == 2, what="2 files")
    assert sample(EP_HEALTH, "calico_plugin_bad_files") == 0
    assert sample(EP_HEALTH, "calico_plugin_endpoints") == 1
    # The plugin told the Felix it has just found about everything (no resync needed).
    wait_until(lambda: sample(EP_HEALTH, "calico_plugin_messages_sent_total", felix="h1",
                              type="ENDPOINTCREATED") == 1, what="the first ENDPOINTCREATED counted")
    assert sample(EP_HEALTH, "calico_plugin_change_to_message_seconds_count") == 0  # the start is no change

    write_endpoint(data_dir, "ep2", "192.168.1.2")
    (data_dir / "broken.txt").write_text("[endpoint x]\nip = not-an-address\n")
    wait_until(lambda: any(m.get("endpoint_id") == "ep2" for m in felix.of_type("ENDPOINTCREATED")),
               what="ENDPOINTCREATED for ep2 at the Felix")
    wait_until(lambda: sample(EP_HEALTH, "calico_plugin_bad_files") == 1, what="the bad file counted")
    values = metrics(EP_HEALTH)
    assert values[("calico_plugin_files", ())] == 4
    assert values[("calico_plugin_endpoints", ())] == 2
    assert values[("calico_plugin_messages_sent_total", (("felix", "h1"), ("type", "ENDPOINTCREATED")))] == 2
    assert values[("calico_plugin_change_to_message_seconds_count", ())] == 1
    assert values[("calico_plugin_messages_queued", (("felix", "h1"),))] == 0

    (data_dir / "ep2.txt").unlink()
    wait_until(lambda: felix.of_type("ENDPOINTDESTROYED"), what="ENDPOINTDESTROYED at the Felix")
    wait_until(lambda: sample(EP_HEALTH, "calico_plugin_messages_sent_total", felix="h1",
                              type="ENDPOINTDESTROYED") == 1, what="the ENDPOINTDESTROYED counted")
    assert sample(EP_HEALTH, "calico_plugin_change_to_message_seconds_count") == 2
    wait_until(lambda: sample(EP_HEALTH, "calico_plugin_felix_connected", felix="h1") == 1,
               what="the Felix seen as connected")


def test_endpoint_api_queue_for_a_felix_that_is_down(data_dir, start_plugin, wait_until):
    start_plugin("ep", data_dir, PLUGIN, *plugin_args("ep"))  # no Felix at 127.0.7.2
    for n in range(3):
        write_endpoint(data_dir, f"q{n}", f"192.168.1.{10 + n}")
    # One message is in flight to the absent Felix; the others wait in its outbox.
    wait_until(lambda: sample(EP_HEALTH, "calico_plugin_messages_queued", felix="h1") == 2, what="2 queued")
    assert sample(EP_HEALTH, "calico_plugin_felix_connected", felix="h1") == 0
    code, text = get(f"{EP_HEALTH}/status")
    assert '"queued": 2' in text and code == 200


def test_network_api_metrics(data_dir, start_plugin, peers, wait_until):
    write_endpoint(data_dir, "a", "192.168.1.1")
    start_plugin("network", data_dir, PLUGIN, *plugin_args("network"))
    wait_until(lambda: answer(f"{NET_HEALTH}/readiness") == (200, "ready\n"), what="ready")
    sub = peers.sub(f"tcp://{PLUGIN}:9904", [messages.TOPIC_GROUPS, messages.TOPIC_NETWORK_HEARTBEAT],
                    role="acl-manager")
    wait_until(lambda: sub.of_topic(messages.TOPIC_NETWORK_HEARTBEAT), what="a network heartbeat")
    assert peers.req(f"tcp://{PLUGIN}:9903", role="acl-manager").request(messages.make(messages.GETGROUPS))["rc"] \
        == "SUCCESS"
    wait_until(lambda: sample(NET_HEALTH, "calico_plugin_getgroups_total") == 1, what="GETGROUPS counted")
    # web: once at start (nobody listening yet), once in the burst after GETGROUPS.
    assert sample(NET_HEALTH, "calico_plugin_group_updates_published_total") == 2
    write_endpoint(data_dir, "b", "192.168.1.2", groups=("web", "db"))
    wait_until(lambda: sample(NET_HEALTH, "calico_plugin_group_updates_published_total") == 4,
               what="web and db published")
    assert sample(NET_HEALTH, "calico_plugin_change_to_message_seconds_count") == 2
    wait_until(lambda: sample(NET_HEALTH, "calico_plugin_groups") == 2, what="2 groups (gauges: every second)")


def test_plugin_liveness_fails_while_its_loop_is_stuck(data_dir, start_plugin, tmp_path, monkeypatch, wait_until):
    stall = tmp_path / "stall"
    monkeypatch.setenv("CALICO_DEBUG_STALL_FILE", str(stall))
    plugin = start_plugin("ep", data_dir, PLUGIN, *plugin_args("ep", "--health-timeout-secs", "1"))
    wait_until(lambda: answer(f"{EP_HEALTH}/liveness") == (200, "live\n"), what="live")
    stall.write_text("")
    code, text = wait_until(lambda: (answer(f"{EP_HEALTH}/liveness") or (0, ""))[0] == 503
                            and answer(f"{EP_HEALTH}/liveness"), what="not live while stuck")
    assert text.startswith("event loop stalled: no iteration for ")
    assert answer(f"{EP_HEALTH}/readiness")[0] == 503
    stall.unlink()
    wait_until(lambda: answer(f"{EP_HEALTH}/liveness") == (200, "live\n"), what="live again")
    assert plugin.count("the event loop stalls until it is removed") == 1


def test_bad_http_clients_do_not_disturb_the_plugin(data_dir, start_plugin, peers, wait_until):
    write_endpoint(data_dir, "ep1", "192.168.1.1")
    peers.rep(f"tcp://{FELIX_H1}:9902", host="h1")
    plugin = start_plugin("ep", data_dir, PLUGIN, *plugin_args("ep"))
    wait_until(lambda: answer(f"{EP_HEALTH}/readiness") == (200, "ready\n"), what="ready")
    idle = [socket.create_connection((PLUGIN, 9097), timeout=30) for _ in range(40)]
    try:
        for sock in idle[:10]:
            try:
                sock.sendall(b"POST /readiness HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 65536)
            except OSError:
                pass  # closed for want of a slot, or after our budget: fine
        # Meanwhile the plugin's real work goes on: a Felix's resync is answered.
        req = peers.req(f"tcp://{PLUGIN}:9901", host="h1")
        reply = req.request(messages.make(messages.RESYNCSTATE, resync_id="r1", hostname="h1"))
        assert reply["rc"] == "SUCCESS" and reply["endpoint_count"] == 1
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: answer(f"{EP_HEALTH}/readiness") == (200, "ready\n"), what="health answers again")
    assert plugin.alive


def test_health_off_and_metrics_off(data_dir, start_plugin, wait_until):
    start_plugin("ep", data_dir, PLUGIN, *FAST, "--health-host", PLUGIN, "--health-enabled", "false")
    assert answer(f"{EP_HEALTH}/readiness") is None
    start_plugin("network", data_dir, PLUGIN, *FAST, "--health-host", PLUGIN)
    wait_until(lambda: answer(f"{NET_HEALTH}/readiness") == (200, "ready\n"), what="ready")
    assert answer(f"{NET_HEALTH}/metrics") == (404, "metrics are off (PrometheusMetricsEnabled)\n")


# --- the ACL manager ---------------------------------------------------------------

@pytest.fixture
def acl_manager(spawn, tmp_path, wait_until, cluster_secret_file):
    def start():
        config = tmp_path / "acl_manager.cfg"
        config.write_text(f"[global]\nPluginAddress = {FAKE_PLUGIN}\nLocalAddress = {ACL}\n"
                          f"[security]\nClusterSecretFile = {cluster_secret_file}\n"
                          f"[health]\nHealthHost = {ACL}\nPrometheusMetricsEnabled = true\n")
        log_file = str(tmp_path / "acl_manager.log")
        manager = spawn(["-m", "calico.acl_manager.main", "--config-file", str(config), "--log-file", log_file,
                         "--connection-timeout-ms", "1000", "--keepalive-ms", "200"], "acl_manager", log_file)
        wait_until(lambda: "serving the ACL API" in manager.log() or not manager.alive, what="the ACL manager")
        assert manager.alive, manager.output()
        return manager
    return start


@pytest.fixture
def fake_plugin():
    made = []

    def start(groups=None):
        plugin = FakePlugin(groups, host=FAKE_PLUGIN)
        made.append(plugin)
        return plugin
    yield start
    for plugin in made:
        if plugin.thread.is_alive():
            plugin.close()


def web(members):
    return messages.make(messages.GROUPUPDATE, group="web", members=members,
                         rules={"inbound": [{"group": "web"}], "outbound": [{"group": "web"}],
                                "inbound_default": "deny", "outbound_default": "deny"})


def test_acl_manager_ready_once_it_has_the_groups_and_its_metrics(acl_manager, fake_plugin, peers, wait_until):
    acl_manager()
    code, text = wait_until(lambda: answer(f"{ACL_HEALTH}/readiness"), what="the ACL manager's health server")
    assert code == 503 and text.startswith("no complete set of groups from the plugin yet (GETGROUPS to "
                                           f"tcp://{FAKE_PLUGIN}:9903")
    assert answer(f"{ACL_HEALTH}/liveness") == (200, "live\n")
    plugin = fake_plugin([web({"a": ["192.168.1.1"], "b": ["192.168.1.2"]})])
    wait_until(lambda: answer(f"{ACL_HEALTH}/readiness") == (200, "ready\n"), what="ready with the groups")
    wait_until(lambda: sample(ACL_HEALTH, "calico_acl_manager_endpoints") == 2, what="2 endpoints")
    values = metrics(ACL_HEALTH)
    assert values[("calico_acl_manager_groups", ())] == 1
    assert values[("calico_acl_manager_acl_updates_published_total", ())] == 2
    assert values[("calico_acl_manager_membership_messages_published_total", (("type", "GROUPMEMBERS"),))] == 1
    assert values[("calico_acl_manager_compute_seconds_count", ())] >= 1
    assert values[("calico_acl_manager_snapshots_completed_total", ())] >= 1
    assert values[("calico_acl_manager_getgroups_sent_total", ())] >= 1

    # A Felix subscribing to an endpoint is answered with its ACLs: one more ACLUPDATE.
    sub = peers.sub(f"tcp://{ACL}:9906", [b"a", messages.TOPIC_ACL_HEARTBEAT], role="felix")
    wait_until(lambda: sub.of_topic(b"a"), what="a's ACLUPDATE")
    wait_until(lambda: sample(ACL_HEALTH, "calico_acl_manager_acl_updates_published_total") == 3,
               what="the answer counted")
    # A join: the joiner's ACLUPDATE and one MEMBERSUPDATE.
    computed = sample(ACL_HEALTH, "calico_acl_manager_compute_seconds_count")
    plugin.set_group("web", {"a": ["192.168.1.1"], "b": ["192.168.1.2"], "c": ["192.168.1.3"]},
                     inbound="group:web", outbound="group:web")
    wait_until(lambda: sample(ACL_HEALTH, "calico_acl_manager_endpoints") == 3, what="3 endpoints")
    values = metrics(ACL_HEALTH)
    assert values[("calico_acl_manager_acl_updates_published_total", ())] == 4
    assert values[("calico_acl_manager_membership_messages_published_total", (("type", "MEMBERSUPDATE"),))] == 1
    assert values[("calico_acl_manager_compute_seconds_count", ())] == computed + 1
    code, text = get(f"{ACL_HEALTH}/status")
    assert code == 200 and '"groups": 1' in text and '"endpoints": 3' in text
