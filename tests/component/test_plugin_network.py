"""The real network API process against a fake ACL manager on loopback.

The plugin binds 127.0.1.1:9903 (REP) and :9904 (PUB); the test plays the
ACL manager: a REQ for GETGROUPS and HEARTBEAT, a SUB for the frames.
"""

import json

import pytest
import zmq

import fuzzdata
import testkeys

from calico.common import messages
from calico.common.datafiles import Endpoint, endpoint_file_text, write_file_atomically

PLUGIN = "127.0.1.1"
NET_REQ = f"tcp://{PLUGIN}:9903"
NET_PUB = f"tcp://{PLUGIN}:9904"
FAST = ["--keepalive-ms", "200", "--poll-interval-ms", "50"]
CLUSTER = "[felix h1]\nip=127.0.1.2\nhost=h1\n\n[felix h2]\nip=127.0.1.3\nhost=h2\n"

SEED_RULES = {
    "inbound": [{"group": "web", "cidr": None, "protocol": None, "port": None}],
    "outbound": [{"group": "web", "cidr": None, "protocol": None, "port": None},
                 {"group": None, "cidr": "0.0.0.0/0", "protocol": None, "port": None},
                 {"group": None, "cidr": "::/0", "protocol": None, "port": None}],
    "inbound_default": "deny",
    "outbound_default": "deny",
}


def write_endpoint(data_dir, eid, ip, host="h1", groups=("web",), mac="aa:bb:cc:00:00:01"):
    ep = Endpoint(eid, tuple(ip.split(",")), mac, host, tuple(groups))
    write_file_atomically(str(data_dir / f"{eid}.txt"), endpoint_file_text(ep))


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


@pytest.fixture
def acl_manager(peers, wait_until):
    """A SUB that is provably subscribed (it has heard a heartbeat)."""
    def connect():
        sub = peers.sub(NET_PUB, [messages.TOPIC_GROUPS, messages.TOPIC_NETWORK_HEARTBEAT])
        wait_until(lambda: sub.of_topic(messages.TOPIC_NETWORK_HEARTBEAT), what="network heartbeat")
        return sub, peers.req(NET_REQ)
    return connect


def updates(sub, group):
    return [body for body in sub.of_topic(messages.TOPIC_GROUPS) if body["group"] == group]


def without_issued(msg):
    assert isinstance(msg["issued"], int)
    return {k: v for k, v in msg.items() if k != "issued"}


def test_getgroups_then_every_group_published_with_exact_frames(data_dir, start_plugin, acl_manager, wait_until):
    write_endpoint(data_dir, "a", "192.168.1.1,fd00::1", groups=("web", "db"))
    write_endpoint(data_dir, "b", "192.168.1.2", host="h2", groups=("web",))
    with open(data_dir / "felix.txt", "a") as handle:
        handle.write("\n[group db]\ninbound = group:web tcp 5432\noutbound = 10.0.0.0/8 udp 53\n")
    start_plugin("network", data_dir, PLUGIN, *FAST)
    sub, req = acl_manager()

    assert req.request(messages.make(messages.GETGROUPS)) == {"type": "GETGROUPS", "rc": "SUCCESS", "message": ""}
    wait_until(lambda: updates(sub, "web") and updates(sub, "db"), what="both groups")
    assert without_issued(updates(sub, "web")[-1]) == {
        "type": "GROUPUPDATE", "group": "web",
        "members": {"a": ["192.168.1.1", "fd00::1"], "b": ["192.168.1.2"]},
        "rules": SEED_RULES,
    }
    assert without_issued(updates(sub, "db")[-1]) == {
        "type": "GROUPUPDATE", "group": "db",
        "members": {"a": ["192.168.1.1", "fd00::1"]},
        "rules": {"inbound": [{"group": "web", "cidr": None, "protocol": "tcp", "port": 5432}],
                  "outbound": [{"group": None, "cidr": "10.0.0.0/8", "protocol": "udp", "port": 53}],
                  "inbound_default": "deny", "outbound_default": "deny"},
    }


