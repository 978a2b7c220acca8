"""Felix's agent loop with a fake dataplane, peers on inproc ZeroMQ, a fake clock.

The peers are real ZeroMQ sockets (REP, REQ, ROUTER, XPUB) speaking the wire
protocol; only the dataplane is a recording fake and time is a counter, so
every timer (resync, retry, back-off, connection loss) is exercised without
sleeping and without root.

The fake ACL manager's publisher is an XPUB, like the real one: it sees
every subscription and unsubscription Felix makes, and answers each
subscription with whatever state the test gave it for that topic (an
endpoint's ACLUPDATE, a group's GROUPMEMBERS), as the real one does.
"""

from __future__ import annotations

import itertools
import logging
import os
import time

import pytest
import zmq

from calico.common import messages
from calico.common.config import Config
from calico.common.rules import Rule
from calico.common.zmqloop import EventLoop
from calico.felix.agent import Addresses, Agent

_names = itertools.count()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeDataplane:
    """Records every call; can pretend interfaces are missing or fail."""

    def __init__(self) -> None:
        self.started = 0
        self.applied: list[dict] = []
        self.groups: list[dict] = []  # the group members handed over with each pass
        self.forgets = 0
        self.missing: set[str] = set()
        self.failures_left = 0
        self.retries = 0

    def start(self) -> None:
        self.started += 1

    def apply(self, desired, groups):
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("netlink said no")
        self.applied.append(dict(desired))
        self.groups.append(dict(groups))
        return self.missing & set(desired)

    def forget_kernel_cache(self) -> None:
        self.forgets += 1

    def retry_failed_endpoints(self) -> None:
        self.retries += 1


def endpoint(msg_type=messages.ENDPOINTCREATED, endpoint_id="ep1", addr="192.168.1.1",
             mac="aa:bb:cc:dd:ee:01", state="enabled", **extra):
    return messages.make(msg_type, endpoint_id=endpoint_id, mac=mac, state=state, addrs=[{"addr": addr}], **extra)


ALLOW_10 = {"v4": {"inbound": [{"cidr": "10.0.0.0/8", "protocol": "tcp", "port": 80}], "outbound": [],
                   "inbound_default": "deny", "outbound_default": "allow"}}
# The seed's default rules as the ACL manager sends them: the group, by name, in both families.
WEB_ACLS = {family: {"inbound": [{"group": "web"}], "outbound": [{"group": "web"}, {"cidr": any_net}],
                     "inbound_default": "deny", "outbound_default": "deny"}
            for family, any_net in (("v4", "0.0.0.0/0"), ("v6", "::/0"))}
EPOCH = "e1"
WEB_TOPIC = b":members:web:"


def groupmembers(group="web", addrs=(), seq=1, epoch=EPOCH) -> bytes:
    return messages.encode(messages.make(messages.GROUPMEMBERS, group=group, epoch=epoch, seq=seq,
                                         addrs=list(addrs)))


def membersupdate(group="web", seq=2, added=(), removed=(), epoch=EPOCH) -> bytes:
    return messages.encode(messages.make(messages.MEMBERSUPDATE, group=group, epoch=epoch, seq=seq,
                                         added=list(added), removed=list(removed)))


