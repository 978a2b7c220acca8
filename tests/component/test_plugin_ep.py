"""The real endpoint API process against fake Felixes on loopback.

The plugin binds 127.0.1.1:9901; fake Felix h1 binds 127.0.1.2:9902 and h2
127.0.1.3:9902, as felix.txt in the test's data directory says.  Every check
is on the wire: the exact messages a Felix receives.
"""

import json
import os

import pytest

import fuzzdata
import testkeys
from binding import bind_when_free, close_and_wait
from calico.common import messages
from calico.common.datafiles import Endpoint, endpoint_file_text, write_file_atomically

PLUGIN = "127.0.1.1"
FELIX = {"h1": "127.0.1.2", "h2": "127.0.1.3"}
EP_REQ = f"tcp://{PLUGIN}:9901"
FAST = ["--connection-timeout-ms", "1500", "--keepalive-ms", "300", "--poll-interval-ms", "50"]

CLUSTER = "".join(f"[felix {name}]\nip={ip}\nhost={name}\n\n" for name, ip in FELIX.items())


def felix_address(host):
    return f"tcp://{FELIX[host]}:9902"


def write_endpoint(data_dir, eid, ip, host, mac="aa:bb:cc:00:00:01", groups=("web",), state="enabled", name=None):
    ep = Endpoint(eid, tuple(ip.split(",")), mac, host, tuple(groups), state)
    name = name or ip.split(",")[0].replace(".", "_")
    write_file_atomically(str(data_dir / f"{name}.txt"), endpoint_file_text(ep))


def endpoint_msgs(felix, eid):
    return [m for m in felix.snapshot() if isinstance(m, dict) and m.get("endpoint_id") == eid]


@pytest.fixture(autouse=True)
def own_address_range(loopback_range):
    """127.0.1.x is this file's; another run on this machine waits its turn."""
    with loopback_range("127.0.1"):
        yield


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    (path / "felix.txt").write_text(CLUSTER)
    return path


def resync(felix_req, host, resync_id):
    return felix_req.request(messages.make(messages.RESYNCSTATE, resync_id=resync_id, hostname=f"{host}.example.com"))


def test_resync_sends_count_then_exact_endpoint_created(data_dir, start_plugin, peers, wait_until):
    write_endpoint(data_dir, "ep1", "192.168.1.1", "h1", mac="AA:BB:CC:00:00:01")
    write_endpoint(data_dir, "ep2", "192.168.1.2,fd00::2", "h1", mac="aa:bb:cc:00:00:02", state="disabled")
    write_endpoint(data_dir, "ep3", "192.168.2.1", "h2")
    felix1 = peers.rep(felix_address("h1"), host="h1")
    start_plugin("ep", data_dir, PLUGIN, *FAST)
    req = peers.req(EP_REQ, host="h1")

    before = messages.now_ms()
    reply = resync(req, "h1", "r-1")
    assert reply == {"type": "RESYNCSTATE", "rc": "SUCCESS", "message": "", "endpoint_count": 2}

    def resync_msgs():
        got = [m for m in felix1.of_type("ENDPOINTCREATED") if m.get("resync_id") == "r-1"]
        return got if len(got) >= 2 else None

    got = sorted(wait_until(resync_msgs, what="two resync ENDPOINTCREATED"), key=lambda m: m["endpoint_id"])
    for msg in got:
        assert isinstance(msg["issued"], int) and msg["issued"] >= before - 60_000
        del msg["issued"]
    assert got == [
        {"type": "ENDPOINTCREATED", "endpoint_id": "ep1", "mac": "aa:bb:cc:00:00:01", "state": "enabled",
         "addrs": [{"addr": "192.168.1.1"}], "resync_id": "r-1"},
        {"type": "ENDPOINTCREATED", "endpoint_id": "ep2", "mac": "aa:bb:cc:00:00:02", "state": "disabled",
         "addrs": [{"addr": "192.168.1.2"}, {"addr": "fd00::2"}], "resync_id": "r-1"},
    ]
    # h2's endpoint never goes to h1.
    assert not endpoint_msgs(felix1, "ep3")
    # A host with no endpoints gets a count of zero; an unknown host is refused.
    assert resync(peers.req(EP_REQ, host="h2"), "h2", "r-2")["endpoint_count"] == 1
    refused = resync(req, "nosuchhost", "r-3")
    assert refused["type"] == "RESYNCSTATE" and refused["rc"] == "INVALID" and "nosuchhost" in refused["message"]