def test_raw_frames_are_topic_then_json(data_dir, start_plugin, peers, wait_until):
    """The two frames exactly: a plain ZeroMQ SUB, no helper decoding."""
    import zmq
    write_endpoint(data_dir, "a", "192.168.1.1")
    start_plugin("network", data_dir, PLUGIN, *FAST)
    sub = peers.context.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        testkeys.as_client(sub, NET_PUB)
        sub.connect(NET_PUB)
        req = peers.req(NET_REQ)
        frames = None
        while frames is None:
            assert sub.poll(10000), "nothing published"
            got = sub.recv_multipart()
            if got[0] == b"networkheartbeat":
                assert len(got) == 2 and json.loads(got[1])["type"] == "HEARTBEAT"
                req.request(messages.make(messages.GETGROUPS))
            elif got[0] == b"groups":
                frames = got
        assert len(frames) == 2 and json.loads(frames[1])["group"] == "web"
    finally:
        sub.close(linger=0)


def test_group_changes_publish_only_changed_groups(data_dir, start_plugin, acl_manager, wait_until):
    write_endpoint(data_dir, "a", "192.168.1.1", groups=("web",))
    write_endpoint(data_dir, "b", "192.168.1.2", groups=("web", "ops"))
    start_plugin("network", data_dir, PLUGIN, *FAST)
    sub, _ = acl_manager()

    # A new member: only web changes.
    write_endpoint(data_dir, "c", "192.168.1.3", groups=("web",))
    wait_until(lambda: updates(sub, "web"), what="web update")
    assert updates(sub, "web")[-1]["members"] == {"a": ["192.168.1.1"], "b": ["192.168.1.2"],
                                                  "c": ["192.168.1.3"]}
    assert not updates(sub, "ops")

    # b leaves ops, its only member: ops is published once with no members.
    write_endpoint(data_dir, "b", "192.168.1.2", groups=("web",))
    wait_until(lambda: updates(sub, "ops"), what="ops deleted")
    assert updates(sub, "ops")[-1]["members"] == {}
    # An unchanged rewrite of a file says nothing; a rule change says only that.
    write_endpoint(data_dir, "a", "192.168.1.1", groups=("web",))
    with open(data_dir / "felix.txt", "a") as handle:
        handle.write("\n[group web]\ninbound = 0.0.0.0/0 tcp 80\n")
    wait_until(lambda: updates(sub, "web")[-1]["rules"]["inbound"] != SEED_RULES["inbound"], what="rules change")
    web = updates(sub, "web")
    assert len(web) == 2
    assert web[-1]["rules"]["inbound"] == [{"group": None, "cidr": "0.0.0.0/0", "protocol": "tcp", "port": 80}]
    assert web[-1]["rules"]["outbound"] == SEED_RULES["outbound"]  # outbound not given: the seed's
    assert len(updates(sub, "ops")) == 1


def test_bad_rule_logged_once_and_group_keeps_default(data_dir, start_plugin, acl_manager, wait_until):
    with open(data_dir / "felix.txt", "a") as handle:
        handle.write("\n[group web]\ninbound = 0.0.0.0/0 tcp 99999\n")
    write_endpoint(data_dir, "a", "192.168.1.1")
    plugin = start_plugin("network", data_dir, PLUGIN, *FAST)
    sub, req = acl_manager()
    req.request(messages.make(messages.GETGROUPS))
    wait_until(lambda: updates(sub, "web"), what="web")
    assert updates(sub, "web")[-1]["rules"] == SEED_RULES
    # Another change rebuilds the state; the fault is not logged again.
    write_endpoint(data_dir, "b", "192.168.1.2")
    wait_until(lambda: "b" in updates(sub, "web")[-1]["members"], what="b joins web")
    assert plugin.count("felix.txt: [group web]") == 1


