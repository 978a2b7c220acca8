"""The real calico-acl-manager process, driven over ZeroMQ as a plugin and a Felix would.

Addresses (this file's range, 127.0.2.0/24): the fake plugin binds
127.0.2.1:9903 (REP) and :9904 (PUB); the ACL manager binds 127.0.2.2:9905
(ROUTER) and :9906 (PUB).  The fake Felix is the shared ``peers`` fixture
(tests/component/conftest.py); the fake plugin is here because it must
answer GETGROUPS *and then* publish from the same thread, which the shared
REP and PUB peers cannot do together.

Publications are ordered per subscriber, so "nothing else was published"
is checked with a barrier: ask GETACLSTATE for a known endpoint and wait for
its ACLUPDATE; anything published before it has arrived by then.  Group
rules reach Felix as references to the group; who is in a group comes on
the group's own topic (``members`` below).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

import pytest
import zmq

import fuzzdata
import testkeys
from binding import BIND_WAIT_SECS, bind_when_free
from calico.common import messages
from calico.common.datafiles import default_group_rules
from calico.common.rules import parse_rule_list

PLUGIN_HOST = "127.0.2.1"
ACL_HOST = "127.0.2.2"
ACL_REQ = f"tcp://{ACL_HOST}:{messages.PORT_ACL_REQ}"
ACL_PUB = f"tcp://{ACL_HOST}:{messages.PORT_ACL_PUB}"
TIMEOUT_MS = 1000
KEEPALIVE_MS = 200


def rules_wire(inbound=None, outbound=None, group=None):
    if inbound is None and outbound is None:
        return default_group_rules(group).to_wire()
    return {"inbound": [r.to_wire() for r in parse_rule_list(inbound or "")],
            "outbound": [r.to_wire() for r in parse_rule_list(outbound or "")],
            "inbound_default": "deny", "outbound_default": "deny"}


def group_update(name, members, inbound=None, outbound=None):
    return messages.make(messages.GROUPUPDATE, group=name, members=members,
                         rules=rules_wire(inbound, outbound, name))


def acls(v4_in=(), v4_out=(), v6_in=(), v6_out=()):
    def rules(texts):
        return [parse_rule_list(t)[0].to_wire() for t in texts]

    def family(inbound, outbound):
        return {"inbound": rules(inbound), "outbound": rules(outbound),
                "inbound_default": "deny", "outbound_default": "deny"}
    return {"v4": family(v4_in, v4_out), "v6": family(v6_in, v6_out)}


class FakePlugin:
    """The plugin's network API: REP 9903 and PUB 9904, owned by one thread.

    Answers every request with rc SUCCESS; after a GETGROUPS reply it
    publishes every group it holds, as the real plugin does.  Publishes
    ``networkheartbeat`` every 0.2 s.  ``lose_first_burst`` plays a PUB
    that takes the subscription in late (ZeroMQ's slow joiner): nothing is
    published until 0.3 s after the first GETGROUPS is answered, and that
    GETGROUPS' groups are never seen.  The test changes groups through
    ``set_group`` (stored and published) from its own thread.
    """

    def __init__(self, groups=None, host=PLUGIN_HOST, heartbeat=True, lose_first_burst=False):
        self.heartbeat = heartbeat
        self.lose_first_burst = lose_first_burst
        self.groups = {g["group"]: g for g in (groups or [])}
        self.received: list = []
        self.commands: queue.Queue = queue.Queue()
        self.context = zmq.Context()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error = None
        self.host = host
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(BIND_WAIT_SECS + 5) and self.error is None, f"fake plugin did not bind: {self.error}"

    def _run(self):
        rep = self.context.socket(zmq.REP)
        pub = self.context.socket(zmq.PUB)
        rep_address = f"tcp://{self.host}:{messages.PORT_NET_REQ}"
        pub_address = f"tcp://{self.host}:{messages.PORT_NET_PUB}"
        pub.setsockopt(zmq.SNDHWM, 100_000)  # as the real plugin's: a barrage must not be dropped
        for sock, address in ((rep, rep_address), (pub, pub_address)):
            sock.setsockopt(zmq.LINGER, 0)
            testkeys.as_server(sock, address)
        try:
            bind_when_free(rep, rep_address)
            bind_when_free(pub, pub_address)
        except zmq.ZMQError as exc:
            self.error = exc
            rep.close(linger=0)
            pub.close(linger=0)
            self._ready.set()
            return
        self._ready.set()
        next_heartbeat = float("inf") if self.lose_first_burst else 0.0
        try:
            while not self._stop.is_set():
                if rep.poll(10):
                    raw = rep.recv()
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        msg = raw
                    self.received.append(msg)
                    msg_type = msg.get("type", "UNKNOWN") if isinstance(msg, dict) else "UNKNOWN"
                    rep.send(messages.encode(messages.reply(msg_type)))
                    if msg_type == messages.GETGROUPS and self.lose_first_burst:
                        self.lose_first_burst = False
                        next_heartbeat = time.monotonic() + 0.3
                    elif msg_type == messages.GETGROUPS:
                        for group in self.groups.values():
                            pub.send_multipart([messages.TOPIC_GROUPS, messages.encode(group)])
                while not self.commands.empty():
                    kind, payload = self.commands.get()
                    if kind == "group":
                        if payload["members"]:
                            self.groups[payload["group"]] = payload
                        else:
                            self.groups.pop(payload["group"], None)
                        pub.send_multipart([messages.TOPIC_GROUPS, messages.encode(payload)])
                    else:
                        pub.send_multipart(payload)
                if self.heartbeat and time.monotonic() >= next_heartbeat:
                    pub.send_multipart([messages.TOPIC_NETWORK_HEARTBEAT,
                                        messages.encode(messages.make(messages.HEARTBEAT))])
                    next_heartbeat = time.monotonic() + 0.2
        finally:
            rep.close(linger=0)
            pub.close(linger=0)

    def set_group(self, name, members, inbound=None, outbound=None):
        self.commands.put(("group", group_update(name, members, inbound, outbound)))

    def publish_raw(self, frames):
        self.commands.put(("raw", frames))

    def of_type(self, msg_type):
        return [m for m in list(self.received) if isinstance(m, dict) and m.get("type") == msg_type]

    def close(self):
        self._stop.set()
        self.thread.join(5)
        self.context.term()


@pytest.fixture
def fake_plugin():
    made = []

    def start(groups=None, heartbeat=True, lose_first_burst=False):
        plugin = FakePlugin(groups, heartbeat=heartbeat, lose_first_burst=lose_first_burst)
        made.append(plugin)
        return plugin

    yield start
    for plugin in made:
        if plugin.thread.is_alive():
            plugin.close()


@pytest.fixture
def acl_manager(spawn, tmp_path, wait_until, cluster_secret_file):
    """Start the real process: addresses and the test secret from the config
    file, timings from flags."""

    def start(security=None, extra=""):
        config = tmp_path / "acl_manager.cfg"
        config.write_text(f"[global]\nPluginAddress = {PLUGIN_HOST}\nLocalAddress = {ACL_HOST}\n"
                          "[log]\nLogSeverityFile = DEBUG\n"
                          + (security or f"[security]\nClusterSecretFile = {cluster_secret_file}\n") + extra)
        log_file = str(tmp_path / "acl_manager.log")
        manager = spawn(["-m", "calico.acl_manager.main", "--config-file", str(config), "--log-file", log_file,
                         "--connection-timeout-ms", str(TIMEOUT_MS), "--keepalive-ms", str(KEEPALIVE_MS)],
                        "acl_manager", log_file)
        wait_until(lambda: "serving the ACL API" in manager.log() or not manager.alive,
                   what="the ACL manager to start")
        assert manager.alive, manager.output()
        return manager

    return start


@pytest.fixture
def felix(peers, wait_until):
    """A fake Felix: SUB to the ACL PUB (given topics + aclheartbeat), REQ to the ROUTER.

    Returns once a heartbeat has arrived, which proves the subscriptions are live."""

    def start(endpoints):
        sub = peers.sub(ACL_PUB, [ep.encode() for ep in endpoints] + [messages.TOPIC_ACL_HEARTBEAT])
        req = peers.req(ACL_REQ)
        wait_until(lambda: sub.of_topic(messages.TOPIC_ACL_HEARTBEAT), what="an aclheartbeat")
        return sub, req

    return start


def updates(sub, endpoint_id):
    return sub.of_topic(endpoint_id.encode())


def members(sub, group):
    return sub.of_topic(messages.members_topic(group))


def barrier(sub, req, wait_until, endpoint_id):
    """Ask for a known endpoint's ACLs and wait for them: everything published earlier has arrived."""
    before = len(updates(sub, endpoint_id))
    assert req.request(messages.make(messages.GETACLSTATE, endpoint_id=endpoint_id))["rc"] == "SUCCESS"
    wait_until(lambda: len(updates(sub, endpoint_id)) > before, what=f"barrier ACLUPDATE for {endpoint_id}")


WEB = {"a": ["192.168.2.1", "fd00::1"], "b": ["192.168.2.2"]}
OPS = {"o": ["10.0.0.9"]}


def test_getgroups_at_start_then_aclupdates_with_exact_content(fake_plugin, acl_manager, felix, peers, wait_until):
    plugin = fake_plugin()
    manager = acl_manager()
    first = wait_until(lambda: plugin.received, what="the first request to the plugin")[0]
    assert first["type"] == "GETGROUPS" and set(first) == {"type", "issued"}
    assert isinstance(first["issued"], int) and abs(first["issued"] - time.time() * 1000) < 60_000

    sub, req = felix(["a", "b", "o"])
    plugin.set_group("ops", OPS, inbound="group:ops", outbound="0.0.0.0/0")
    plugin.set_group("web", WEB, inbound="group:web; group:ops tcp 22", outbound="group:web; 0.0.0.0/0; ::/0")
    msg = wait_until(lambda: updates(sub, "a"), what="ACLUPDATE for a")[-1]
    assert set(msg) == {"type", "issued", "acls"} and msg["type"] == "ACLUPDATE"
    # Group rules stay references to the group, in both families.
    assert msg["acls"] == acls(
        v4_in=["group:ops tcp 22", "group:web"],
        v4_out=["0.0.0.0/0", "group:web"],
        v6_in=["group:ops tcp 22", "group:web"],
        v6_out=["::/0", "group:web"],
    )
    assert wait_until(lambda: updates(sub, "b"))[-1]["acls"] == msg["acls"]
    assert wait_until(lambda: updates(sub, "o"))[-1]["acls"] == acls(v4_in=["group:ops"], v4_out=["0.0.0.0/0"],
                                                                      v6_in=["group:ops"])
    # Who is in a group comes once, on the group's topic, in answer to the subscription.
    msub = peers.sub(ACL_PUB, [messages.members_topic("web"), messages.members_topic("ops")])
    web = wait_until(lambda: members(msub, "web"), what="GROUPMEMBERS for web")[-1]
    assert set(web) == {"type", "issued", "group", "epoch", "seq", "addrs"}
    assert (web["type"], web["group"], web["seq"], web["addrs"]) == (
        "GROUPMEMBERS", "web", 1, ["192.168.2.1", "192.168.2.2", "fd00::1"])
    ops = wait_until(lambda: members(msub, "ops"), what="GROUPMEMBERS for ops")[-1]
    assert (ops["type"], ops["seq"], ops["addrs"], ops["epoch"]) == ("GROUPMEMBERS", 1, ["10.0.0.9"], web["epoch"])
    assert manager.alive


def test_getaclstate_replies_and_publishes_known_endpoints_only(fake_plugin, acl_manager, felix, wait_until):
    fake_plugin([group_update("web", WEB)])
    manager = acl_manager()
    sub, req = felix(["a", "zz"])
    wait_until(lambda: "group web: 2 members" in manager.log(), what="the group to arrive")
    count = len(updates(sub, "a"))

    reply = req.request(messages.make(messages.GETACLSTATE, endpoint_id="zz"))
    assert reply == {"type": "GETACLSTATE", "rc": "SUCCESS", "message": "", "endpoint_id": "zz"}
    reply = req.request(messages.make(messages.GETACLSTATE, endpoint_id="a"))
    assert reply == {"type": "GETACLSTATE", "rc": "SUCCESS", "message": "", "endpoint_id": "a"}
    wait_until(lambda: len(updates(sub, "a")) == count + 1, what="the ACLUPDATE answering GETACLSTATE")
    assert updates(sub, "a")[-1]["acls"]["v4"]["inbound"] == [
        {"group": "web", "cidr": None, "protocol": None, "port": None}]
    assert updates(sub, "zz") == []  # published nothing for an endpoint no group names


def test_a_subscription_alone_brings_the_current_state(fake_plugin, acl_manager, peers, wait_until):
    """The slow joiner has no race to lose: the XPUB answers each new
    subscription, so a Felix subscribing late (here: long after the
    group arrived) gets the endpoint's ACLs and the group's members
    without asking."""
    fake_plugin([group_update("web", WEB)])
    manager = acl_manager()
    wait_until(lambda: "group web: 2 members" in manager.log(), what="the group to arrive")
    late = peers.sub(ACL_PUB, [b"b", messages.members_topic("web"), messages.members_topic("nosuch")])
    assert wait_until(lambda: updates(late, "b"), what="b's ACLs")[-1]["acls"] == acls(
        v4_in=["group:web"], v4_out=["0.0.0.0/0", "group:web"], v6_in=["group:web"], v6_out=["::/0", "group:web"])
    assert wait_until(lambda: members(late, "web"), what="web's members")[-1]["addrs"] == [
        "192.168.2.1", "192.168.2.2", "fd00::1"]
    # Asking again after a gap (GETGROUPMEMBERS) publishes the whole group again.
    req = peers.req(ACL_REQ)
    assert req.request(messages.make(messages.GETGROUPMEMBERS, group="web")) == {
        "type": "GETGROUPMEMBERS", "rc": "SUCCESS", "message": "", "group": "web"}
    wait_until(lambda: len(members(late, "web")) == 2, what="web's members again")
    assert members(late, "web")[1] == dict(members(late, "web")[0], issued=members(late, "web")[1]["issued"])
    # A group nobody names and nobody is in: nothing to say.
    assert req.request(messages.make(messages.GETGROUPMEMBERS, group="nosuch"))["rc"] == "SUCCESS"
    barrier(late, req, wait_until, "b")
    assert members(late, "nosuch") == []


def test_heartbeats_on_both_pubs_and_both_req_directions(fake_plugin, acl_manager, felix, wait_until):
    plugin = fake_plugin()
    acl_manager()
    sub, req = felix([])
    wait_until(lambda: len(sub.of_topic(messages.TOPIC_ACL_HEARTBEAT)) >= 3, what="aclheartbeats")
    beat = sub.of_topic(messages.TOPIC_ACL_HEARTBEAT)[-1]
    assert beat["type"] == "HEARTBEAT" and isinstance(beat["issued"], int)
    # The manager's REQ to the plugin keeps the line alive with HEARTBEATs.
    wait_until(lambda: len(plugin.of_type("HEARTBEAT")) >= 2, what="HEARTBEATs to the plugin")
    # Felix's HEARTBEAT is answered.
    assert req.request(messages.make(messages.HEARTBEAT)) == {"type": "HEARTBEAT", "rc": "SUCCESS", "message": ""}


def test_silent_network_heartbeat_brings_getgroups_and_keeps_groups(fake_plugin, acl_manager, felix, wait_until):
    plugin = fake_plugin([group_update("web", WEB)], heartbeat=False)
    manager = acl_manager()
    sub, req = felix(["a"])
    wait_until(lambda: len(plugin.of_type("GETGROUPS")) >= 3, what="GETGROUPS repeated while the PUB is silent")
    assert "nothing from tcp://127.0.2.1:9904 for 1.0s" in manager.log()
    barrier(sub, req, wait_until, "a")  # still known
    assert "dropped as gone (" not in manager.log()


def test_groups_published_before_the_subscription_took_effect_are_asked_for_again(fake_plugin, acl_manager,
                                                                                 felix, wait_until):
    plugin = fake_plugin([group_update("web", WEB)], lose_first_burst=True)
    manager = acl_manager()
    sub, req = felix(["a"])
    wait_until(lambda: "group web: 2 members" in manager.log(), what="the groups, asked for again")
    assert len(plugin.of_type("GETGROUPS")) >= 2
    assert "since subscribing, after the last GETGROUPS was answered" in manager.log()
    barrier(sub, req, wait_until, "a")
    assert updates(sub, "a")[-1]["acls"]["v4"]["inbound"][0]["group"] == "web"
    assert "dropped as gone (" not in manager.log()


def test_a_join_publishes_the_joiners_acls_and_one_membership_change(fake_plugin, acl_manager, felix, peers,
                                                                      wait_until):
    groups = [group_update("web", {"w1": ["192.168.2.1"], "w2": ["192.168.2.2"]}),
              group_update("db", {"d1": ["192.168.3.1"]}, inbound="group:web tcp 5432", outbound=""),
              group_update("ops", {"o1": ["192.168.4.1"]}, inbound="0.0.0.0/0 tcp 22", outbound="")]
    plugin = fake_plugin(groups)
    manager = acl_manager()
    sub, req = felix(["w1", "w2", "w3", "d1", "o1"])
    msub = peers.sub(ACL_PUB, [messages.members_topic("web")])
    wait_until(lambda: "group ops: 1 members" in manager.log(), what="the groups to arrive")
    first = wait_until(lambda: members(msub, "web"), what="web's members")[-1]
    barrier(sub, req, wait_until, "o1")
    before = {ep: len(updates(sub, ep)) for ep in ("w1", "w2", "w3", "d1", "o1")}

    plugin.set_group("web", {"w1": ["192.168.2.1"], "w2": ["192.168.2.2"], "w3": ["192.168.2.3", "fd00::3"]})
    wait_until(lambda: updates(sub, "w3"), what="w3's ACLs")
    change = wait_until(lambda: members(msub, "web")[1:], what="web's membership change")[-1]
    assert {k: v for k, v in change.items() if k != "issued"} == {
        "type": "MEMBERSUPDATE", "group": "web", "epoch": first["epoch"], "seq": first["seq"] + 1,
        "added": ["192.168.2.3", "fd00::3"], "removed": []}
    barrier(sub, req, wait_until, "o1")
    after = {ep: len(updates(sub, ep)) for ep in before}
    # Only the joiner's ACLs (the others' rules did not change) and the barrier's copy.
    assert after == dict(before, w3=1, o1=before["o1"] + 1)

    # A leave is the same: one MEMBERSUPDATE, and the leaver's empty ACLs.
    plugin.set_group("web", {"w1": ["192.168.2.1"], "w3": ["192.168.2.3", "fd00::3"]})
    wait_until(lambda: updates(sub, "w2")[-1]["acls"] == acls(), what="empty ACLs for w2")
    leave = wait_until(lambda: members(msub, "web")[2:], what="web's second change")[-1]
    assert (leave["seq"], leave["added"], leave["removed"]) == (first["seq"] + 2, [], ["192.168.2.2"])

    # The same group again publishes nothing; a changed rule set reaches its members only.
    plugin.set_group("web", {"w1": ["192.168.2.1"], "w3": ["192.168.2.3", "fd00::3"]})
    plugin.set_group("db", {"d1": ["192.168.3.1"]}, inbound="192.168.2.1 tcp 5432; group:web tcp 5432",
                     outbound="")
    wait_until(lambda: "group db: 1 members, 2 inbound" in manager.log(), what="the restated db group")
    barrier(sub, req, wait_until, "o1")
    assert updates(sub, "d1")[-1]["acls"]["v4"]["inbound"] == [
        {"group": None, "cidr": "192.168.2.1/32", "protocol": "tcp", "port": 5432},
        {"group": "web", "cidr": None, "protocol": "tcp", "port": 5432}]
    assert len(members(msub, "web")) == 3
    assert {ep: len(updates(sub, ep)) for ep in ("w1", "w3", "d1")} == {
        "w1": after["w1"], "w3": 1, "d1": after["d1"] + 1}


def test_endpoint_leaving_every_group_gets_empty_acls(fake_plugin, acl_manager, felix, wait_until):
    plugin = fake_plugin([group_update("web", WEB)])
    manager = acl_manager()
    sub, req = felix(["a", "b"])
    wait_until(lambda: "group web: 2 members" in manager.log(), what="the group")
    barrier(sub, req, wait_until, "b")
    plugin.set_group("web", {"a": WEB["a"]})
    wait_until(lambda: updates(sub, "b")[-1]["acls"] == acls(), what="empty ACLs for b")
    # Forgotten: asking again publishes nothing for b.
    count = len(updates(sub, "b"))
    assert req.request(messages.make(messages.GETACLSTATE, endpoint_id="b"))["rc"] == "SUCCESS"
    barrier(sub, req, wait_until, "a")
    assert len(updates(sub, "b")) == count
    # A group with no members is deleted: a gets empty ACLs too.
    plugin.set_group("web", {})
    wait_until(lambda: updates(sub, "a")[-1]["acls"] == acls(), what="empty ACLs for a")


def test_bad_rules_and_bad_group_updates_are_skipped(fake_plugin, acl_manager, felix, wait_until):
    plugin = fake_plugin()
    manager = acl_manager()
    sub, req = felix(["a", "c"])
    bad_rule = {"group": None, "cidr": "10.0.0.0/8", "protocol": "tcp", "port": 70000}
    update = group_update("web", {"a": ["192.168.2.1"]}, inbound="0.0.0.0/0 tcp 80", outbound="")
    update["rules"]["inbound"].insert(0, bad_rule)
    plugin.publish_raw([messages.TOPIC_GROUPS, b"{not json"])
    plugin.publish_raw([messages.TOPIC_GROUPS, messages.encode(
        group_update("bad", {"c": ["not-an-ip"]}, inbound="0.0.0.0/0", outbound=""))])
    plugin.publish_raw([messages.TOPIC_GROUPS, messages.encode(update)])
    msg = wait_until(lambda: updates(sub, "a"), what="ACLUPDATE for a")[-1]
    assert msg["acls"] == acls(v4_in=["0.0.0.0/0 tcp 80"])
    log = manager.log()
    assert log.count("group web: inbound rule") == 1 and "70000" in log
    assert "bad GROUPUPDATE" in log and "not JSON" in log and "not-an-ip" in log
    barrier(sub, req, wait_until, "a")
    assert updates(sub, "c") == []
    assert manager.alive


def test_plugin_restart_brings_getgroups_and_drops_only_groups_gone(fake_plugin, acl_manager, felix, wait_until):
    plugin = fake_plugin([group_update("web", WEB), group_update("ops", OPS)])
    manager = acl_manager()
    sub, req = felix(["a", "o"])
    wait_until(lambda: "group ops: 1 members" in manager.log() and "group web: 2 members" in manager.log(),
               what="both groups")
    plugin.close()
    # While the plugin is down the manager carries on with what it knew.
    wait_until(lambda: "lost the subscription" in manager.log(), what="the manager to notice")
    count = len(updates(sub, "o"))
    assert req.request(messages.make(messages.GETACLSTATE, endpoint_id="o"))["rc"] == "SUCCESS"
    wait_until(lambda: len(updates(sub, "o")) > count, what="ACLs for o while the plugin is down")
    assert updates(sub, "o")[-1]["acls"] == acls(v4_in=["group:ops"], v4_out=["0.0.0.0/0", "group:ops"],
                                                 v6_in=["group:ops"], v6_out=["::/0", "group:ops"])

    # Back with ops gone (deleted while the manager was not listening).
    restarted = fake_plugin([group_update("web", WEB)])
    wait_until(lambda: restarted.of_type("GETGROUPS"), what="a GETGROUPS to the restarted plugin")
    wait_until(lambda: updates(sub, "o")[-1]["acls"] == acls(), what="empty ACLs for o (group ops dropped)")
    assert "1 dropped as gone (ops)" in manager.log()
    barrier(sub, req, wait_until, "a")
    assert updates(sub, "a")[-1]["acls"]["v4"]["inbound"][0]["group"] == "web"


@pytest.mark.parametrize("frames, reply_type, reason", [
    ([b"not json"], "UNKNOWN", "not JSON"),
    ([b'{"type": "FROB"}'], "UNKNOWN", "unexpected message type 'FROB'"),
    ([b'{"type": "ENDPOINTCREATED"}'], "ENDPOINTCREATED", "unexpected message type"),
    ([b'{"type": "GETACLSTATE"}'], "GETACLSTATE", "missing field 'endpoint_id'"),
    ([b'{"type": "GETACLSTATE", "endpoint_id": "-x y"}'], "GETACLSTATE", "bad endpoint id"),
    ([b'{"type": "GETGROUPMEMBERS", "group": "web\\n"}'], "GETGROUPMEMBERS", "bad group name"),
    ([b'{"type": "GROUPMEMBERS", "group": "web"}'], "GROUPMEMBERS", "unexpected message type"),
    ([b"[1, 2]"], "UNKNOWN", "not a JSON object"),
    ([b"one", b"two"], "UNKNOWN", "want exactly one message frame"),
])
def test_malformed_requests_get_invalid_and_service_continues(fake_plugin, acl_manager, peers, frames,
                                                              reply_type, reason):
    fake_plugin()
    manager = acl_manager()
    req = peers.req(ACL_REQ)
    reply = req.request(frames)
    assert reply["type"] == reply_type and reply["rc"] == "INVALID" and reason in reply["message"]
    assert req.request(messages.make(messages.HEARTBEAT))["rc"] == "SUCCESS"
    assert manager.alive
    assert "ACL API: bad request" in manager.log() or "ACL API: request of 2 body frames" in manager.log()


def run_cli(tmp_path, config_text, *args, env_extra=None):
    config = tmp_path / "bad.cfg"
    config.write_text(config_text)
    env = {"PATH": "/usr/bin:/bin", "CALICO_CLUSTER_FILE": str(tmp_path / "absent.txt")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "calico.acl_manager.main", "--config-file", str(config),
                           "--log-file", str(tmp_path / "x.log"), *args],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("config_text, args, key", [
    ("[connection]\nConnectionTimeoutMillis = soon\n", (), "ConnectionTimeoutMillis"),
    ("[global]\nPluginAddress = 999.1.1.1\n", (), "PluginAddress"),
    ("[global]\nLocalAddress = 127.0.2.2\n", (), "PluginAddress"),   # required and unset
    ("[global]\nPluginAddress = 127.0.2.1\n", ("--keepalive-ms", "-5"), "--keepalive-ms"),
])
def test_bad_config_is_one_line_naming_the_key_and_exit_2(tmp_path, config_text, args, key):
    result = run_cli(tmp_path, config_text, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr


# --- with the real plugin (network API) instead of the fake -------------------

def write_endpoint(data_dir, eid, ip, groups):
    from calico.common.datafiles import Endpoint, endpoint_file_text, write_file_atomically
    endpoint = Endpoint(eid, tuple(ip.split(",")), "aa:bb:cc:00:02:01", "h1", tuple(groups))
    write_file_atomically(str(data_dir / f"{eid}.txt"), endpoint_file_text(endpoint))


def test_real_plugin_files_to_acls_live_and_across_a_plugin_restart(tmp_path, start_plugin, acl_manager, felix,
                                                                     peers, wait_until):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "felix.txt").write_text(
        f"[felix h1]\nip={PLUGIN_HOST}\nhost=h1\n\n[group ops]\ninbound = group:web tcp 22\noutbound = 0.0.0.0/0\n")
    write_endpoint(data_dir, "a", "192.168.2.1,fd00::1", ["web"])
    write_endpoint(data_dir, "o", "192.168.2.9", ["ops"])
    fast = ("--keepalive-ms", str(KEEPALIVE_MS), "--connection-timeout-ms", str(TIMEOUT_MS),
            "--poll-interval-ms", "50")
    plugin = start_plugin("network", data_dir, PLUGIN_HOST, *fast)
    manager = acl_manager()
    sub, req = felix(["a", "b", "o"])
    # As Felix does after subscribing: ask, and the ACLs come (once the groups have).
    wait_until(lambda: "group ops: 1 members" in manager.log(), what="the plugin's groups")
    barrier(sub, req, wait_until, "a")
    barrier(sub, req, wait_until, "o")
    assert updates(sub, "o")[-1]["acls"] == acls(v4_in=["group:web tcp 22"], v4_out=["0.0.0.0/0"],
                                                 v6_in=["group:web tcp 22"])
    msub = peers.sub(ACL_PUB, [messages.members_topic("web")])
    wait_until(lambda: members(msub, "web"), what="web's members")

    # A new endpoint file: b joins web; web's members grow by one, b gets its own ACLs.
    write_endpoint(data_dir, "b", "192.168.2.2", ["web"])
    wait_until(lambda: updates(sub, "b"), what="b's ACLs")
    change = wait_until(lambda: [m for m in members(msub, "web") if m["type"] == "MEMBERSUPDATE"],
                        what="web's membership change")[-1]
    assert (change["added"], change["removed"]) == (["192.168.2.2"], [])
    assert updates(sub, "b")[-1]["acls"] == acls(
        v4_in=["group:web"], v4_out=["0.0.0.0/0", "group:web"], v6_in=["group:web"], v6_out=["::/0", "group:web"])

    # The plugin stops; o's file is removed meanwhile; the plugin comes back.
    plugin.stop()
    wait_until(lambda: "lost the subscription" in manager.log(), what="the manager to notice")
    (data_dir / "o.txt").unlink()
    start_plugin("network", data_dir, PLUGIN_HOST, *fast, name="plugin-network-2")
    wait_until(lambda: updates(sub, "o")[-1]["acls"] == acls(), what="empty ACLs for o (group ops gone)")
    assert "1 dropped as gone (ops)" in manager.log()
    assert manager.alive


# --- who may talk to the ACL API, and what the ACL manager survives (issue 9) ---------

def test_only_felixes_get_answers_and_acls(fake_plugin, acl_manager, felix, intruders, wait_until):
    fake_plugin([group_update("web", WEB)])
    manager = acl_manager()
    spies = intruders.subscribe(ACL_PUB, [b""], rightful="felix")
    refused = intruders.ask(ACL_REQ, messages.make(messages.GETACLSTATE, endpoint_id="a"), rightful="felix")
    assert refused == {label: None for label in refused}, refused
    assert set(refused) >= {"role felix/h1", "role acl-manager", "role plugin-ep", "another secret", "no CURVE"}
    sub, req = felix(["a"])
    wait_until(lambda: "group web: 2 members" in manager.log(), what="the group")
    barrier(sub, req, wait_until, "a")  # the ACLs of a, published after every spy connected
    assert {label: spy.snapshot() for label, spy in spies.items()} == {label: [] for label in spies}
    assert "refused a connection" in manager.log()


def test_a_barrage_on_every_input_leaves_the_acl_manager_serving(fake_plugin, acl_manager, felix, peers, barrage,
                                                                 wait_until):
    limit = 262144
    plugin = fake_plugin([group_update("web", WEB)])
    manager = acl_manager(extra=f"[connection]\nMaxMessageBytes = {limit}\n")
    sub, req = felix(["a", "b"])
    wait_until(lambda: "group web: 2 members" in manager.log(), what="the group")
    # Requests on 9905, from a Felix's REQ and from a DEALER (no envelope rules).
    payloads = fuzzdata.barrage(messages.make(messages.GETACLSTATE, endpoint_id="a"), oversize=limit)
    barrage(peers.req(ACL_REQ), payloads + [[b"a", b"b"], [b""] * 20], limit)
    dealer = peers.socket(zmq.DEALER, ACL_REQ)
    for frames in ([b""], [b"", b""], [b"x"] * 100, [b"", fuzzdata.deep_list().encode()], [b"\x00" * 1000]):
        dealer.send_multipart(frames)
    # Subscriptions on 9906.
    xsub = peers.socket(zmq.XSUB, ACL_PUB)
    for frame in [f for f in fuzzdata.raw_payloads(count=50) if f]:  # (see test_plugin_network)
        xsub.send(frame)
    # Publications from the plugin: malformed, deep, oversized.
    for body in fuzzdata.barrage(group_update("web", WEB), oversize=limit):
        plugin.publish_raw([messages.TOPIC_GROUPS, body])
    plugin.publish_raw([b"x" * 100])
    plugin.publish_raw([messages.TOPIC_GROUPS, b"{}", b"three frames"])
    dealer.close()
    xsub.close()
    # Still answering correctly, and still turning a change into ACLs.
    assert req.request(messages.make(messages.GETACLSTATE, endpoint_id="zz")) == {
        "type": "GETACLSTATE", "rc": "SUCCESS", "message": "", "endpoint_id": "zz"}
    msub = peers.sub(ACL_PUB, [messages.members_topic("web")])
    wait_until(lambda: members(msub, "web"), what="web's members")
    plugin.set_group("web", {**WEB, "c": ["192.168.2.3"]})
    wait_until(lambda: any("192.168.2.3" in m.get("added", []) for m in members(msub, "web")),
               what="a good change, end to end")
    # The oversized publication cost the connection (libzmq drops it, and
    # only a new socket connects again), not the manager.
    assert "lost the subscription" in manager.log()
    assert manager.alive and "carrying on" not in manager.log()