def test_live_create_update_destroy_and_move(data_dir, start_plugin, peers, wait_until):
    felix1 = peers.rep(felix_address("h1"), host="h1")
    felix2 = peers.rep(felix_address("h2"), host="h2")
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)

    write_endpoint(data_dir, "live1", "192.168.1.10", "h1", mac="aa:bb:cc:00:00:10")
    created = wait_until(lambda: felix1.of_type("ENDPOINTCREATED"), what="ENDPOINTCREATED")
    assert created[0]["endpoint_id"] == "live1" and "resync_id" not in created[0]
    assert created[0]["addrs"] == [{"addr": "192.168.1.10"}]

    write_endpoint(data_dir, "live1", "192.168.1.10,192.168.1.11", "h1", mac="aa:bb:cc:00:00:10")
    updated = wait_until(lambda: felix1.of_type("ENDPOINTUPDATED"), what="ENDPOINTUPDATED")
    assert updated[0]["addrs"] == [{"addr": "192.168.1.10"}, {"addr": "192.168.1.11"}]
    assert updated[0]["mac"] == "aa:bb:cc:00:00:10" and updated[0]["state"] == "enabled"

    # Only the groups change: that is GROUPUPDATE's business, not Felix's.
    write_endpoint(data_dir, "live1", "192.168.1.10,192.168.1.11", "h1", mac="aa:bb:cc:00:00:10", groups=("db",))
    # Rename the file (same content): nothing to say either.
    (data_dir / "192_168_1_10.txt").rename(data_dir / "renamed.txt")
    # A later, visible change proves those two were seen and passed over.
    write_endpoint(data_dir, "marker", "192.168.1.99", "h1", mac="aa:bb:cc:00:00:99")
    wait_until(lambda: endpoint_msgs(felix1, "marker"), what="marker endpoint")
    assert [m["type"] for m in endpoint_msgs(felix1, "live1")] == ["ENDPOINTCREATED", "ENDPOINTUPDATED"]

    # Moving host: destroyed on h1, created on h2.
    write_endpoint(data_dir, "live1", "192.168.1.10", "h2", mac="aa:bb:cc:00:00:10", name="renamed")
    wait_until(lambda: felix1.of_type("ENDPOINTDESTROYED"), what="ENDPOINTDESTROYED on h1")
    moved = wait_until(lambda: felix2.of_type("ENDPOINTCREATED"), what="ENDPOINTCREATED on h2")
    assert moved[0]["endpoint_id"] == "live1"

    (data_dir / "renamed.txt").unlink()
    destroyed = wait_until(lambda: felix2.of_type("ENDPOINTDESTROYED"), what="ENDPOINTDESTROYED on h2")
    assert destroyed[0] == {"type": "ENDPOINTDESTROYED", "endpoint_id": "live1", "issued": destroyed[0]["issued"]}
    assert plugin.alive


def test_heartbeats_both_ways(data_dir, start_plugin, peers, wait_until):
    felix1 = peers.rep(felix_address("h1"), host="h1")
    start_plugin("ep", data_dir, PLUGIN, *FAST)
    # The plugin keeps its quiet channel alive.
    wait_until(lambda: len(felix1.of_type("HEARTBEAT")) >= 2, what="plugin heartbeats to Felix")
    req = peers.req(EP_REQ, host="h1")
    assert req.request(messages.make(messages.HEARTBEAT)) == {"type": "HEARTBEAT", "rc": "SUCCESS", "message": ""}


@pytest.mark.parametrize("raw, want_type, reason", [
    (b"not json", "UNKNOWN", "not JSON"),
    (b"[1, 2]", "UNKNOWN", "not a JSON object"),
    (json.dumps({"type": "NOSUCHTYPE"}).encode(), "UNKNOWN", "NOSUCHTYPE"),
    (json.dumps({"type": "ENDPOINTCREATED"}).encode(), "ENDPOINTCREATED", "unexpected"),
    (json.dumps({"type": "RESYNCSTATE", "hostname": "h1"}).encode(), "RESYNCSTATE", "resync_id"),
    (json.dumps({"type": "RESYNCSTATE", "resync_id": 7, "hostname": "h1"}).encode(), "RESYNCSTATE", "resync_id"),
    ([b"two", b"frames"], "UNKNOWN", "one frame"),
])
def test_malformed_requests_get_invalid_and_plugin_keeps_serving(data_dir, start_plugin, peers, raw, want_type, reason):
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)
    req = peers.req(EP_REQ, host="h1")
    reply = req.request(raw)
    assert reply["type"] == want_type and reply["rc"] == "INVALID" and reason in reply["message"]
    assert req.request(messages.make(messages.HEARTBEAT))["rc"] == "SUCCESS"
    assert plugin.alive
    assert plugin.count("bad request") == 1


