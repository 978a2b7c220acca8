"""Felix's subscription to the ACL manager's publisher (the SUB socket).

The ACL manager's XPUB answers every subscription with the current state,
and a SUB socket repeats its subscriptions by itself whenever it
reconnects, so a restarted ACL manager hears them all again
(docs/protocol.md, "ACLs and memberships: ACL manager and Felix").  But
libzmq never reconnects a connection it dropped for a protocol error (a
publication over MaxMessageBytes, a failed handshake), so a subscription
quiet for ConnectionTimeoutMillis (not even ``aclheartbeat``) is made
afresh, which subscribes to everything again; the ACLs already programmed
stay in force meanwhile.

This part owns only the socket and whether the ACL manager is heard; which
topics to hold is the ACL client's (``topics``), asked on every opening.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol

import zmq

from calico.common import messages

log = logging.getLogger(__name__)


class Loop(Protocol):
    """What we need of a ``zmqloop.EventLoop``."""

    clock: Callable[[], float]

    def add_socket(self, sock: zmq.Socket, handler: Callable[[], None]) -> None: ...
    def remove_socket(self, sock: zmq.Socket) -> None: ...


class AclSubscription:
    def __init__(self, loop: Loop, open_socket: Callable[[], zmq.Socket], address: str, timeout_ms: int, *,
                 topics: Callable[[], Iterable[bytes]], on_frames: Callable[[list[bytes]], None]) -> None:
        """``open_socket`` makes a SUB socket connected to ``address``;
        ``topics`` are what to subscribe to besides the heartbeat;
        ``on_frames`` gets each publication."""
        self.loop = loop
        self.address = address
        self.timeout = timeout_ms / 1000.0
        self._open_socket = open_socket
        self._topics = topics
        self._on_frames = on_frames
        now = loop.clock()
        self.live = False
        self.heard_at = now
        self.socket = self._open()
        self._reopen_at = now + self.timeout

    def _open(self) -> zmq.Socket:
        sock = self._open_socket()
        sock.setsockopt(zmq.SUBSCRIBE, messages.TOPIC_ACL_HEARTBEAT)
        for topic in self._topics():
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.loop.add_socket(sock, self._readable)
        return sock

    def _reopen(self) -> None:
        log.debug("ACL manager: opening the subscription to %s afresh", self.address)
        self.loop.remove_socket(self.socket)
        self.socket.close(linger=0)
        self.socket = self._open()

    def subscribe(self, topic: bytes) -> None:
        self.socket.setsockopt(zmq.SUBSCRIBE, topic)

    def unsubscribe(self, topic: bytes) -> None:
        self.socket.setsockopt(zmq.UNSUBSCRIBE, topic)

    def _readable(self) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._heard()
            self._on_frames(frames)

    def _heard(self) -> None:
        self.heard_at = self.loop.clock()
        if self.live:
            return
        self.live = True
        log.info("ACL manager: publications arriving from %s", self.address)

    def timer(self, now: float) -> float:
        if self.live and now - self.heard_at >= self.timeout:
            self.live = False
            log.warning("ACL manager: nothing heard on %s for %.1fs; subscribing afresh (the ACLs we have stay "
                        "in force)", self.address, now - self.heard_at)
            self._reopen()
            self._reopen_at = now + self.timeout
        elif not self.live and now >= self._reopen_at:
            self._reopen()
            self._reopen_at = now + self.timeout
        if self.live:
            return max(self.heard_at + self.timeout - now, 0.0)
        return max(self._reopen_at - now, 0.0)

    def close(self) -> None:
        self.loop.remove_socket(self.socket)
        self.socket.close(linger=0)
