"""The publishers' keepalive: a HEARTBEAT on a topic of their own.

The plugin's network API (``networkheartbeat``) and the ACL manager
(``aclheartbeat``) publish one every ConnectionKeepaliveIntervalMillis, so
a subscriber can tell a quiet publisher from a dead one; the REQ side's
keepalive is ``calico.common.zmqloop.ReqChannel``'s.
"""

from __future__ import annotations

from typing import Any

from calico.common import messages


class PubHeartbeat:
    """An event-loop timer: publish HEARTBEAT on ``topic`` now, then every
    ``interval`` seconds."""

    def __init__(self, sock: Any, topic: bytes, interval: float, start: float) -> None:
        self.sock = sock
        self.topic = topic
        self.interval = interval
        self.next_at = start

    def __call__(self, now: float) -> float:
        if now >= self.next_at:
            self.sock.send_multipart([self.topic, messages.encode(messages.make(messages.HEARTBEAT))])
            self.next_at = now + self.interval
        return self.next_at - now