def test_restarted_plugin_is_noticed_and_resync_gives_new_state(data_dir, start_plugin, peers, wait_until):
    write_endpoint(data_dir, "keep", "192.168.1.1", "h1")
    write_endpoint(data_dir, "gone", "192.168.1.2", "h1")
    felix1 = peers.rep(felix_address("h1"), host="h1")
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)
    req = peers.req(EP_REQ, timeout=1.0, host="h1")
    assert resync(req, "h1", "before")["endpoint_count"] == 2

    plugin.kill()
    # While it is down the directory changes.
    (data_dir / "192_168_1_2.txt").unlink()
    write_endpoint(data_dir, "new", "192.168.1.3", "h1")
    # Felix's keepalive goes unanswered: that is how it notices.
    assert req.request(messages.make(messages.HEARTBEAT)) is None

    start_plugin("ep", data_dir, PLUGIN, *FAST, name="plugin-ep-again")
    reply = wait_until(lambda: resync(req, "h1", "after"), what="resync after restart")
    assert reply["endpoint_count"] == 2
    wait_until(lambda: len([m for m in felix1.of_type("ENDPOINTCREATED") if m.get("resync_id") == "after"]) == 2,
               what="resync after restart")
    ids = sorted(m["endpoint_id"] for m in felix1.of_type("ENDPOINTCREATED") if m.get("resync_id") == "after")
    assert ids == ["keep", "new"]


def test_dead_felix_does_not_delay_another_and_gets_coalesced_changes(data_dir, start_plugin, peers, wait_until):
    felix1 = peers.rep(felix_address("h1"), host="h1")
    # h2's Felix is down; a long timeout keeps the plugin's request to it in
    # flight for the whole test, the worst case for head-of-line blocking.
    plugin = start_plugin("ep", data_dir, PLUGIN, "--connection-timeout-ms", "120000",
                          "--keepalive-ms", "60000", "--poll-interval-ms", "50")
    write_endpoint(data_dir, "onh2", "192.168.2.1", "h2", mac="aa:bb:cc:00:02:00")
    wait_until(lambda: plugin.count("endpoint onh2 (192_168_2_1.txt): created") == 1, what="onh2 seen")
    for n in range(1, 4):
        write_endpoint(data_dir, "onh2", "192.168.2.1", "h2", mac=f"aa:bb:cc:00:02:0{n}")
        wait_until(lambda: plugin.count("endpoint onh2 (192_168_2_1.txt): updated") == n, what=f"update {n} seen")

    # h1 hears each of its own changes while h2 is stuck.
    write_endpoint(data_dir, "onh1", "192.168.1.1", "h1")
    wait_until(lambda: felix1.of_type("ENDPOINTCREATED"), what="h1 create")
    write_endpoint(data_dir, "onh1", "192.168.1.1", "h1", mac="aa:bb:cc:00:01:99")
    wait_until(lambda: felix1.of_type("ENDPOINTUPDATED"), what="h1 update")
    (data_dir / "192_168_1_1.txt").unlink()
    wait_until(lambda: felix1.of_type("ENDPOINTDESTROYED"), what="h1 destroy")

    # h2 comes up: it gets the request that was in flight, then one message
    # for the three queued updates (the latest), not three.
    felix2 = peers.rep(felix_address("h2"), host="h2")
    got = wait_until(lambda: (lambda m: m if len(m) >= 2 else None)(endpoint_msgs(felix2, "onh2")),
                     what="h2 catching up")
    assert [(m["type"], m["mac"]) for m in got] == [("ENDPOINTCREATED", "aa:bb:cc:00:02:00"),
                                                     ("ENDPOINTUPDATED", "aa:bb:cc:00:02:03")]
    # Nothing else is queued for it (a further change arrives on its own).
    write_endpoint(data_dir, "onh2", "192.168.2.1", "h2", mac="aa:bb:cc:00:02:04")
    wait_until(lambda: len(endpoint_msgs(felix2, "onh2")) == 3, what="h2 live again")
    assert endpoint_msgs(felix2, "onh2")[-1]["mac"] == "aa:bb:cc:00:02:04"