class Harness:
    """The agent plus a fake plugin and ACL manager, all in this thread."""

    def __init__(self, cluster=None, **config_values):
        tag = next(_names)
        self.ctx = zmq.Context()
        self.clock = FakeClock()
        addresses = Addresses(plugin=f"inproc://plugin-{tag}", endpoints=f"inproc://felix-{tag}",
                              acl_req=f"inproc://acl-req-{tag}", acl_pub=f"inproc://acl-pub-{tag}")
        # ROUTERs stand in for the peers' REP sockets: a REP that took a
        # request and never answered it (the agent gave up) would refuse to
        # take the next one, which is not how a restarted peer behaves.
        self.plugin_rep = self._socket(zmq.ROUTER, bind=addresses.plugin)
        self._plugin_peer: list[bytes] = []
        self.acl_router = self._socket(zmq.ROUTER, bind=addresses.acl_req)
        self.addresses = addresses
        self.acl_pub = self._xpub()
        # What the fake ACL manager answers a subscription to a topic with.
        self.acl_state: dict[bytes, bytes] = {}
        self.sub_log: list[tuple[str, bytes]] = []  # ("+" or "-", topic), in order
        self.topics: set[bytes] = set()              # Felix's subscriptions now
        values = dict(felix_hostname="host-1", connection_timeout_millis=6000,
                      connection_keepalive_interval_millis=2000, resync_interval_secs=1800,
                      endpoint_retry_time_millis=500,
                      # Group members in these tests come from 10/8 and fd00::/16 too.
                      ip_pool=("192.168.0.0/16", "10.0.0.0/8"), ip_pool6=("fd00::/16",))
        values.update(config_values)
        self.config = Config(**values)
        self.dataplane = FakeDataplane()
        self.agent = Agent(self.config, self.dataplane, addresses=addresses, context=self.ctx,
                           loop=EventLoop(clock=self.clock), cluster=cluster)
        self.plugin_req = self._socket(zmq.REQ, connect=addresses.endpoints)
        self._acl_held: list[bytes] | None = None

    def _xpub(self):
        sock = self._socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # as the real one: every subscription, repeats too
        sock.bind(self.addresses.acl_pub)
        return sock

    def _socket(self, kind, bind=None, connect=None):
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if bind:
            sock.bind(bind)
        if connect:
            sock.connect(connect)
        return sock

    def close(self) -> None:
        self.agent.close()
        self.ctx.destroy(linger=0)

    # --- driving the loop ---------------------------------------------------

    def step(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.agent.loop.run_once(max_wait=0.0)
            self.serve_subscriptions()

    def pump_until(self, condition, what: str, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.agent.loop.run_once(max_wait=0.01)
            self.serve_subscriptions()

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.step()

    # --- fake plugin ----------------------------------------------------------

    def _plugin_recv(self):
        if not self.plugin_rep.poll(0):
            return None
        identity, empty, body = self.plugin_rep.recv_multipart()
        self._plugin_peer = [identity, empty]
        return body

    def expect_resync(self) -> dict:
        while True:  # keepalives may come first after a clock jump
            raw = self.pump_until(self._plugin_recv, "RESYNCSTATE")
            msg = messages.decode_request(raw, {messages.RESYNCSTATE, messages.HEARTBEAT})
            if msg["type"] == messages.RESYNCSTATE:
                return msg
            self.plugin_rep.send_multipart(self._plugin_peer + [messages.encode(messages.reply(messages.HEARTBEAT))])

    def answer_resync(self, count: int, rc: str = messages.RC_SUCCESS) -> None:
        reply = messages.reply(messages.RESYNCSTATE, rc, endpoint_count=count)
        self.plugin_rep.send_multipart(self._plugin_peer + [messages.encode(reply)])
        self.step()

    def request_raw(self, raw: bytes) -> dict:
        self.plugin_req.send(raw)
        reply = self.pump_until(lambda: self.plugin_req.poll(0) and self.plugin_req.recv(), "endpoint reply")
        return messages.json.loads(reply)

    def request(self, msg: dict) -> dict:
        return self.request_raw(messages.encode(msg))

    def resync(self, *endpoint_msgs) -> str:
        """Run a whole resync announcing these endpoints; returns its id."""
        resync_id = self.expect_resync()["resync_id"]
        self.answer_resync(len(endpoint_msgs))
        for msg in endpoint_msgs:
            assert self.request(dict(msg, resync_id=resync_id))["rc"] == messages.RC_SUCCESS
        return resync_id

    # --- fake ACL manager ----------------------------------------------------------

    def serve_subscriptions(self) -> None:
        """Take every (un)subscription the XPUB has seen; answer each
        subscription to a topic we hold state for, as the real publisher does."""
        while self.acl_pub.poll(0):
            frame = self.acl_pub.recv()
            sign, topic = ("+" if frame[:1] == b"\x01" else "-"), frame[1:]
            self.sub_log.append((sign, topic))
            if sign == "+":
                self.topics.add(topic)
                if topic in self.acl_state:
                    self.acl_pub.send_multipart([topic, self.acl_state[topic]])
            else:
                self.topics.discard(topic)

    def subscribed(self, sign: str, topic: bytes) -> int:
        """How many times Felix (un)subscribed to a topic so far."""
        return self.sub_log.count((sign, topic))

    def know_acls(self, endpoint_id: str, acls: dict) -> None:
        self.acl_state[endpoint_id.encode()] = messages.encode(messages.make(messages.ACLUPDATE, acls=acls))

    def know_members(self, group: str, addrs=(), seq: int = 1, epoch: str = EPOCH) -> None:
        self.acl_state[messages.members_topic(group)] = groupmembers(group, addrs, seq, epoch)

    def restart_acl_manager(self) -> None:
        """A new publisher on the same address: it knows no subscription."""
        self.acl_pub.unbind(self.addresses.acl_pub)  # at once: close releases the address later
        self.acl_pub.close(linger=0)
        self.acl_pub = self._xpub()
        self.topics.clear()

    def acl_requests(self, answer: bool = True, publish: bool = False) -> list[tuple[str, str]]:
        """Requests other than HEARTBEAT waiting now, as (type, group or
        endpoint id), answered one by one as a ROUTER does.  ``publish``:
        after acknowledging a GETGROUPMEMBERS, publish the group's state as
        the real ACL manager does."""
        asked = []
        while True:
            if self._acl_held is not None and answer:  # one left unanswered before
                self.acl_router.send_multipart(self._acl_held)
                self._acl_held = None
            self.step()
            if not self.acl_router.poll(0):
                return asked
            identity, empty, body = self.acl_router.recv_multipart()
            msg = messages.decode_request(body, {messages.GETACLSTATE, messages.GETGROUPMEMBERS,
                                                 messages.HEARTBEAT})
            fields = {}
            if msg["type"] == messages.GETACLSTATE:
                asked.append((msg["type"], msg["endpoint_id"]))
            elif msg["type"] == messages.GETGROUPMEMBERS:
                asked.append((msg["type"], msg["group"]))
                fields = {"group": msg["group"]}
            answer_frames = [identity, empty, messages.encode(messages.reply(msg["type"], **fields))]
            if not answer:
                self._acl_held = answer_frames
                return asked
            self.acl_router.send_multipart(answer_frames)
            topic = messages.members_topic(msg["group"]) if "group" in fields else None
            if publish and topic in self.acl_state:
                self.acl_pub.send_multipart([topic, self.acl_state[topic]])

    def refuse_acl_request(self) -> dict:
        """Answer the next request INVALID; returns it."""
        while True:
            self.step()
            if self.acl_router.poll(0):
                identity, empty, body = self.acl_router.recv_multipart()
                msg = messages.json.loads(body)
                if msg["type"] == messages.HEARTBEAT:
                    self.acl_router.send_multipart([identity, empty, messages.encode(
                        messages.reply(messages.HEARTBEAT))])
                    continue
                self.acl_router.send_multipart([identity, empty, messages.encode(
                    messages.reply(msg["type"], messages.RC_INVALID, "no such group"))])
                self.step()
                return msg

    def publish(self, topic: str | bytes, body: bytes) -> None:
        topic = topic.encode() if isinstance(topic, str) else topic
        self.acl_pub.send_multipart([topic, body])
        self.step()

    def publish_acls(self, endpoint_id: str, acls: dict) -> None:
        self.publish(endpoint_id, messages.encode(messages.make(messages.ACLUPDATE, acls=acls)))

    def publish_members(self, body: bytes, group: str = "web") -> None:
        self.publish(messages.members_topic(group), body)

    def heartbeat(self) -> None:
        self.publish(messages.TOPIC_ACL_HEARTBEAT, messages.encode(messages.make(messages.HEARTBEAT)))

    @property
    def last_desired(self) -> dict:
        return self.dataplane.applied[-1]

    @property
    def last_groups(self) -> dict:
        return self.dataplane.groups[-1]

    @property
    def passes(self) -> int:
        return len(self.dataplane.applied)


@pytest.fixture
def h():
    harness = Harness()
    harness.agent.start()
    try:
        yield harness
    finally:
        harness.close()


def synced(h: Harness, *endpoint_msgs, acls: dict | None = ALLOW_10) -> None:
    """Complete the start-up resync; the fake ACL manager knows every
    endpoint's ACLs, so the subscription Felix makes is answered with them."""
    if acls is not None:
        for msg in endpoint_msgs:
            h.know_acls(msg["endpoint_id"], acls)
    h.resync(*endpoint_msgs)
    h.heartbeat()
    h.acl_requests()
    h.step()


# --- start-up resync -------------------------------------------------------------------

def test_start_up_resync_programs_nothing_until_complete(h):
    msg = h.expect_resync()
    assert msg["hostname"] == "host-1" and len(msg["resync_id"]) == 36
    assert h.dataplane.started == 1
    h.answer_resync(2)
    assert h.request(endpoint(endpoint_id="a", resync_id=msg["resync_id"]))["rc"] == "SUCCESS"
    h.step()
    assert h.dataplane.applied == []  # one of two: still resyncing
    h.request(endpoint(endpoint_id="b", addr="192.168.1.2", resync_id=msg["resync_id"]))
    h.publish_acls("a", ALLOW_10)
    h.publish_acls("b", ALLOW_10)
    h.step()
    assert sorted(h.last_desired) == ["a", "b"]
    assert h.last_desired["a"].acls.v4.inbound == (Rule(cidr="10.0.0.0/8", protocol="tcp", port=80),)


def test_empty_resync_applies_empty_state(h):
    h.resync()
    h.step()
    assert h.dataplane.applied == [{}]


def test_announcements_before_the_reply_still_count(h):
    resync_id = h.expect_resync()["resync_id"]
    # The plugin may push its announcements before our REQ sees its reply.
    h.plugin_rep.send_multipart(h._plugin_peer + [messages.encode(messages.reply(messages.RESYNCSTATE,
                                                                                 endpoint_count=1))])
    h.request(endpoint(endpoint_id="a", resync_id=resync_id))
    h.publish_acls("a", ALLOW_10)
    h.step()
    assert list(h.last_desired) == ["a"]


def test_first_pass_waits_for_acls_at_most_the_connection_timeout(h):
    h.resync(endpoint(endpoint_id="a"))
    h.step()
    assert h.dataplane.applied == []  # would fail "a" closed for no reason
    h.advance(6.0)
    assert list(h.last_desired) == ["a"] and h.last_desired["a"].acls is None


def test_resync_removes_stale_endpoints_and_forgets_kernel_cache(h):
    synced(h, endpoint(endpoint_id="a"), endpoint(endpoint_id="b", addr="192.168.1.2"))
    assert sorted(h.last_desired) == ["a", "b"]
    forgets = h.dataplane.forgets
    h.advance(1800)  # periodic resync
    assert h.dataplane.forgets == forgets + 1
    assert h.dataplane.retries == 1  # endpoints the kernel refused are tried again
    resync_id = h.expect_resync()["resync_id"]
    h.answer_resync(1)
    h.request(endpoint(endpoint_id="a", resync_id=resync_id))
    h.step()
    assert sorted(h.last_desired) == ["a"]
    assert h.last_desired["a"].acls is not None  # kept through the resync


def test_live_create_during_resync_is_kept(h):
    synced(h, endpoint(endpoint_id="a"))
    h.advance(1800)
    resync_id = h.expect_resync()["resync_id"]
    h.request(endpoint(endpoint_id="live", addr="192.168.1.9"))  # pushed live, no resync_id
    h.answer_resync(1)
    h.request(endpoint(endpoint_id="a", resync_id=resync_id))
    h.step()
    assert sorted(h.last_desired) == ["a", "live"]


def test_announcement_of_an_abandoned_resync_does_not_count(h):
    old = h.expect_resync()["resync_id"]
    h.advance(6.0)  # no answer: the REQ socket is rebuilt and a new resync starts
    new = h.expect_resync()["resync_id"]
    assert new != old
    h.answer_resync(1)
    h.request(endpoint(endpoint_id="a", resync_id=old))
    h.step()
    assert h.agent.resync.synced_at is None
    h.request(endpoint(endpoint_id="a", resync_id=new))
    assert h.agent.resync.synced_at is not None


def test_rejected_announcement_counts_towards_the_resync(h):
    resync_id = h.expect_resync()["resync_id"]
    h.answer_resync(2)
    reply = h.request(endpoint(endpoint_id="a", mac="zz", resync_id=resync_id))
    assert reply["rc"] == "INVALID"
    h.request(endpoint(endpoint_id="b", resync_id=resync_id))
    assert h.agent.resync.synced_at is not None


def test_refused_resync_is_retried(h):
    h.expect_resync()
    h.answer_resync(0, rc=messages.RC_INVALID)
    h.advance(6.0)
    h.expect_resync()


def test_stalled_resync_starts_again(h):
    first = h.expect_resync()["resync_id"]
    h.answer_resync(3)
    h.request(endpoint(endpoint_id="a", resync_id=first))
    h.clock.now += 12.0
    assert h.expect_resync()["resync_id"] != first


# --- live endpoint messages ------------------------------------------------------------

def test_live_create_update_destroy_replies(h):
    synced(h)
    create = h.request(endpoint(endpoint_id="x"))
    assert create == {"type": "ENDPOINTCREATED", "rc": "SUCCESS", "message": ""}
    h.step()
    assert b"x" in h.topics and h.acl_requests() == []  # subscribed, nothing asked
    again = h.request(endpoint(endpoint_id="x", addr="192.168.1.7"))  # CREATED of a known one: an update
    assert again["rc"] == "SUCCESS"
    assert h.agent.table.get("x").addrs == ("192.168.1.7",)
    update = h.request(endpoint(messages.ENDPOINTUPDATED, endpoint_id="x", state="disabled"))
    assert update == {"type": "ENDPOINTUPDATED", "rc": "SUCCESS", "message": ""}
    h.step()
    assert not h.last_desired["x"].enabled
    destroy = h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="x"))
    assert destroy == {"type": "ENDPOINTDESTROYED", "rc": "SUCCESS", "message": ""}
    h.step()
    assert h.last_desired == {}


