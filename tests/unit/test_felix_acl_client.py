"""Felix's ACL client alone: publications handed in as frames, a recording
subscription and REQ channel in place of the sockets."""

from __future__ import annotations

import logging

import netaddr
import pytest

from calico.common import messages
from calico.felix.acl_client import AclClient, inside_pools
from calico.felix.endpoints import EndpointTable
from calico.felix.metrics import FelixMetrics
from calico.felix.state import EndpointSpec

POOLS = {4: (netaddr.IPNetwork("10.0.0.0/8"),), 6: ()}
WEB = {"v4": {"inbound": [{"group": "web"}], "outbound": [], "inbound_default": "deny",
              "outbound_default": "deny"}}
DB = {"v4": {"inbound": [{"group": "db"}], "outbound": [], "inbound_default": "deny", "outbound_default": "deny"}}


class Subscription:
    """Stands in for AclSubscription: the topics held, in the order taken."""

    def __init__(self, topics, on_frames) -> None:
        self.topics_of_client = topics
        self.on_frames = on_frames
        self.log: list[tuple[str, bytes]] = []

    def subscribe(self, topic: bytes) -> None:
        self.log.append(("+", topic))

    def unsubscribe(self, topic: bytes) -> None:
        self.log.append(("-", topic))

    def close(self) -> None:
        pass


class Channel:
    def __init__(self, on_reply, on_reset) -> None:
        self.on_reply, self.on_reset = on_reply, on_reset
        self.sent: list[dict] = []

    def send(self, msg) -> None:
        self.sent.append(msg)

    def clear(self) -> None:
        pass

    def close(self) -> None:
        pass


class Felix:
    def __init__(self) -> None:
        self.table = EndpointTable(POOLS)
        self.dirty = 0
        self.client = AclClient(Channel, Subscription, self.table, FelixMetrics(), mark_dirty=self.mark_dirty)

    def mark_dirty(self) -> None:
        self.dirty += 1

    def create(self, endpoint_id: str) -> None:
        self.table.upsert(EndpointSpec(endpoint_id, "aa:bb:cc:dd:ee:01", ()))
        self.client.watch(endpoint_id)

    def acls(self, endpoint_id: str, acls: dict) -> None:
        self.client.on_frames([endpoint_id.encode(), messages.encode(messages.make(messages.ACLUPDATE, acls=acls))])

    def members(self, group: str, msg_type: str = messages.GROUPMEMBERS, **fields) -> None:
        self.client.on_frames([messages.members_topic(group),
                               messages.encode(messages.make(msg_type, group=group, epoch="e1", **fields))])

    @property
    def sub_log(self):
        return self.client.subscription.log

    @property
    def asked(self):
        return [(m["type"], m["group"]) for m in self.client.acl_manager.sent]


@pytest.fixture
def felix():
    return Felix()


def test_a_new_endpoint_is_subscribed_once(felix):
    felix.create("a")
    felix.client.watch("a")
    assert felix.sub_log == [("+", b"a")]


def test_acls_naming_a_group_subscribe_to_its_members_and_wait_for_them(felix):
    felix.create("a")
    felix.acls("a", WEB)
    assert felix.table.get("a").acls.groups == {"web"} and felix.dirty == 1
    assert felix.sub_log[-1] == ("+", messages.members_topic("web"))
    assert felix.client.groups.unknown() == ["web"]
    felix.members("web", seq=1, addrs=["10.1.0.1"])
    assert felix.client.groups.known() == {"web": {"10.1.0.1"}} and felix.dirty == 2


def test_forgetting_an_endpoint_lets_go_of_everything_it_held(felix, caplog):
    felix.create("a")
    with caplog.at_level(logging.WARNING, logger="calico.felix.acl_client"):
        felix.acls("a", dict(WEB, v6={"inbound": [{"cidr": "not-a-cidr"}], "outbound": []}))
    assert len(caplog.records) == 1  # the skipped rule
    felix.client.forget("a")
    felix.table.remove("a")
    assert felix.sub_log[-2:] == [("-", b"a"), ("-", messages.members_topic("web"))]
    assert felix.client.groups.needed() == [] and list(felix.client.topics()) == []
    # Back again, its skipped rule is news again: nothing of the old record survived.
    felix.create("a")
    with caplog.at_level(logging.WARNING, logger="calico.felix.acl_client"):
        felix.acls("a", dict(WEB, v6={"inbound": [{"cidr": "not-a-cidr"}], "outbound": []}))
    assert len(caplog.records) == 2


def test_a_skipped_rule_is_reported_once_while_it_stays(felix, caplog):
    felix.create("a")
    bad = dict(WEB, v6={"inbound": [{"cidr": "not-a-cidr"}], "outbound": []})
    with caplog.at_level(logging.WARNING, logger="calico.felix.acl_client"):
        felix.acls("a", bad)
        felix.acls("a", bad)
    assert len(caplog.records) == 1


def test_acls_for_an_endpoint_not_held_here_are_ignored(felix):
    felix.acls("stranger", WEB)
    assert felix.dirty == 0 and felix.sub_log == []


def test_moving_to_another_group_swaps_the_subscriptions(felix):
    felix.create("a")
    felix.acls("a", WEB)
    felix.acls("a", DB)
    assert felix.sub_log[-2:] == [("+", messages.members_topic("db")), ("-", messages.members_topic("web"))]


def test_the_topics_to_reopen_with_are_every_endpoint_then_every_needed_group(felix):
    felix.create("b")
    felix.create("a")
    felix.acls("a", WEB)
    assert list(felix.client.topics()) == [b"b", b"a", messages.members_topic("web")]


def test_a_gap_asks_for_the_whole_group_once_and_a_reset_asks_again(felix):
    felix.create("a")
    felix.acls("a", WEB)
    felix.members("web", seq=1, addrs=["10.1.0.1"])
    felix.members("web", msg_type=messages.MEMBERSUPDATE, seq=5, added=["10.1.0.2"], removed=[])
    felix.members("web", msg_type=messages.MEMBERSUPDATE, seq=6, added=["10.1.0.3"], removed=[])
    assert felix.asked == [(messages.GETGROUPMEMBERS, "web")]
    assert felix.client.groups.known() == {"web": {"10.1.0.1"}}  # kept meanwhile
    felix.client.acl_manager.on_reset()
    assert felix.asked == [(messages.GETGROUPMEMBERS, "web")] * 2
    felix.members("web", seq=6, addrs=["10.1.0.1", "10.1.0.2", "10.1.0.3"])
    felix.client.acl_manager.on_reset()
    assert len(felix.asked) == 2  # answered: nothing left to ask for


def test_members_outside_the_pools_are_dropped():
    msg = messages.make(messages.GROUPMEMBERS, group="web", epoch="e1", seq=1, addrs=["10.1.0.1", "8.8.8.8"])
    assert inside_pools(msg, POOLS)["addrs"] == ["10.1.0.1"]
    update = messages.make(messages.MEMBERSUPDATE, group="web", epoch="e1", seq=2, added=["1.1.1.1"],
                           removed=["8.8.8.8"])
    assert inside_pools(update, POOLS) == dict(update, added=[])


def test_a_publication_without_two_frames_is_ignored(felix, caplog):
    with caplog.at_level(logging.WARNING, logger="calico.felix.acl_client"):
        felix.client.on_frames([b"only-a-topic"])
    assert caplog.messages == ["ACL publication with 1 frame(s) ignored (want topic and body)"]