def test_malformed_file_logged_once_and_skipped_then_picked_up(data_dir, start_plugin, peers, wait_until):
    felix1 = peers.rep(felix_address("h1"), host="h1")
    (data_dir / "broken.txt").write_text("[endpoint broken]\nid=broken\nip=192.168.1.50\nhost=h1\ngroup=web\n")
    write_endpoint(data_dir, "taken", "192.168.1.60", "h1")
    (data_dir / "thief.txt").write_text(
        "[endpoint thief]\nid=thief\nip=192.168.1.60\nmac=aa:bb:cc:00:00:61\nhost=h1\ngroup=web\n")
    (data_dir / "nohost.txt").write_text(
        "[endpoint nohost]\nid=nohost\nip=192.168.1.70\nmac=aa:bb:cc:00:00:70\nhost=h9\ngroup=web\n")
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)

    wait_until(lambda: endpoint_msgs(felix1, "taken"), what="the good endpoint")
    log = plugin.log()
    assert "broken.txt: [endpoint broken]: missing 'mac'" in log
    assert "thief.txt: [endpoint thief]: address 192.168.1.60 is already used by endpoint taken" in log
    assert "nohost.txt: [endpoint nohost]: host h9 is not a [felix] host" in log

    # Other files keep working and the faults are not logged again.
    write_endpoint(data_dir, "other", "192.168.1.80", "h1")
    wait_until(lambda: endpoint_msgs(felix1, "other"), what="another endpoint")
    (data_dir / "broken.txt").write_text("[endpoint broken]\nid=broken\nip=192.168.1.50\nhost=h1\ngroup=web\n\n")
    write_endpoint(data_dir, "other2", "192.168.1.81", "h1")
    wait_until(lambda: endpoint_msgs(felix1, "other2"), what="yet another endpoint")
    assert plugin.count("missing 'mac'") == 1
    assert plugin.count("thief.txt") == 1
    assert not endpoint_msgs(felix1, "thief") and not endpoint_msgs(felix1, "broken")

    # Fixed, it is picked up.
    (data_dir / "broken.txt").write_text(
        "[endpoint broken]\nid=broken\nip=192.168.1.50\nmac=aa:bb:cc:00:00:50\nhost=h1\ngroup=web\n")
    wait_until(lambda: endpoint_msgs(felix1, "broken"), what="the fixed endpoint")
    assert plugin.alive


def test_host_added_and_removed_at_run_time(data_dir, start_plugin, peers, wait_until):
    (data_dir / "felix.txt").write_text("[felix h1]\nip=127.0.1.2\nhost=h1\n")
    write_endpoint(data_dir, "early", "192.168.2.5", "h2")
    felix2 = peers.rep(felix_address("h2"), host="h2")
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)
    wait_until(lambda: "host h2 is not a [felix] host" in plugin.log(), what="unknown host reported")
    write_file = data_dir / "felix.txt"
    write_file.write_text(CLUSTER)
    created = wait_until(lambda: felix2.of_type("ENDPOINTCREATED"), what="h2's endpoint after h2 added")
    assert created[0]["endpoint_id"] == "early"

    # Removed again: its channel goes, its endpoint is reported, h1 carries on.
    write_file.write_text("[felix h1]\nip=127.0.1.2\nhost=h1\n")
    wait_until(lambda: "host h2: removed; closing its channel" in plugin.log(), what="h2 removed")
    assert plugin.count("host h2 is not a [felix] host") == 2
    felix1 = peers.rep(felix_address("h1"), host="h1")
    write_endpoint(data_dir, "onh1", "192.168.1.5", "h1")
    wait_until(lambda: endpoint_msgs(felix1, "onh1"), what="h1 still served")
    assert plugin.alive