def test_update_or_destroy_of_unknown_endpoint_is_notexist(h):
    synced(h)
    update = h.request(endpoint(messages.ENDPOINTUPDATED, endpoint_id="ghost"))
    assert (update["type"], update["rc"]) == ("ENDPOINTUPDATED", "NOTEXIST")
    destroy = h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="ghost"))
    assert (destroy["type"], destroy["rc"]) == ("ENDPOINTDESTROYED", "NOTEXIST")
    assert "ghost" not in h.agent.table


def test_heartbeat_is_answered(h):
    assert h.request(messages.make(messages.HEARTBEAT)) == {"type": "HEARTBEAT", "rc": "SUCCESS", "message": ""}


@pytest.mark.parametrize("raw, reply_type, field", [
    (b"not json", "UNKNOWN", "not JSON"),
    (b"[1, 2]", "UNKNOWN", "not a JSON object"),
    (messages.encode(endpoint(mac="zz:bb:cc:dd:ee:01")), "ENDPOINTCREATED", "'mac'"),
    (messages.encode(endpoint(addr="192.168.1.300")), "ENDPOINTCREATED", "'addrs'"),
    (messages.encode(endpoint(state="sleeping")), "ENDPOINTCREATED", "'state'"),
    (messages.encode(endpoint(endpoint_id="-rf")), "ENDPOINTCREATED", "'endpoint_id'"),
    (messages.encode(endpoint(endpoint_id="a b")), "ENDPOINTCREATED", "'endpoint_id'"),
    (messages.encode(endpoint(messages.ENDPOINTUPDATED, mac=7)), "ENDPOINTUPDATED", "'mac'"),
    (messages.encode({"type": "ENDPOINTDESTROYED"}), "ENDPOINTDESTROYED", "'endpoint_id'"),
    (messages.encode({"type": "EXPLODE"}), "UNKNOWN", "'EXPLODE'"),
    (messages.encode(messages.make(messages.GETGROUPS)), "GETGROUPS", "GETGROUPS"),
])
def test_malformed_requests_get_invalid_and_the_loop_carries_on(h, caplog, raw, reply_type, field):
    synced(h, endpoint(endpoint_id="good"))
    applied = len(h.dataplane.applied)
    with caplog.at_level(logging.WARNING, logger="calico.felix"):
        reply = h.request_raw(raw)
    assert reply["type"] == reply_type and reply["rc"] == "INVALID"
    assert field in reply["message"]
    assert len([r for r in caplog.records if "rejected request" in r.getMessage()]) == 1
    h.step()
    assert len(h.dataplane.applied) == applied  # nothing else touched
    assert h.request(messages.make(messages.HEARTBEAT))["rc"] == "SUCCESS"
    assert h.request(endpoint(endpoint_id="next", addr="192.168.1.2"))["rc"] == "SUCCESS"