def test_heartbeats_and_malformed_requests(data_dir, start_plugin, acl_manager):
    plugin = start_plugin("network", data_dir, PLUGIN, *FAST)
    sub, req = acl_manager()
    assert req.request(messages.make(messages.HEARTBEAT)) == {"type": "HEARTBEAT", "rc": "SUCCESS", "message": ""}
    for raw, want_type, reason in [
        (b"\xff\xfe", "UNKNOWN", "not JSON"),
        (json.dumps({"no": "type"}).encode(), "UNKNOWN", "type"),
        (json.dumps({"type": "RESYNCSTATE", "resync_id": "x", "hostname": "h"}).encode(), "RESYNCSTATE",
         "unexpected"),
        (json.dumps({"type": "GETGROUPS", "issued": "yesterday"}).encode(), "GETGROUPS", "issued"),
    ]:
        reply = req.request(raw)
        assert reply["type"] == want_type and reply["rc"] == "INVALID" and reason in reply["message"], reply
        assert req.request(messages.make(messages.HEARTBEAT))["rc"] == "SUCCESS"
    assert plugin.alive and plugin.count("bad request") == 4


def exact(group, members, rules=SEED_RULES):
    return {"type": "GROUPUPDATE", "group": group, "members": members, "rules": rules}


def test_every_kind_of_file_change_reaches_the_acl_manager_as_the_exact_group(data_dir, start_plugin, acl_manager,
                                                                              wait_until):
    start_plugin("network", data_dir, PLUGIN, *FAST)
    sub, _ = acl_manager()

    def nth_update(group, n):
        return wait_until(lambda: (lambda u: u if len(u) >= n else None)(updates(sub, group)),
                          what=f"update {n} of {group}")[n - 1]

    write_endpoint(data_dir, "a", "192.168.1.1")                                     # renamed into place
    assert without_issued(nth_update("web", 1)) == exact("web", {"a": ["192.168.1.1"]})
    (data_dir / "b.txt").write_text(endpoint_file_text(Endpoint("b", ("192.168.1.2",), "aa:bb:cc:00:00:02", "h1",
                                                                ("web",))))          # written in place
    assert without_issued(nth_update("web", 2)) == exact("web", {"a": ["192.168.1.1"], "b": ["192.168.1.2"]})
    (data_dir / "b.txt").write_text(endpoint_file_text(Endpoint("b", ("192.168.1.3",), "aa:bb:cc:00:00:02", "h1",
                                                                ("web",))))          # edited in place
    assert without_issued(nth_update("web", 3)) == exact("web", {"a": ["192.168.1.1"], "b": ["192.168.1.3"]})
    write_endpoint(data_dir, "a", "192.168.1.1", groups=("db",))                     # replaced by rename
    assert without_issued(nth_update("web", 4)) == exact("web", {"b": ["192.168.1.3"]})
    db = dict(SEED_RULES, inbound=[dict(r, group="db") for r in SEED_RULES["inbound"]],
              outbound=[dict(r, group="db" if r["group"] else None) for r in SEED_RULES["outbound"]])
    assert without_issued(nth_update("db", 1)) == exact("db", {"a": ["192.168.1.1"]}, db)
    (data_dir / "b.txt").unlink()                                                    # deleted
    assert without_issued(nth_update("web", 5)) == exact("web", {})
    # Nothing more for web after a later change elsewhere.
    write_endpoint(data_dir, "c", "192.168.1.4", groups=("db",))
    nth_update("db", 2)
    assert len(updates(sub, "web")) == 5