def test_shipped_felix_txt_placeholders_are_not_configured(tmp_path, start_plugin, peers, wait_until):
    data = tmp_path / "data"
    data.mkdir()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (data / "felix.txt").write_text(open(os.path.join(repo, "felix.txt")).read())
    # No host is configured, so no Felix key would be admitted: insecure.
    plugin = start_plugin("ep", data, PLUGIN, *FAST, secure=False)
    wait_until(lambda: plugin.count("not configured") == 2, what="placeholder notes")
    req = peers.req(EP_REQ, keys=None)
    assert req.request(messages.make(messages.HEARTBEAT))["rc"] == "SUCCESS"
    # A later change is seen (and rebuilds the state): the notes are not repeated.
    (data / "later.txt").write_text("not ini")
    wait_until(lambda: "later.txt: not a valid INI file" in plugin.log(), what="later file seen")
    assert plugin.count("not configured") == 2 and plugin.alive


def test_felix_restarting_with_a_request_in_flight_gets_its_resync_at_once(data_dir, start_plugin, peers, wait_until):
    import zmq
    write_endpoint(data_dir, "ep1", "192.168.1.1", "h1")
    # A Felix that takes a request and dies without answering it.  Its own
    # context, terminated below, frees the address before the next bind.
    dying_context = zmq.Context()
    dying = dying_context.socket(zmq.REP)
    testkeys.as_server(dying, felix_address("h1"), host="h1")
    bind_when_free(dying, felix_address("h1"))
    try:
        # The timeout is far beyond the wait below: only abandoning the lost
        # request lets the resync through in time.
        start_plugin("ep", data_dir, PLUGIN, "--connection-timeout-ms", "120000", "--keepalive-ms", "200",
                     "--poll-interval-ms", "50")
        assert dying.poll(10000), "the plugin sent nothing"
        dying.recv()
    finally:
        close_and_wait(dying_context, dying)
    felix1 = peers.rep(felix_address("h1"), host="h1")
    req = peers.req(EP_REQ, host="h1")
    assert resync(req, "h1", "again")["endpoint_count"] == 1
    got = wait_until(lambda: [m for m in felix1.of_type("ENDPOINTCREATED") if m.get("resync_id") == "again"],
                     timeout=20, what="resync after Felix restart")
    assert got[0]["endpoint_id"] == "ep1"


def exact(msgs):
    """Messages without their send time (checked to be there)."""
    for msg in msgs:
        assert isinstance(msg["issued"], int)
    return [{k: v for k, v in msg.items() if k != "issued"} for msg in msgs]


def created_or_updated(msg_type, eid, ip, mac, state="enabled"):
    return {"type": msg_type, "endpoint_id": eid, "mac": mac, "state": state,
            "addrs": [{"addr": a} for a in ip.split(",")]}


def test_every_kind_of_file_change_reaches_felix_as_exactly_one_message(data_dir, start_plugin, peers, wait_until):
    felix1 = peers.rep(felix_address("h1"), host="h1")
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)
    assert plugin.count(f"data directory {data_dir}: watching with inotify") == 1
    path = data_dir / "web1.txt"
    ep = Endpoint("web1", ("192.168.1.21",), "aa:bb:cc:00:00:21", "h1", ("web",))

    def messages_for_web1(count):
        return wait_until(lambda: (lambda m: m if len(m) >= count else None)(endpoint_msgs(felix1, "web1")),
                          what=f"{count} messages for web1")

    # Written in place, not renamed: read once the writer closes it, whole.
    path.write_text(endpoint_file_text(ep))
    messages_for_web1(1)
    # Replaced by rename, with a new MAC.
    write_file_atomically(str(path), endpoint_file_text(Endpoint("web1", ("192.168.1.21",), "aa:bb:cc:00:00:22",
                                                                 "h1", ("web",))))
    messages_for_web1(2)
    # Edited in place: disabled, and a second address.
    path.write_text(endpoint_file_text(Endpoint("web1", ("192.168.1.21", "fd00::21"), "aa:bb:cc:00:00:22", "h1",
                                                ("web",), "disabled")))
    messages_for_web1(3)
    path.unlink()
    got = messages_for_web1(4)
    # A marker written after everything: nothing more came for web1.
    write_endpoint(data_dir, "marker", "192.168.1.99", "h1")
    wait_until(lambda: endpoint_msgs(felix1, "marker"), what="the marker")
    assert endpoint_msgs(felix1, "web1") == got
    assert exact(got) == [
        created_or_updated("ENDPOINTCREATED", "web1", "192.168.1.21", "aa:bb:cc:00:00:21"),
        created_or_updated("ENDPOINTUPDATED", "web1", "192.168.1.21", "aa:bb:cc:00:00:22"),
        created_or_updated("ENDPOINTUPDATED", "web1", "192.168.1.21,fd00::21", "aa:bb:cc:00:00:22", "disabled"),
        {"type": "ENDPOINTDESTROYED", "endpoint_id": "web1"},
    ]
    assert plugin.count("web1.txt") == 4  # one log line per change