def test_one_info_line_per_endpoint_event(h, caplog):
    synced(h)
    with caplog.at_level(logging.INFO, logger="calico.felix"):
        h.request(endpoint(endpoint_id="x"))
        h.request(endpoint(endpoint_id="x"))  # unchanged: no INFO line
        h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="x"))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "Endpoint x" in r.getMessage()]
    assert len(lines) == 2 and "created" in lines[0] and "destroyed" in lines[1]


# --- ACLs ------------------------------------------------------------------------------

def test_aclupdate_with_malformed_rules_keeps_the_valid_ones_and_logs_once(h, caplog):
    synced(h, endpoint(endpoint_id="a"), acls=None)
    acls = {"v4": {"inbound": [{"cidr": "10.0.0.999"}, {"cidr": "10.0.0.1", "protocol": "tcp", "port": 22},
                               {"group": "bad name"}],
                   "outbound": [{"cidr": "fd00::1"}]}}
    with caplog.at_level(logging.WARNING, logger="calico.felix"):
        h.publish_acls("a", acls)
        h.publish_acls("a", acls)  # the same again: nothing new to say
    h.step()
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3
    got = h.last_desired["a"].acls
    assert got.v4.inbound == (Rule(cidr="10.0.0.1/32", protocol="tcp", port=22),)
    assert got.v4.outbound == () and got.v6.inbound == () and got.v6.outbound == ()


def test_malformed_aclupdate_keeps_previous_acls(h, caplog):
    synced(h, endpoint(endpoint_id="a"))
    before = h.last_desired["a"].acls
    applied = len(h.dataplane.applied)
    with caplog.at_level(logging.WARNING, logger="calico.felix"):
        h.publish("a", b"{not json")
        h.publish("a", messages.encode({"type": "ACLUPDATE", "acls": {"v4": {"inbound": 5}}}))
        h.acl_pub.send_multipart([b"a"])  # one frame
        h.step()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
    assert len(h.dataplane.applied) == applied
    assert h.agent.table.get("a").acls == before


def test_acls_for_a_prefix_topic_or_unknown_endpoint_are_ignored(h):
    synced(h, endpoint(endpoint_id="ab"), acls=None)
    h.publish_acls("abc", ALLOW_10)  # delivered (subscriptions match prefixes) but not ours
    h.advance(6.0)
    assert h.last_desired["ab"].acls is None
    assert "abc" not in h.agent.table


def test_destroyed_endpoint_is_unsubscribed(h):
    synced(h, endpoint(endpoint_id="a"))
    h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="a"))
    h.step()
    h.acl_pub.send_multipart([b"a", messages.encode(messages.make(messages.ACLUPDATE, acls=ALLOW_10))])
    assert h.agent.acls.subscription.socket.poll(200) == 0  # the publisher filters it out now
    assert h.last_desired == {}


def test_messages_ready_together_cost_one_pass(h):
    synced(h, *(endpoint(endpoint_id=f"e{i}", addr=f"192.168.1.{i + 1}") for i in range(5)), acls=None)
    h.advance(6.0)
    applied = len(h.dataplane.applied)
    for i in range(5):
        h.acl_pub.send_multipart([f"e{i}".encode(), messages.encode(messages.make(messages.ACLUPDATE, acls=ALLOW_10))])
    h.step()
    assert len(h.dataplane.applied) == applied + 1
    assert all(spec.acls is not None for spec in h.last_desired.values())


def test_nothing_changed_means_no_pass(h):
    synced(h, endpoint(endpoint_id="a"))
    applied = len(h.dataplane.applied)
    h.request(endpoint(endpoint_id="a"))
    h.publish_acls("a", ALLOW_10)
    h.heartbeat()
    assert h.request(messages.make(messages.HEARTBEAT))["rc"] == "SUCCESS"
    h.step()
    assert len(h.dataplane.applied) == applied


# --- group members -----------------------------------------------------------------

WEB_IN = (Rule(group="web"),)


def web_synced(h: Harness, *endpoint_msgs, addrs=("10.1.0.1",), seq: int = 1) -> None:
    """Synced with every endpoint in group web, whose members the ACL manager knows."""
    h.know_members("web", addrs, seq)
    synced(h, *(endpoint_msgs or (endpoint(endpoint_id="a"),)), acls=WEB_ACLS)


def test_the_first_pass_waits_for_acls_and_group_members_then_programs_both_at_once(h):
    web_synced(h, addrs=["10.1.0.1", "fd00:1::1"])
    assert h.passes == 1
    acls = h.last_desired["a"].acls
    assert acls.v4.inbound == WEB_IN and acls.v6.inbound == WEB_IN  # kept as a reference to the group
    assert acls.v4.outbound == (Rule(group="web"), Rule(cidr="0.0.0.0/0"))
    assert h.last_groups == {"web": {"10.1.0.1", "fd00:1::1"}}
    assert h.subscribed("+", WEB_TOPIC) == 1
    assert h.acl_requests() == []  # the subscriptions brought everything


def test_the_first_pass_waits_at_most_the_connection_timeout_for_group_members(h):
    synced(h, endpoint(endpoint_id="a"), acls=WEB_ACLS)  # nobody answers for web
    assert WEB_TOPIC in h.topics
    h.step()
    assert h.dataplane.applied == []
    h.advance(6.0)
    assert h.last_desired["a"].acls is None and h.last_groups == {}  # fail-closed, not open
    h.publish_members(groupmembers(addrs=["10.1.0.1"]))
    h.step()
    assert h.last_desired["a"].acls.v4.inbound == WEB_IN
    assert h.last_groups == {"web": {"10.1.0.1"}}


