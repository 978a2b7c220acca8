"""Felix's subscription to the ACL manager alone: recording SUB sockets, a
loop that only keeps handlers, a clock that is a number."""

from __future__ import annotations

import logging

import pytest
import zmq

from calico.common import messages
from calico.felix.acl_subscription import AclSubscription

TIMEOUT_MS = 6000


class Socket:
    def __init__(self) -> None:
        self.options: list[tuple[int, bytes]] = []
        self.inbox: list[list[bytes]] = []
        self.closed = False

    def setsockopt(self, option: int, value: bytes) -> None:
        self.options.append((option, value))

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.inbox:
            raise zmq.Again()
        return self.inbox.pop(0)

    def close(self, linger: int | None = None) -> None:
        self.closed = True


class Loop:
    def __init__(self) -> None:
        self.now = 100.0
        self.handlers: dict[Socket, object] = {}

    def clock(self) -> float:
        return self.now

    def add_socket(self, sock, handler) -> None:
        self.handlers[sock] = handler

    def remove_socket(self, sock) -> None:
        del self.handlers[sock]


class Felix:
    def __init__(self) -> None:
        self.loop = Loop()
        self.sockets: list[Socket] = []
        self.topics = [b"ep1", messages.members_topic("web")]
        self.frames: list[list[bytes]] = []
        self.sub = AclSubscription(self.loop, self.open, "tcp://acl:9906", TIMEOUT_MS, topics=lambda: self.topics,
                                   on_frames=self.frames.append)

    def open(self) -> Socket:
        self.sockets.append(Socket())
        return self.sockets[-1]

    def deliver(self, *frames: bytes) -> None:
        sock = self.sub.socket
        sock.inbox.append(list(frames))
        self.loop.handlers[sock]()


@pytest.fixture
def felix():
    return Felix()


def test_opening_subscribes_to_the_heartbeat_and_every_topic(felix):
    assert felix.sockets[0].options == [(zmq.SUBSCRIBE, messages.TOPIC_ACL_HEARTBEAT), (zmq.SUBSCRIBE, b"ep1"),
                                        (zmq.SUBSCRIBE, messages.members_topic("web"))]
    assert felix.sockets[0] in felix.loop.handlers and not felix.sub.live


def test_publications_are_handed_on_and_mean_the_acl_manager_is_heard(felix, caplog):
    with caplog.at_level(logging.INFO, logger="calico.felix.acl_subscription"):
        felix.deliver(b"ep1", b"body")
        felix.deliver(b"ep1", b"again")
    assert felix.frames == [[b"ep1", b"body"], [b"ep1", b"again"]] and felix.sub.live
    assert caplog.messages == ["ACL manager: publications arriving from tcp://acl:9906"]


def test_a_silent_subscription_is_made_afresh_with_what_is_held_now(felix, caplog):
    felix.deliver(b"ep1", b"body")
    felix.topics = [b"ep2"]
    felix.loop.now += 5.9
    assert felix.sub.timer(felix.loop.now) == pytest.approx(0.1)
    felix.loop.now += 0.1
    with caplog.at_level(logging.WARNING, logger="calico.felix.acl_subscription"):
        assert felix.sub.timer(felix.loop.now) == pytest.approx(6.0)
    old, new = felix.sockets
    assert old.closed and old not in felix.loop.handlers and new in felix.loop.handlers
    assert new.options == [(zmq.SUBSCRIBE, messages.TOPIC_ACL_HEARTBEAT), (zmq.SUBSCRIBE, b"ep2")]
    assert not felix.sub.live and "subscribing afresh" in caplog.text


def test_a_subscription_never_heard_is_reopened_every_timeout_quietly(felix, caplog):
    with caplog.at_level(logging.INFO, logger="calico.felix.acl_subscription"):
        for _ in range(3):
            felix.loop.now += 6.0
            felix.sub.timer(felix.loop.now)
    assert len(felix.sockets) == 4 and caplog.messages == []


def test_subscribe_and_unsubscribe_go_to_the_socket_open_now(felix):
    felix.sub.subscribe(b"ep9")
    felix.sub.unsubscribe(b"ep1")
    assert felix.sockets[0].options[-2:] == [(zmq.SUBSCRIBE, b"ep9"), (zmq.UNSUBSCRIBE, b"ep1")]