def test_conflict_resolved_by_deleting_the_owner(data_dir, start_plugin, peers, wait_until):
    felix1 = peers.rep(felix_address("h1"), host="h1")
    write_endpoint(data_dir, "owner", "192.168.1.30", "h1", mac="aa:bb:cc:00:00:30", name="owner")
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)
    wait_until(lambda: endpoint_msgs(felix1, "owner"), what="the owner")
    write_endpoint(data_dir, "claimant", "192.168.1.30", "h1", mac="aa:bb:cc:00:00:31", name="claimant")
    wait_until(lambda: plugin.count("claimant.txt: [endpoint 192_168_1_30]: address 192.168.1.30 is already used by "
                                    "endpoint owner in owner.txt; skipped") == 1, what="the conflict reported")
    (data_dir / "owner.txt").unlink()
    got = wait_until(lambda: (lambda m: m if len(m) >= 3 else None)(
        [m for m in felix1.snapshot() if isinstance(m, dict) and m.get("endpoint_id") in ("owner", "claimant")]),
        what="the owner destroyed and the claimant created")
    assert exact(got) == [
        created_or_updated("ENDPOINTCREATED", "owner", "192.168.1.30", "aa:bb:cc:00:00:30"),
        {"type": "ENDPOINTDESTROYED", "endpoint_id": "owner"},
        created_or_updated("ENDPOINTCREATED", "claimant", "192.168.1.30", "aa:bb:cc:00:00:31"),
    ]
    assert plugin.count("already used") == 1


def test_polling_when_asked_still_delivers_changes(data_dir, start_plugin, peers, wait_until):
    felix1 = peers.rep(felix_address("h1"), host="h1")
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST, "--watch", "poll")
    assert plugin.count(f"data directory {data_dir}: polling every 50 ms (--watch poll)") == 1
    (data_dir / "e.txt").write_text(endpoint_file_text(Endpoint("e", ("192.168.1.40",), "aa:bb:cc:00:00:40", "h1",
                                                                ("web",))))
    got = wait_until(lambda: endpoint_msgs(felix1, "e"), what="the endpoint")
    assert exact(got) == [created_or_updated("ENDPOINTCREATED", "e", "192.168.1.40", "aa:bb:cc:00:00:40")]


# --- who may talk to the endpoint API, and what it survives (issue 9) -----------

def test_only_the_cluster_hosts_felixes_are_answered(data_dir, start_plugin, peers, intruders, wait_until):
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)
    heartbeat = messages.make(messages.HEARTBEAT)
    for host in ("h1", "h2"):
        assert peers.req(EP_REQ, host=host).request(heartbeat)["rc"] == "SUCCESS"
    # Refusals are logged (a refused client retries every 0.1 s: the log is
    # rate-limited, so look at the first of each kind).
    assert peers.req(EP_REQ, host="h1", keys=None, timeout=1.0).request(heartbeat) is None
    wait_until(lambda: "refused a connection on tcp://127.0.1.1:9901 at the handshake: the peer does not use CURVE"
               in plugin.log(), what="the plain client's refusal logged")
    assert peers.req(EP_REQ, role="acl-manager", timeout=1.0).request(heartbeat) is None
    wait_until(lambda: "refused a connection from 127.0.0.1 on plugin-ep-9901: the key of role 'acl-manager' is "
               "not admitted there" in plugin.log(), what="the wrong role's refusal logged")
    refused = intruders.ask(EP_REQ, heartbeat, rightful="felix/h1")
    assert refused == {label: None for label in refused}, refused
    assert set(refused) >= {"role felix", "role felix/h9", "role acl-manager", "another secret", "no CURVE"}
    assert "similar lines suppressed" in plugin.log() or plugin.count("refused a connection") <= 10
    # A host the cluster file gains is admitted at once: its keys follow from the secret.
    with open(data_dir / "felix.txt", "a") as handle:
        handle.write("[felix h9]\nip=127.0.1.9\nhost=h9\n")
    wait_until(lambda: "host h9: talking to its Felix" in plugin.log(), what="h9 added")
    assert peers.req(EP_REQ, host="h9").request(heartbeat)["rc"] == "SUCCESS"