def test_conflict_resolved_by_deleting_the_owner_reaches_the_acl_manager(data_dir, start_plugin, acl_manager,
                                                                        wait_until):
    write_endpoint(data_dir, "owner", "192.168.1.1", groups=("web",))
    plugin = start_plugin("network", data_dir, PLUGIN, *FAST)
    sub, req = acl_manager()
    write_endpoint(data_dir, "claimant", "192.168.1.1", groups=("ops",))
    wait_until(lambda: "claimant.txt: [endpoint 192_168_1_1]: address 192.168.1.1 is already used" in plugin.log(),
               what="the conflict reported")
    (data_dir / "owner.txt").unlink()
    ops = wait_until(lambda: updates(sub, "ops"), what="ops published")
    web = wait_until(lambda: updates(sub, "web"), what="web deleted")
    assert [without_issued(m) for m in web] == [exact("web", {})]
    ops_rules = dict(SEED_RULES, inbound=[dict(r, group="ops") for r in SEED_RULES["inbound"]],
                     outbound=[dict(r, group="ops" if r["group"] else None) for r in SEED_RULES["outbound"]])
    assert [without_issued(m) for m in ops] == [exact("ops", {"claimant": ["192.168.1.1"]}, ops_rules)]


# --- who may talk to the network API, and what it survives (issue 9) ---------

def test_only_the_acl_manager_gets_answers_and_publications(data_dir, start_plugin, acl_manager, intruders,
                                                             wait_until):
    write_endpoint(data_dir, "a", "192.168.1.1")
    plugin = start_plugin("network", data_dir, PLUGIN, *FAST)
    topics = [messages.TOPIC_GROUPS, messages.TOPIC_NETWORK_HEARTBEAT]
    spies = intruders.subscribe(NET_PUB, topics, rightful="acl-manager")
    refused = intruders.ask(NET_REQ, messages.make(messages.GETGROUPS), rightful="acl-manager")
    assert refused == {label: None for label in refused}, refused
    sub, req = acl_manager()
    assert req.request(messages.make(messages.GETGROUPS))["rc"] == "SUCCESS"
    wait_until(lambda: updates(sub, "web"), what="the group, published to the ACL manager")
    # Publications are ordered: by the time the rightful subscriber, connected
    # last, has three more heartbeats, a spy would long have had the group.
    seen = len(sub.of_topic(messages.TOPIC_NETWORK_HEARTBEAT))
    wait_until(lambda: len(sub.of_topic(messages.TOPIC_NETWORK_HEARTBEAT)) >= seen + 3, what="more heartbeats")
    assert {label: spy.snapshot() for label, spy in spies.items()} == {label: [] for label in spies}
    assert "refused a connection" in plugin.log()


def test_a_barrage_of_bad_requests_leaves_the_network_api_serving(data_dir, start_plugin, acl_manager, peers,
                                                                  barrage, wait_until):
    limit = 262144
    write_endpoint(data_dir, "a", "192.168.1.1")
    plugin = start_plugin("network", data_dir, PLUGIN, *FAST, "--max-message-bytes", str(limit))
    sub, req = acl_manager()
    payloads = fuzzdata.barrage(messages.make(messages.GETGROUPS), oversize=limit)
    barrage(peers.req(NET_REQ), payloads + [[b"a", b"b"]], limit)
    # What a subscriber may send a PUB socket (subscriptions) is bounded too.
    xsub = peers.socket(zmq.XSUB, NET_PUB)
    # (Neither empty frames nor huge subscriptions: libzmq 4.3.4's XSUB
    # itself crashes sending those, in its own subscription trie.  A PUB
    # takes a 10 MB subscription from a hand-made ZMTP peer in its stride.)
    for frame in [f for f in fuzzdata.raw_payloads(count=50) if f] + [b"\x01" + b"x" * 10_000]:
        xsub.send(frame)
    xsub.close()
    # Still answering and publishing what changes.
    assert req.request(messages.make(messages.HEARTBEAT)) == {"type": "HEARTBEAT", "rc": "SUCCESS", "message": ""}
    write_endpoint(data_dir, "b", "192.168.1.2", groups=("db",))
    wait_until(lambda: updates(sub, "db"), what="a good change, end to end")
    assert updates(sub, "db")[-1]["members"] == {"b": ["192.168.1.2"]}
    assert plugin.alive and "carrying on" not in plugin.log()
