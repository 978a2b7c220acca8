"""The network API: publish every security group to the ACL manager.

See docs/protocol.md, "Groups: plugin and ACL manager".

A REP socket (port 9903) answers GETGROUPS, after which every current group
is published at once, and HEARTBEAT.  Only the ACL manager's key may connect to either
(``calico.common.security``).  A PUB socket (port 9904) carries
GROUPUPDATE on topic ``groups`` whenever a group's members or rules change
(a group whose last member left goes out once with no members: deleted),
and HEARTBEAT on topic ``networkheartbeat`` every keepalive interval so a
subscriber can tell a quiet plugin from a dead one.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import zmq

from calico.common import messages, security
from calico.common.heartbeat import PubHeartbeat
from calico.common.rep_server import answer_one
from calico.common.security import Transport
from calico.common.zmqloop import EventLoop, tcp_address
from calico.plugin.metrics import PluginMetrics
from calico.plugin.store import DataState, Group, StateChange

log = logging.getLogger(__name__)

REQUEST_TYPES = frozenset({messages.GETGROUPS, messages.HEARTBEAT})


class NetworkApi:
    def __init__(self, loop: EventLoop, transport: Transport, bind: str, keepalive_ms: int,
                 metrics: PluginMetrics | None = None):
        self.loop = loop
        self.metrics = metrics or PluginMetrics()
        self.published = 0
        self.getgroups = 0
        self.state = DataState()
        self.keepalive = keepalive_ms / 1000.0
        self.rep_address = tcp_address(bind, messages.PORT_NET_REQ)
        self.pub_address = tcp_address(bind, messages.PORT_NET_PUB)
        self.rep = transport.listen(zmq.REP, self.rep_address, security.ROLE_PLUGIN_NETWORK, security.DOMAIN_NET_REQ)
        # GETGROUPS publishes every group in one burst; the default high-water
        # mark (1000) would silently drop the tail of a large cluster's.
        self.pub = transport.listen(zmq.PUB, self.pub_address, security.ROLE_PLUGIN_NETWORK, security.DOMAIN_NET_PUB,
                                    options={zmq.SNDHWM: 100_000})
        loop.add_socket(self.rep, self._on_request)
        self._heartbeat = PubHeartbeat(self.pub, messages.TOPIC_NETWORK_HEARTBEAT, self.keepalive, loop.clock())
        loop.add_timer(self._heartbeat)

    def apply(self, state: DataState, change: StateChange, changed_at: Mapping[str, float] | None = None) -> None:
        """Publish the groups a change of the data directory touched
        (``changed_at``: when its files changed, for the latency metric)."""
        self.state = state
        level = logging.DEBUG if change.initial else logging.INFO
        # A group gathers members from many files: the batch's earliest change stands for it.
        earliest = None if change.initial or not changed_at else min(changed_at.values())
        for group in change.groups:
            log.log(level, "group %s: %s", group.name,
                    f"{len(group.members)} members" if group.members else "no members left: deleted")
            self._publish(group)
            if earliest is not None:
                self.metrics.latency(time.time() - earliest)
        if change.initial:
            log.info("data directory: %d groups, %d endpoints, %d problems",
                     len(state.groups), len(state.endpoints), state.problems)

    def _publish(self, group: Group) -> None:
        self.pub.send_multipart([messages.TOPIC_GROUPS, messages.encode(group.message())])
        self.published += 1
        self.metrics.group_published()

    def _on_request(self) -> None:
        answer_one(self.rep, self._answer, log, "network API")

    def _answer(self, frames: Sequence[bytes]) -> tuple[dict, Callable[[], None] | None]:
        """The reply to one request, and what follows it (every group, after GETGROUPS)."""
        try:
            if len(frames) != 1:
                raise messages.MessageError(f"want one frame, got {len(frames)}")
            request = messages.decode_request(frames[0], REQUEST_TYPES)
        except messages.MessageError as exc:
            log.warning("network API: bad request (%s); answered INVALID", exc)
            return messages.invalid_reply(exc), None
        follow_up = self._publish_every_group if request["type"] == messages.GETGROUPS else None
        return messages.reply(request["type"]), follow_up

    def _publish_every_group(self) -> None:
        self.getgroups += 1
        self.metrics.getgroups()
        log.info("network API: GETGROUPS: publishing all %d groups", len(self.state.groups))
        for group in self.state.groups.values():
            self._publish(group)

    def status(self) -> dict[str, Any]:
        """For /status."""
        return {"address": f"{self.rep_address} and {self.pub_address}", "group_updates_published": self.published,
                "getgroups_answered": self.getgroups}

    def close(self) -> None:
        self.loop.remove_timer(self._heartbeat)
        self.loop.remove_socket(self.rep)
        self.rep.close(linger=0)
        self.pub.close(linger=0)
