"""The ACL manager's publisher: every subscription is answered with the current state.

The real ``AclPublisher`` on inproc sockets (a transport that binds inproc
instead of TCP), with a SUB and a REQ standing in for Felix.  Whole-process
behaviour (CURVE, TCP, restarts) is in tests/component.
"""

from __future__ import annotations

import itertools
import time

import pytest
import zmq

from calico.acl_manager.memberships import Memberships
from calico.acl_manager.publisher import AclPublisher
from calico.acl_manager.rule_processor import EndpointAcls
from calico.common import messages
from calico.common.rules import Rule
from calico.common.zmqloop import EventLoop

_tags = itertools.count()
ACLS = EndpointAcls(v4_inbound=(Rule(group="web"),), v6_inbound=(Rule(group="web"),))


class InprocTransport:
    """Binds where the publisher asks, but on inproc (keyed by port)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.tag = next(_tags)
        self.sockets: list[zmq.Socket] = []

    def address(self, port: int) -> str:
        return f"inproc://acl-{self.tag}-{port}"

    def listen(self, kind, address, role, domain, admit=None, options=None):
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        sock.bind(self.address(int(address.rsplit(":", 1)[1])))
        return sock


class Harness:
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.loop = EventLoop(clock=lambda: 1000.0)
        self.transport = InprocTransport(self.ctx)
        self.acls: dict[str, EndpointAcls] = {}
        self.memberships = Memberships("abc")
        self.publisher = AclPublisher(self.loop, self.transport, "127.0.0.1", self.acls.get, 2000,
                                      members=self.memberships.snapshot)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(self.transport.address(messages.PORT_ACL_PUB))
        self.req = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(self.transport.address(messages.PORT_ACL_REQ))

    def close(self) -> None:
        self.publisher.close()
        self.ctx.destroy(linger=0)

    def step(self) -> None:
        for _ in range(3):
            self.loop.run_once(max_wait=0.0)

    def subscribe(self, topic: bytes) -> None:
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.step()

    def received(self, wait: float = 0.0) -> list[tuple[bytes, dict]]:
        """Publications now waiting at the SUB (heartbeats left out)."""
        out = []
        deadline = time.monotonic() + wait
        while True:
            self.step()
            if self.sub.poll(0):
                topic, body = self.sub.recv_multipart()
                if topic != messages.TOPIC_ACL_HEARTBEAT:
                    out.append((topic, messages.json.loads(body)))
                continue
            if time.monotonic() >= deadline:
                return out
            time.sleep(0.005)

    def request(self, msg: dict) -> dict:
        self.req.send(messages.encode(msg))
        deadline = time.monotonic() + 5
        while not self.req.poll(0):
            assert time.monotonic() < deadline, "no reply"
            self.loop.run_once(max_wait=0.01)
        return messages.json.loads(self.req.recv())


@pytest.fixture
def h():
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def test_a_subscription_to_an_endpoint_is_answered_with_its_aclupdate(h):
    h.acls["ep1"] = ACLS
    h.subscribe(b"ep1")
    got = h.received()
    assert [(topic, msg["type"]) for topic, msg in got] == [(b"ep1", "ACLUPDATE")]
    assert got[0][1]["acls"]["v4"]["inbound"] == [{"group": "web", "cidr": None, "protocol": None, "port": None}]


def test_a_subscription_to_an_unknown_endpoint_gets_nothing_until_its_acls_exist(h):
    h.subscribe(b"ep1")
    assert h.received(wait=0.05) == []
    h.acls["ep1"] = ACLS
    h.publisher.publish_all({"ep1": ACLS})
    assert [topic for topic, _ in h.received()] == [b"ep1"]


def test_a_subscription_to_a_groups_topic_is_answered_with_its_groupmembers(h):
    h.memberships.update({"web": frozenset({"10.0.0.2", "fd00::1", "10.0.0.1"})})
    h.subscribe(messages.members_topic("web"))
    got = h.received()
    assert [topic for topic, _ in got] == [b":members:web:"]
    msg = got[0][1]
    assert (msg["type"], msg["group"], msg["epoch"], msg["seq"], msg["addrs"]) == (
        "GROUPMEMBERS", "web", "abc", 1, ["10.0.0.1", "10.0.0.2", "fd00::1"])


def test_every_repeat_of_a_subscription_is_answered_again(h):
    """XPUB_VERBOSE: a second Felix subscribing to a topic the first one
    already holds must get the state too."""
    h.memberships.update({"web": frozenset({"10.0.0.1"})})
    h.subscribe(messages.members_topic("web"))
    assert len(h.received()) == 1
    other = h.ctx.socket(zmq.SUB)
    other.setsockopt(zmq.LINGER, 0)
    other.connect(h.transport.address(messages.PORT_ACL_PUB))
    other.setsockopt(zmq.SUBSCRIBE, messages.members_topic("web"))
    h.step()
    assert other.poll(1000)
    topic, body = other.recv_multipart()
    assert topic == b":members:web:" and messages.json.loads(body)["type"] == "GROUPMEMBERS"
    assert [topic for topic, _ in h.received()] == [b":members:web:"]  # the topic's first subscriber sees it too
    other.close()


def test_subscriptions_to_untracked_groups_and_other_topics_are_ignored(h):
    h.acls["ep1"] = ACLS
    for topic in (messages.members_topic("nobody"), b":members:bad name:", b"", b"\xff\xfe",
                  b"-rf", messages.TOPIC_ACL_HEARTBEAT):
        h.subscribe(topic)
    assert h.publisher.published == 0 and h.publisher.published_members == 0
    assert h.request(messages.make(messages.HEARTBEAT))["rc"] == "SUCCESS"  # still serving


def test_getgroupmembers_is_acknowledged_with_the_group_then_the_groupmembers_published(h):
    h.memberships.update({"web": frozenset({"10.0.0.1"})})
    h.memberships.update({"web": frozenset({"10.0.0.1", "10.0.0.2"})})
    h.subscribe(messages.members_topic("web"))
    h.received()  # the answer to the subscription
    reply = h.request(messages.make(messages.GETGROUPMEMBERS, group="web"))
    assert reply == {"type": "GETGROUPMEMBERS", "rc": "SUCCESS", "message": "", "group": "web"}
    got = h.received()
    assert [(msg["type"], msg["seq"], msg["addrs"]) for _, msg in got] == [
        ("GROUPMEMBERS", 2, ["10.0.0.1", "10.0.0.2"])]


def test_getgroupmembers_of_an_untracked_group_is_acknowledged_and_publishes_nothing(h):
    h.subscribe(messages.members_topic("web"))
    reply = h.request(messages.make(messages.GETGROUPMEMBERS, group="web"))
    assert reply["rc"] == "SUCCESS" and reply["group"] == "web"
    assert h.received(wait=0.05) == []


def test_a_bad_getgroupmembers_is_invalid_and_the_router_keeps_serving(h):
    reply = h.request({"type": "GETGROUPMEMBERS", "group": "bad name"})
    assert reply["type"] == "GETGROUPMEMBERS" and reply["rc"] == "INVALID" and "'group'" in reply["message"]
    assert h.request(messages.make(messages.HEARTBEAT))["rc"] == "SUCCESS"


def test_publish_members_goes_out_on_the_groups_topic_and_is_counted(h):
    h.subscribe(messages.members_topic("web"))
    out = h.memberships.update({"web": frozenset({"10.0.0.1"})})
    out += h.memberships.update({"web": frozenset({"10.0.0.2"})})
    for group, msg in out:
        h.publisher.publish_members(group, msg)
    got = h.received()
    assert [(topic, msg["type"], msg["seq"]) for topic, msg in got] == [
        (b":members:web:", "GROUPMEMBERS", 1), (b":members:web:", "MEMBERSUPDATE", 2)]
    assert h.publisher.published_members == 2
    assert h.publisher.published_bytes == sum(len(messages.encode(msg)) for _, msg in out)