def test_an_endpoint_whose_acls_come_to_name_a_new_group_is_closed_until_its_members_arrive(h):
    synced(h, endpoint(endpoint_id="a"))
    assert h.last_desired["a"].acls.v4.inbound == (Rule(cidr="10.0.0.0/8", protocol="tcp", port=80),)
    h.publish_acls("a", WEB_ACLS)
    h.step()
    assert WEB_TOPIC in h.topics
    assert h.last_desired["a"].acls is None and h.last_groups == {}
    h.publish_members(groupmembers(addrs=["10.1.0.1"]))
    h.step()
    assert h.last_desired["a"].acls.v4.inbound == WEB_IN and h.last_groups == {"web": {"10.1.0.1"}}


def test_a_group_is_subscribed_once_however_many_endpoints_name_it_and_dropped_when_none_does(h):
    web_synced(h, endpoint(endpoint_id="a"), endpoint(endpoint_id="b", addr="192.168.1.2"))
    assert h.subscribed("+", WEB_TOPIC) == 1
    h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="a"))
    h.step()
    assert WEB_TOPIC in h.topics and h.last_groups == {"web": {"10.1.0.1"}}  # b still names it
    h.publish_acls("b", ALLOW_10)  # b's rules name no group now
    h.step()
    assert h.subscribed("-", WEB_TOPIC) == 1 and WEB_TOPIC not in h.topics
    assert h.last_groups == {} and h.last_desired["b"].acls is not None
    h.acl_pub.send_multipart([WEB_TOPIC, membersupdate(seq=2, added=["10.1.0.2"])])
    assert h.agent.acls.subscription.socket.poll(200) == 0  # the publisher filters it out now
    assert h.agent.acls.groups.known() == {}


def test_destroying_the_last_endpoint_naming_a_group_unsubscribes_it(h):
    web_synced(h)
    h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="a"))
    h.step()
    assert h.subscribed("-", WEB_TOPIC) == 1 and h.subscribed("-", b"a") == 1
    assert h.last_desired == {} and h.last_groups == {}


def test_acls_moving_from_one_group_to_another_swap_the_subscriptions(h):
    web_synced(h)
    h.know_members("db", ["10.2.0.1"])
    h.publish_acls("a", {"v4": {"inbound": [{"group": "db", "protocol": "tcp", "port": 5432}]}})
    h.step()
    assert b":members:db:" in h.topics and WEB_TOPIC not in h.topics
    assert h.last_desired["a"].acls.v4.inbound == (Rule(group="db", protocol="tcp", port=5432),)
    assert h.last_groups == {"db": {"10.2.0.1"}}


def test_a_membersupdate_one_past_what_was_applied_changes_the_group_and_nothing_else(h):
    web_synced(h)
    passes, spec = h.passes, h.last_desired["a"]
    h.publish_members(membersupdate(seq=2, added=["10.1.0.2", "fd00:1::2"]))
    h.step()
    assert h.passes == passes + 1
    assert h.last_groups == {"web": {"10.1.0.1", "10.1.0.2", "fd00:1::2"}}
    assert h.last_desired["a"] == spec  # no endpoint changed
    h.publish_members(membersupdate(seq=3, removed=["10.1.0.1"]))
    h.step()
    assert h.passes == passes + 2 and h.last_groups == {"web": {"10.1.0.2", "fd00:1::2"}}
    assert h.acl_requests() == []


def test_old_membersupdates_are_ignored(h):
    web_synced(h, seq=4)
    passes = h.passes
    for seq in (4, 3, 1):
        h.publish_members(membersupdate(seq=seq, removed=["10.1.0.1"], added=["10.1.0.66"]))
    h.step()
    assert h.passes == passes and h.last_groups == {"web": {"10.1.0.1"}}
    assert h.acl_requests() == []


def test_a_gap_keeps_the_members_and_asks_for_the_whole_group_once_until_answered(h, caplog):
    web_synced(h)
    passes = h.passes
    with caplog.at_level(logging.INFO, logger="calico.felix"):
        h.publish_members(membersupdate(seq=3, added=["10.1.0.3"]))  # 2 was missed
        h.publish_members(membersupdate(seq=4, added=["10.1.0.4"]))
        h.step()
    assert h.passes == passes  # the members we hold stay in force, neither widened nor emptied
    assert h.agent.acls.groups.known() == {"web": {"10.1.0.1"}}
    assert len([r for r in caplog.records if "missed a change" in r.getMessage()]) == 1
    # The ACL manager acknowledges, then publishes the whole group.
    h.know_members("web", ["10.1.0.2", "10.1.0.3", "10.1.0.4"], seq=4)
    assert h.acl_requests(publish=True) == [("GETGROUPMEMBERS", "web")]  # one request for two gaps
    h.step()
    assert h.passes == passes + 1
    assert h.last_groups == {"web": {"10.1.0.2", "10.1.0.3", "10.1.0.4"}}
    h.publish_members(membersupdate(seq=5, added=["10.1.0.5"]))  # the sequence goes on from the snapshot
    h.step()
    assert h.last_groups == {"web": {"10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"}}
    h.publish_members(membersupdate(seq=7, added=["10.1.0.7"]))  # a later gap asks again
    assert h.acl_requests() == [("GETGROUPMEMBERS", "web")]


def test_a_groupmembers_answers_a_gap_even_before_the_request_is_acknowledged(h):
    web_synced(h)
    h.publish_members(membersupdate(seq=3, added=["10.1.0.3"]))
    assert h.acl_requests(answer=False) == [("GETGROUPMEMBERS", "web")]  # in flight, unanswered
    h.publish_members(groupmembers(addrs=["10.1.0.3"], seq=3))  # e.g. another host's subscription
    h.step()
    assert h.last_groups == {"web": {"10.1.0.3"}}
    # A new gap is asked about again, though the first request is still unanswered.
    h.publish_members(membersupdate(seq=5, added=["10.1.0.5"]))
    assert h.acl_requests() == [("GETGROUPMEMBERS", "web")]  # the held one answered, then this one


def test_another_epoch_is_a_gap(h):
    web_synced(h)
    passes = h.passes
    h.publish_members(membersupdate(seq=2, added=["10.1.0.2"], epoch="e2"))  # the ACL manager restarted
    h.step()
    assert h.passes == passes and h.agent.acls.groups.known() == {"web": {"10.1.0.1"}}
    assert h.acl_requests() == [("GETGROUPMEMBERS", "web")]


def test_a_groupmembers_is_always_taken_older_or_of_another_epoch(h):
    web_synced(h, seq=5)
    h.publish_members(groupmembers(addrs=["10.1.0.2"], seq=2))
    h.step()
    assert h.last_groups == {"web": {"10.1.0.2"}}
    h.publish_members(groupmembers(addrs=["10.1.0.3"], seq=1, epoch="e2"))
    h.step()
    assert h.last_groups == {"web": {"10.1.0.3"}}
    h.publish_members(membersupdate(seq=2, epoch="e2", added=["10.1.0.4"]))
    h.step()
    assert h.last_groups == {"web": {"10.1.0.3", "10.1.0.4"}}
    assert h.acl_requests() == []


