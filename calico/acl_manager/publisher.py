"""The ACL API: Felix's requests on ROUTER 9905, publications on XPUB 9906.

See docs/protocol.md, "ACLs and memberships: ACL manager and Felix".

Publications (topic, body):

* ``<endpoint id>``: ACLUPDATE, the endpoint's rules (group rules name the
  group; see ``rule_processor``);
* ``:members:<group>:``: GROUPMEMBERS (the whole membership) and
  MEMBERSUPDATE (the change since the previous sequence number; see
  ``memberships``);
* ``aclheartbeat``: HEARTBEAT every keepalive interval, so Felix can tell a
  quiet ACL manager from a dead one.

The publishing socket is an XPUB with ZMQ_XPUB_VERBOSE: it hands us every
subscription a Felix makes, including repeats of a topic other Felixes
already hold, and by the time we read one the subscriber is already
registered, so what we publish in answer reaches it.  Every subscription to
an endpoint we know is answered with its ACLUPDATE and every subscription
to a group we track with its GROUPMEMBERS.  That is the whole start of a
conversation: Felix subscribes and the state arrives, with no request and
no slow-joiner race.  (A SUB socket re-sends its subscriptions by itself
whenever it reconnects, so a restarted ACL manager hears them all again.)

Requests on the ROUTER (Felix's REQ):
* GETACLSTATE ``endpoint_id``: acknowledged, then the ACLUPDATE published
  (nothing if no group names the endpoint yet: it follows when one does);
* GETGROUPMEMBERS ``group``: acknowledged, then the GROUPMEMBERS published;
  Felix asks after a gap in a group's sequence numbers;
* HEARTBEAT.

Only Felixes (the role every Felix shares, ``calico.common.security``) may
connect to either socket: the ACLs say who may reach whom, which is for
the hosts to know and nobody else.  Bad requests (not JSON, unknown type,
missing or bad fields) get rc INVALID with the reason and one log line, a
subscription to a topic that is neither an endpoint id nor a group's topic
is ignored; the sockets keep serving.
"""

from __future__ import annotations

import logging
from typing import Callable

import zmq

from calico.common import messages, security
from calico.common.heartbeat import PubHeartbeat
from calico.common.security import Transport
from calico.common.validation import ValidationError, check_endpoint_id, shown
from calico.common.zmqloop import EventLoop, tcp_address
from calico.acl_manager.metrics import AclMetrics
from calico.acl_manager.rule_processor import EndpointAcls

log = logging.getLogger(__name__)

REQUEST_TYPES = frozenset({messages.GETACLSTATE, messages.GETGROUPMEMBERS, messages.HEARTBEAT})
Snapshot = Callable[[str], "dict | None"]
# Enough for every endpoint of a large host in one burst: a PUB socket drops
# (silently) what exceeds its high-water mark for a slow subscriber.
PUB_HWM = 200_000
MAX_BATCH = 500  # requests (or subscriptions) handled per wake-up, so timers still run under load
_SUBSCRIBE = 1


def aclupdate_body(acls: EndpointAcls, issued: int) -> bytes:
    """The ACLUPDATE JSON, spliced from the cached ACL text (shared by many endpoints)."""
    return b'{"acls":%s,"issued":%d,"type":"ACLUPDATE"}' % (acls.wire_json, issued)