def test_a_felix_cannot_resync_for_another_host(data_dir, start_plugin, peers, wait_until):
    write_endpoint(data_dir, "ep1", "192.168.1.1", "h1")
    felix1 = peers.rep(felix_address("h1"), host="h1")
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)
    wait_until(lambda: endpoint_msgs(felix1, "ep1"), what="h1's endpoint")
    forged = resync(peers.req(EP_REQ, host="h2"), "h1", "forged")
    assert forged["type"] == "RESYNCSTATE" and forged["rc"] == "INVALID"
    assert forged["message"] == "a RESYNCSTATE for host 'h1' must come with that host's key, not 'felix/h2''s"
    assert plugin.count("RESYNCSTATE 'forged' refused") == 1
    # The rightful one still works, and only it reaches h1's Felix.
    assert resync(peers.req(EP_REQ, host="h1"), "h1", "mine")["endpoint_count"] == 1
    wait_until(lambda: [m for m in felix1.of_type("ENDPOINTCREATED") if m.get("resync_id") == "mine"],
               what="the rightful resync")
    assert not [m for m in felix1.of_type("ENDPOINTCREATED") if m.get("resync_id") == "forged"]


def test_the_plugin_talks_only_to_the_felix_holding_that_hosts_key(data_dir, start_plugin, peers, wait_until):
    impostor = peers.rep(felix_address("h1"), role="felix/h2")  # h1's address, h2's key
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST)
    write_endpoint(data_dir, "ep1", "192.168.1.1", "h1")
    wait_until(lambda: plugin.count("endpoint ep1 (192_168_1_1.txt): created") == 1, what="ep1 seen")
    impostor.close()
    felix1 = peers.rep(felix_address("h1"), host="h1")
    wait_until(lambda: endpoint_msgs(felix1, "ep1"), what="ep1 at the real Felix")
    assert impostor.snapshot() == []


def test_a_barrage_of_bad_requests_leaves_the_endpoint_api_serving(data_dir, start_plugin, peers, barrage,
                                                                    wait_until):
    limit = 262144
    felix1 = peers.rep(felix_address("h1"), host="h1",
                       responder=lambda msg: fuzzdata.encode(fuzzdata.deep_list()) if msg.get("type") ==
                       "ENDPOINTCREATED" and msg.get("endpoint_id") == "garbled" else success_reply_for(msg))
    plugin = start_plugin("ep", data_dir, PLUGIN, *FAST, "--max-message-bytes", str(limit))
    valid = messages.make(messages.RESYNCSTATE, resync_id="r-1", hostname="h1")
    payloads = fuzzdata.barrage(valid, messages.make(messages.HEARTBEAT), oversize=limit)
    payloads += [[b"one", b"two"], [b""] * 50, [fuzzdata.deep_list().encode()] * 2]
    barrage(peers.req(EP_REQ, host="h1"), payloads, limit)
    # Unauthenticated senders of the same get nothing at all.
    for keys in (None, testkeys.OTHER_KEYS):
        stranger = peers.req(EP_REQ, host="h1", keys=keys, timeout=1.0)
        assert [stranger.request(payload) for payload in payloads[:2]] == [None, None]
    # A Felix answering garbage does not stop the plugin either.
    write_endpoint(data_dir, "garbled", "192.168.1.7", "h1")
    wait_until(lambda: plugin.count("bad reply from"), what="the garbled reply to be noticed")
    # Still answering correctly, and still passing changes on.
    assert resync(peers.req(EP_REQ, host="h1"), "h1", "after")["endpoint_count"] == 1
    write_endpoint(data_dir, "good", "192.168.1.8", "h1")
    wait_until(lambda: endpoint_msgs(felix1, "good"), what="a good change, end to end")
    assert plugin.alive and "carrying on" not in plugin.log()


def success_reply_for(msg):
    return messages.reply(msg.get("type", "UNKNOWN") if isinstance(msg, dict) else "UNKNOWN")