def test_a_groupmembers_changing_nothing_costs_no_pass_and_keeps_the_same_address_set(h):
    web_synced(h)
    passes, held = h.passes, h.last_groups["web"]
    h.publish_members(groupmembers(addrs=["10.1.0.1"], seq=2))
    h.step()
    assert h.passes == passes
    h.know_acls("b", ALLOW_10)
    h.request(endpoint(endpoint_id="b", addr="192.168.1.2"))  # something else changes: a pass
    h.step()
    assert h.passes > passes and h.last_groups["web"] is held  # so the dataplane keeps its set as it is


def test_a_membersupdate_before_the_first_groupmembers_is_ignored(h):
    synced(h, endpoint(endpoint_id="a"), acls=WEB_ACLS)
    h.advance(6.0)
    passes = h.passes
    h.publish_members(membersupdate(seq=2, added=["10.1.0.2"]))
    h.step()
    assert h.passes == passes and h.last_desired["a"].acls is None
    assert h.acl_requests() == []  # the GROUPMEMBERS the subscription asked for is on its way


def test_bad_membership_messages_keep_the_members_and_are_reported(h, caplog):
    web_synced(h)
    passes = h.passes
    with caplog.at_level(logging.WARNING, logger="calico.felix"):
        h.publish_members(b"{not json")
        h.publish_members(groupmembers(group="db", addrs=["10.9.9.9"]))  # another group's, on web's topic
        h.publish_members(messages.encode(messages.make(messages.ACLUPDATE, acls=ALLOW_10)))
        h.publish_members(b'{"type":"GROUPMEMBERS","group":"web","epoch":"NOT-HEX","seq":2,"addrs":[]}')
        h.publish_members(b'{"type":"MEMBERSUPDATE","group":"web","epoch":"e1","seq":2,"added":["0.0.0.0/0"],'
                          b'"removed":[]}')
        h.step()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 5
    assert h.passes == passes and h.agent.acls.groups.known() == {"web": {"10.1.0.1"}}
    assert h.acl_requests() == []
    h.publish_members(membersupdate(seq=2, added=["10.1.0.2"]))  # the next good one still applies
    h.step()
    assert h.last_groups == {"web": {"10.1.0.1", "10.1.0.2"}}


def test_membership_of_a_group_no_endpoint_here_names_is_ignored(h):
    web_synced(h)
    passes = h.passes
    h.agent.acls.handle_members("db", groupmembers(group="db", addrs=["10.2.0.1"]))
    h.step()
    assert h.passes == passes and h.agent.acls.groups.known() == {"web": {"10.1.0.1"}}


def test_a_refused_getgroupmembers_is_reported_and_a_later_gap_asks_again(h, caplog):
    web_synced(h)
    h.publish_members(membersupdate(seq=3, added=["10.1.0.3"]))
    with caplog.at_level(logging.WARNING, logger="calico.felix"):
        refused = h.refuse_acl_request()
    assert (refused["type"], refused["group"]) == ("GETGROUPMEMBERS", "web")
    assert any("refused GETGROUPMEMBERS for group web" in r.getMessage() for r in caplog.records)
    assert h.agent.acls.groups.known() == {"web": {"10.1.0.1"}}
    h.publish_members(membersupdate(seq=4, added=["10.1.0.4"]))
    assert h.acl_requests() == [("GETGROUPMEMBERS", "web")]


# --- lost peers -------------------------------------------------------------------------

def test_plugin_lost_means_a_new_resync(h):
    synced(h, endpoint(endpoint_id="a"))
    h.advance(2.0)  # quiet: keepalive HEARTBEAT goes out, and nobody answers it
    h.advance(6.0)
    msg = h.expect_resync()
    assert msg["type"] == "RESYNCSTATE"


def test_acl_silence_reopens_the_subscription_which_subscribes_to_everything_again(h, caplog):
    h.know_members("web", ["10.1.0.1"])
    synced(h, endpoint(endpoint_id="a"), acls=WEB_ACLS)
    applied = h.passes
    before = (h.last_desired["a"], h.last_groups)
    assert h.subscribed("+", b"a") == 1 and h.subscribed("+", WEB_TOPIC) == 1
    with caplog.at_level(logging.WARNING, logger="calico.felix"):
        h.clock.now += 6.0  # not even a heartbeat for ConnectionTimeoutMillis
        h.step()
    assert any("nothing heard" in r.getMessage() for r in caplog.records)
    # A new SUB socket: every topic subscribed again, each answered with its
    # state by the XPUB; nothing changed, so nothing to program.
    assert h.subscribed("+", b"a") == 2 and h.subscribed("+", WEB_TOPIC) == 2
    assert h.subscribed("+", messages.TOPIC_ACL_HEARTBEAT) == 2
    assert {b"a", WEB_TOPIC, messages.TOPIC_ACL_HEARTBEAT} <= h.topics
    h.step()
    assert h.passes == applied and (h.last_desired["a"], h.last_groups) == before
    assert h.acl_requests() == []  # no request: the subscriptions brought the state


def test_a_restarted_acl_manager_hears_every_subscription_again_and_its_new_epoch_is_taken(h):
    h.know_members("web", ["10.1.0.1"])
    synced(h, endpoint(endpoint_id="a"), acls=WEB_ACLS)
    h.restart_acl_manager()  # inproc never reconnects: only the reopened SUB reaches it
    h.know_members("web", ["10.1.0.1", "10.1.0.2"], seq=1, epoch="e2")
    h.advance(6.0)
    assert {b"a", WEB_TOPIC} <= h.topics
    h.step()
    assert h.last_groups == {"web": {"10.1.0.1", "10.1.0.2"}}
    assert h.last_desired["a"].acls is not None
    h.publish_members(membersupdate(seq=2, epoch="e2", added=["10.1.0.3"]))
    h.step()
    assert h.last_groups == {"web": {"10.1.0.1", "10.1.0.2", "10.1.0.3"}}


def test_endpoint_without_acls_is_never_asked_for_and_takes_them_when_published(h):
    """No GETACLSTATE and no retry ladder: the subscription is the question."""
    synced(h, endpoint(endpoint_id="a"), acls=None)
    for _ in range(200):  # 20 s of fake time in 0.1 s steps
        h.clock.now += 0.1
        h.heartbeat()
        assert h.acl_requests() == []
    assert h.last_desired["a"].acls is None
    h.publish_acls("a", ALLOW_10)
    h.step()
    assert h.last_desired["a"].acls.v4.inbound == (Rule(cidr="10.0.0.0/8", protocol="tcp", port=80),)


