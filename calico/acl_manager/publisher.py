"""The ACL API: Felix's requests on ROUTER 9905, ACLUPDATEs on PUB 9906.

Felix connects a REQ socket to the ROUTER and asks GETACLSTATE for each
endpoint it owns; the reply only acknowledges (rc SUCCESS, also for an
endpoint we do not know yet), and the ACLs follow on the PUB socket under the
endpoint's id as topic.  We publish in reply to *every* GETACLSTATE because a
publication sent just after Felix subscribed can be lost (ZeroMQ's slow
joiner): Felix subscribes first, then asks, so the answer to its question is
the copy that arrives.  An endpoint we do not know gets nothing now; its
ACLs are published when a group first names it.

Only Felixes (the role every Felix shares, ``calico.common.security``) may
connect to either socket: the ACLs say who may reach whom, which is for
the hosts to know and nobody else.

A ROUTER socket lets one loop serve many Felixes without a REP socket's
strict request/reply lock-step: each request carries its envelope and the
reply goes back with it.  Bad requests (not JSON, unknown type, missing or
bad fields) get rc INVALID with the reason and one log line; the socket
keeps serving.

The PUB socket also carries ``aclheartbeat`` every keepalive interval so
Felix can tell a quiet ACL manager from a dead one.
"""

from __future__ import annotations

import logging
from typing import Callable

import zmq

from calico.common import messages, security
from calico.common.security import Transport
from calico.common.zmqloop import EventLoop, tcp_address
from calico.acl_manager.rule_processor import EndpointAcls

log = logging.getLogger(__name__)

REQUEST_TYPES = frozenset({messages.GETACLSTATE, messages.HEARTBEAT})
# Enough for every endpoint of a large host in one burst: a PUB socket drops
# (silently) what exceeds its high-water mark for a slow subscriber.
PUB_HWM = 200_000
MAX_BATCH = 500  # requests handled per wake-up, so timers still run under load


def aclupdate_body(acls: EndpointAcls, issued: int) -> bytes:
    """The ACLUPDATE JSON, spliced from the cached ACL text (shared by many endpoints)."""
    return b'{"acls":%s,"issued":%d,"type":"ACLUPDATE"}' % (acls.wire_json, issued)


class AclPublisher:
    def __init__(self, loop: EventLoop, transport: Transport, bind_address: str,
                 lookup: Callable[[str], EndpointAcls | None], keepalive_ms: int):
        self.loop = loop
        self.lookup = lookup
        self.keepalive = keepalive_ms / 1000.0
        self.router = transport.listen(zmq.ROUTER, tcp_address(bind_address, messages.PORT_ACL_REQ),
                                       security.ROLE_ACL_MANAGER, security.DOMAIN_ACL_REQ)
        self.pub = transport.listen(zmq.PUB, tcp_address(bind_address, messages.PORT_ACL_PUB),
                                    security.ROLE_ACL_MANAGER, security.DOMAIN_ACL_PUB, options={zmq.SNDHWM: PUB_HWM})
        self.next_heartbeat = loop.clock()
        self.published = 0
        loop.add_socket(self.router, self._on_readable)
        loop.add_timer(self._heartbeat)
        log.info("serving the ACL API on %s (requests) and %s (publications)",
                 tcp_address(bind_address, messages.PORT_ACL_REQ), tcp_address(bind_address, messages.PORT_ACL_PUB))

    def publish(self, endpoint_id: str, acls: EndpointAcls) -> None:
        self.pub.send_multipart([endpoint_id.encode(), aclupdate_body(acls, messages.now_ms())])
        self.published += 1
        log.debug("published ACLUPDATE for %s (%d rules)", endpoint_id, acls.rule_count)

    def publish_all(self, changes: dict[str, EndpointAcls]) -> None:
        for endpoint_id in sorted(changes):
            self.publish(endpoint_id, changes[endpoint_id])

    def _heartbeat(self, now: float) -> float:
        if now >= self.next_heartbeat:
            self.pub.send_multipart([messages.TOPIC_ACL_HEARTBEAT, messages.encode(messages.make(messages.HEARTBEAT))])
            self.next_heartbeat = now + self.keepalive
        return self.next_heartbeat - now

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
        self.router.close(linger=0)
        self.pub.close(linger=0)