class AclPublisher:
    def __init__(self, loop: EventLoop, transport: Transport, bind_address: str,
                 lookup: Callable[[str], EndpointAcls | None], keepalive_ms: int,
                 members: Snapshot = lambda group: None, metrics: AclMetrics | None = None):
        self.loop = loop
        self.lookup = lookup
        self.members = members
        self.metrics = metrics or AclMetrics()
        self.keepalive = keepalive_ms / 1000.0
        self.router = transport.listen(zmq.ROUTER, tcp_address(bind_address, messages.PORT_ACL_REQ),
                                       security.ROLE_ACL_MANAGER, security.DOMAIN_ACL_REQ)
        self.pub = transport.listen(zmq.XPUB, tcp_address(bind_address, messages.PORT_ACL_PUB),
                                    security.ROLE_ACL_MANAGER, security.DOMAIN_ACL_PUB,
                                    options={zmq.SNDHWM: PUB_HWM, zmq.XPUB_VERBOSE: 1})
        self._heartbeat = PubHeartbeat(self.pub, messages.TOPIC_ACL_HEARTBEAT, self.keepalive, loop.clock())
        self.published = 0          # ACLUPDATEs
        self.published_members = 0  # GROUPMEMBERS and MEMBERSUPDATEs
        self.published_bytes = 0    # bodies of both
        loop.add_socket(self.router, self._on_readable)
        loop.add_socket(self.pub, self._on_subscriptions)
        loop.add_timer(self._heartbeat)
        log.info("serving the ACL API on %s (requests) and %s (publications)",
                 tcp_address(bind_address, messages.PORT_ACL_REQ), tcp_address(bind_address, messages.PORT_ACL_PUB))

    def publish(self, endpoint_id: str, acls: EndpointAcls) -> None:
        body = aclupdate_body(acls, messages.now_ms())
        self.pub.send_multipart([endpoint_id.encode(), body])
        self.published += 1
        self.published_bytes += len(body)
        self.metrics.published(1, {}, len(body))
        log.debug("published ACLUPDATE for %s (%d rules)", endpoint_id, acls.rule_count)

    def publish_all(self, changes: dict[str, EndpointAcls]) -> None:
        for endpoint_id in sorted(changes):
            self.publish(endpoint_id, changes[endpoint_id])

    def publish_members(self, group: str, msg: dict) -> None:
        """A GROUPMEMBERS or MEMBERSUPDATE on the group's topic."""
        body = messages.encode(msg)
        self.pub.send_multipart([messages.members_topic(group), body])
        self.published_members += 1
        self.published_bytes += len(body)
        self.metrics.published(0, {msg["type"]: 1}, len(body))
        log.debug("published %s for group %s (seq %d)", msg["type"], group, msg["seq"])

    def _publish_snapshot(self, group: str, why: str) -> None:
        msg = self.members(group)
        if msg is None:
            log.debug("%s for group %s: not tracked; its members follow when a rule names it", why, group)
            return
        self.publish_members(group, msg)

    def _on_subscriptions(self) -> None:
        # A GROUPMEMBERS reaches every subscriber of the group, so the
        # subscriptions read in one wake-up (many Felixes reconnecting at
        # once) are answered with one copy per group.
        groups: dict[str, None] = {}
        for _ in range(MAX_BATCH):
            try:
                frame = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not frame or frame[0] != _SUBSCRIBE:
                continue  # an unsubscription (or nothing): nothing to answer
            self._on_subscribe(frame[1:], groups)
        for group in groups:
            self._publish_snapshot(group, "subscription")

    def _on_subscribe(self, topic: bytes, groups: dict[str, None]) -> None:
        if topic == messages.TOPIC_ACL_HEARTBEAT:
            return
        group = messages.group_of_topic(topic)
        if group is not None:
            groups[group] = None
            return
        try:
            endpoint_id = check_endpoint_id(topic.decode("ascii"))
        except (UnicodeDecodeError, ValidationError):
            log.debug("subscription to topic %s ignored: neither an endpoint nor a group", shown(topic))
            return
        acls = self.lookup(endpoint_id)
        if acls is not None:
            self.publish(endpoint_id, acls)

    def _on_readable(self) -> None:
        for _ in range(MAX_BATCH):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        # A REQ peer sends [identity, b"", body]; anything between the
        # identity and the empty delimiter is more routing envelope.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1  # a DEALER without a delimiter: [identity, body]
        envelope, body = frames[:split], frames[split:]
        if len(body) != 1:
            log.warning("ACL API: request of %d body frames from peer %s, want 1; answering INVALID",
                        len(body), frames[0].hex())
            self._send(envelope, messages.reply("UNKNOWN", messages.RC_INVALID, "want exactly one message frame"))
            return
        try:
            request = messages.decode_request(body[0], REQUEST_TYPES)
        except messages.MessageError as exc:
            log.warning("ACL API: bad request from peer %s: %s", frames[0].hex(), exc)
            self._send(envelope, messages.invalid_reply(exc))
            return
        if request["type"] == messages.HEARTBEAT:
            self._send(envelope, messages.reply(messages.HEARTBEAT))
            return
        if request["type"] == messages.GETGROUPMEMBERS:
            self._send(envelope, messages.reply(messages.GETGROUPMEMBERS, group=request["group"]))
            self._publish_snapshot(request["group"], "GETGROUPMEMBERS")
            return
        endpoint_id = request["endpoint_id"]
        self._send(envelope, messages.reply(messages.GETACLSTATE, endpoint_id=endpoint_id))
        acls = self.lookup(endpoint_id)
        if acls is None:
            log.info("GETACLSTATE for %s: no group names it yet; its ACLs will follow when one does", endpoint_id)
            return
        log.debug("GETACLSTATE for %s: publishing its ACLs", endpoint_id)
        self.publish(endpoint_id, acls)

    def _send(self, envelope: list[bytes], msg: dict) -> None:
        try:
            self.router.send_multipart(envelope + [messages.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone (or its queue full): it will time out and retry
            log.info("ACL API: could not reply to peer %s: %s", envelope[0].hex(), exc)

    def close(self) -> None:
        self.loop.remove_socket(self.router)
        self.loop.remove_socket(self.pub)
        self.router.close(linger=0)
        self.pub.close(linger=0)