def test_an_acl_manager_reset_asks_again_for_members_still_missing(h):
    h.know_members("web", ["10.1.0.1"])
    synced(h, endpoint(endpoint_id="a"), acls=WEB_ACLS)
    h.publish_members(membersupdate(seq=3, added=["10.1.0.3"]))  # a gap
    assert h.acl_requests(answer=False) == [("GETGROUPMEMBERS", "web")]  # left unanswered
    h.advance(6.0)
    assert h.acl_requests() == [("GETGROUPMEMBERS", "web")]  # asked again after the reset
    assert h.last_groups == {"web": {"10.1.0.1"}}  # carries on with what it knew


# --- dataplane results ------------------------------------------------------------------

def test_missing_interface_is_retried_by_timer(h):
    h.dataplane.missing = {"a"}
    synced(h, endpoint(endpoint_id="a"), endpoint(endpoint_id="b", addr="192.168.1.2"))
    applied = len(h.dataplane.applied)
    assert h.agent.driver.missing == {"a"}
    h.step(10)
    assert len(h.dataplane.applied) == applied  # no busy loop
    h.advance(0.5)
    assert len(h.dataplane.applied) == applied + 1
    h.dataplane.missing = set()
    h.advance(0.5)
    assert len(h.dataplane.applied) == applied + 2 and h.agent.driver.missing == set()
    h.advance(0.5)
    assert len(h.dataplane.applied) == applied + 2


def test_failed_pass_forgets_cache_and_backs_off(h, caplog):
    h.dataplane.failures_left = 2
    with caplog.at_level(logging.ERROR, logger="calico.felix"):
        h.resync(endpoint(endpoint_id="a"))
        h.publish_acls("a", ALLOW_10)
        h.step(10)
    assert h.dataplane.forgets == 1 and h.dataplane.applied == []
    assert len([r for r in caplog.records if "Dataplane pass failed" in r.getMessage()]) == 1
    h.request(endpoint(endpoint_id="a", addr="192.168.1.5"))  # news does not jump the back-off
    h.step()
    assert h.dataplane.forgets == 1
    h.advance(0.5)
    assert h.dataplane.forgets == 2  # second failure, back-off doubles
    h.advance(0.5)
    assert h.dataplane.applied == []
    h.advance(0.5)
    assert h.last_desired["a"].addrs == ("192.168.1.5",)


def test_plugin_that_stays_down_is_reported_once(h, caplog):
    h.expect_resync()  # taken, never answered
    with caplog.at_level(logging.DEBUG, logger="calico.felix"):
        for _ in range(4):
            h.advance(6.0)
    lost = [r for r in caplog.records if "plugin connection lost" in r.getMessage()]
    assert len(lost) == 4 and [r.levelno for r in lost] == [logging.INFO] + [logging.DEBUG] * 3


def test_resync_with_nothing_changed_needs_no_pass(h):
    synced(h, endpoint(endpoint_id="a"))
    applied = len(h.dataplane.applied)
    h.advance(2.0)
    h.advance(6.0)  # plugin lost: a resync, announcing the same endpoint
    resync_id = h.expect_resync()["resync_id"]
    h.answer_resync(1)
    h.request(endpoint(endpoint_id="a", resync_id=resync_id))
    h.step()
    assert h.agent.resync.current is None and len(h.dataplane.applied) == applied


# --- cluster settings -------------------------------------------------------------------

def test_a_changed_cluster_file_reaches_the_dataplane_in_one_pass(tmp_path):
    from calico.felix.cluster import ClusterSource

    path = tmp_path / "felix.txt"
    hosts = "[felix host-1]\nip=10.0.0.1\n"
    path.write_text(hosts)
    harness = Harness(cluster=ClusterSource("host-1", {"CALICO_CLUSTER_FILE": str(path)}))
    harness.dataplane.views = []
    harness.dataplane.set_cluster = harness.dataplane.views.append
    harness.agent.start()
    try:
        synced(harness, endpoint(endpoint_id="a"))
        applied = len(harness.dataplane.applied)
        harness.advance(1.5)
        assert harness.dataplane.views == [] and len(harness.dataplane.applied) == applied
        path.write_text(hosts + "[global]\nnat_outgoing = true\n")
        os.utime(path, ns=(5, 5))
        harness.advance(1.5)
        assert [v.settings.nat_outgoing for v in harness.dataplane.views] == [True]
        assert len(harness.dataplane.applied) == applied + 1
    finally:
        harness.close()


# --- Felix checks what it is told ----------------------------------------------------

def addrs(*values):
    return [{"addr": value} for value in values]


@pytest.fixture
def h_default_pools():
    """A harness with the pools Felix has when none is configured."""
    harness = Harness(ip_pool=(), ip_pool6=())
    harness.agent.start()
    try:
        yield harness
    finally:
        harness.close()


def test_an_address_outside_the_pools_is_refused(h_default_pools):
    h = h_default_pools
    synced(h)
    reply = h.request(endpoint(endpoint_id="x", addr="10.1.2.3"))
    assert reply == {"type": "ENDPOINTCREATED", "rc": "INVALID",
                     "message": "address 10.1.2.3 is outside the pool (192.168.0.0/16)"}
    v6 = h.request(messages.make(messages.ENDPOINTCREATED, endpoint_id="y", mac="aa:bb:cc:dd:ee:02",
                                 state="enabled", addrs=addrs("192.168.1.2", "fd00::2")))
    assert v6["rc"] == "INVALID" and "fd00::2 is outside the pool (fd80:24e2:f998:72d6::/64)" in v6["message"]
    assert "x" not in h.agent.table and "y" not in h.agent.table


def test_pools_come_from_the_settings():
    h = Harness(ip_pool=("10.0.0.0/8", "172.16.0.0/12"), ip_pool6=("fd00::/64",))
    try:
        h.agent.start()
        synced(h)
        assert h.request(endpoint(endpoint_id="x", addr="172.16.0.5"))["rc"] == "SUCCESS"
        assert h.request(messages.make(messages.ENDPOINTCREATED, endpoint_id="y", mac="aa:bb:cc:dd:ee:02",
                                       state="enabled", addrs=addrs("10.0.0.2", "fd00::2")))["rc"] == "SUCCESS"
        refused = h.request(endpoint(endpoint_id="z", addr="192.168.1.3"))
        assert refused["message"] == "address 192.168.1.3 is outside the pool (10.0.0.0/8 172.16.0.0/12)"
    finally:
        h.close()


def test_no_endpoint_can_take_another_ones_address(h, caplog):
    synced(h, endpoint(endpoint_id="web1", addr="192.168.1.1"), endpoint(endpoint_id="db1", addr="192.168.1.2"))
    before = h.last_desired["db1"]
    applied = len(h.dataplane.applied)
    with caplog.at_level(logging.WARNING, logger="calico.felix"):
        # db1 asks to be web1 as well (the attack of issue 9), by update and by a second creation.
        widen = messages.make(messages.ENDPOINTUPDATED, endpoint_id="db1", mac="aa:bb:cc:dd:ee:01",
                              state="enabled", addrs=addrs("192.168.1.2", "192.168.1.1"))
        assert h.request(widen) == {"type": "ENDPOINTUPDATED", "rc": "INVALID",
                                    "message": "address 192.168.1.1 belongs to endpoint web1"}
        assert h.request(dict(widen, type=messages.ENDPOINTCREATED))["rc"] == "INVALID"
        # A new endpoint with web1's address.
        assert h.request(endpoint(endpoint_id="evil", addr="192.168.1.1"))["message"] == \
            "address 192.168.1.1 belongs to endpoint web1"
    h.step()
    assert len(h.dataplane.applied) == applied  # nothing widened, nothing to program
    assert h.agent.table.get("db1") == before and "evil" not in h.agent.table
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 3


def test_ids_sharing_an_interface_are_refused_naming_the_owner(h):
    synced(h, endpoint(endpoint_id="abcdefghijk-1"))
    reply = h.request(endpoint(endpoint_id="abcdefghijk-2", addr="192.168.1.2"))
    assert reply["rc"] == "INVALID"
    assert reply["message"].startswith("interface tapabcdefghijk belongs to endpoint abcdefghijk-1")


def test_an_address_let_go_of_can_be_taken_and_a_parked_claim_is_taken_then(h):
    synced(h, endpoint(endpoint_id="a", addr="192.168.1.1"))
    assert h.request(endpoint(endpoint_id="b", addr="192.168.1.1"))["rc"] == "INVALID"
    # a moves away: the plugin's order of the two messages does not matter.
    assert h.request(endpoint(messages.ENDPOINTUPDATED, endpoint_id="a", addr="192.168.1.5"))["rc"] == "SUCCESS"
    h.step()
    assert h.agent.table.get("b").addrs == ("192.168.1.1",)
    assert h.agent.table.owner_of("192.168.1.1") == "b" and h.agent.table.owner_of("192.168.1.5") == "a"


def test_newer_news_replaces_a_parked_claim(h):
    synced(h, endpoint(endpoint_id="a", addr="192.168.1.1"))
    h.request(endpoint(endpoint_id="b", addr="192.168.1.1"))
    h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="b"))
    h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="a"))
    assert "b" not in h.agent.table


def test_a_resync_refusing_an_address_held_by_a_stale_endpoint_still_converges(h):
    synced(h, endpoint(endpoint_id="old", addr="192.168.1.1"))
    h.advance(1800)
    resync_id = h.expect_resync()["resync_id"]
    h.answer_resync(1)
    # The address moved to "new" while we were not listening; "old" is stale.
    reply = h.request(endpoint(endpoint_id="new", addr="192.168.1.1", resync_id=resync_id))
    assert reply["rc"] == "INVALID"  # refused, but counted: the resync completes
    assert h.agent.resync.current is None
    h.step()
    assert list(h.last_desired) == ["new"] and h.last_desired["new"].addrs == ("192.168.1.1",)


def test_refused_announcements_count_towards_the_resync(h_default_pools):
    h = h_default_pools
    resync_id = h.expect_resync()["resync_id"]
    h.answer_resync(3)
    assert h.request(endpoint(endpoint_id="a", resync_id=resync_id))["rc"] == "SUCCESS"
    outside = endpoint(endpoint_id="b", addr="10.9.9.9", resync_id=resync_id)
    assert h.request(outside)["rc"] == "INVALID"
    assert h.request(outside)["rc"] == "INVALID"  # a retried message counts once
    assert h.agent.resync.synced_at is None
    assert h.request(endpoint(endpoint_id="c", addr="192.168.1.1", resync_id=resync_id))["rc"] == "INVALID"
    assert h.agent.resync.synced_at is not None


def test_max_endpoints_refuses_creations_with_one_line_and_takes_them_when_there_is_room(caplog):
    h = Harness(max_endpoints=3)
    try:
        h.agent.start()
        synced(h, *(endpoint(endpoint_id=f"e{i}", addr=f"192.168.1.{i + 1}") for i in range(3)))
        with caplog.at_level(logging.DEBUG, logger="calico.felix"):
            for i in range(3, 8):
                reply = h.request(endpoint(endpoint_id=f"e{i}", addr=f"192.168.1.{i + 1}"))
                assert reply == {"type": "ENDPOINTCREATED", "rc": "INVALID",
                                 "message": "this host already has 3 endpoints (MaxEndpoints 3)"}
            # Updates of endpoints it has are still taken.
            assert h.request(endpoint(endpoint_id="e0", addr="192.168.1.100"))["rc"] == "SUCCESS"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "MaxEndpoints 3" in warnings[0].getMessage()
        assert len(h.agent.table) == 3
        h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="e1"))
        assert len(h.agent.table) == 3 and "e3" in h.agent.table  # the first one waiting
    finally:
        h.close()


def test_a_resync_drops_claims_parked_before_it(h):
    synced(h, endpoint(endpoint_id="a", addr="192.168.1.1"))
    h.request(endpoint(endpoint_id="b", addr="192.168.1.1"))  # parked
    h.advance(1800)
    resync_id = h.expect_resync()["resync_id"]
    h.answer_resync(1)
    h.request(endpoint(endpoint_id="a", addr="192.168.1.1", resync_id=resync_id))  # the plugin no longer has b
    h.request(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="a"))
    assert "b" not in h.agent.table


def test_group_members_outside_the_pools_never_reach_the_dataplane(caplog):
    h = Harness(ip_pool=("192.168.0.0/16",), ip_pool6=("fd00:1::/64",))
    h.agent.start()
    try:
        with caplog.at_level(logging.WARNING, logger="calico.felix"):
            web_synced(h, addrs=["192.168.1.1", "10.240.0.250", "fd00:1::1", "fd00:2::1"])
        assert h.last_groups == {"web": {"192.168.1.1", "fd00:1::1"}}
        assert any("ignoring 2 address(es) outside the pools" in m and "10.240.0.250 fd00:2::1" in m
                   for m in caplog.messages)
        h.publish_members(membersupdate(seq=2, added=["10.240.0.251", "192.168.1.2"]))
        h.step()
        assert h.last_groups == {"web": {"192.168.1.1", "192.168.1.2", "fd00:1::1"}}
    finally:
        h.close()
