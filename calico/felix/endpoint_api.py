"""Felix's endpoint API: the REP socket on which the plugin pushes endpoints.

ENDPOINTCREATED, ENDPOINTUPDATED, ENDPOINTDESTROYED and HEARTBEAT
(docs/protocol.md, "Endpoints: plugin and Felix"); every request gets a
reply, even one that fails unexpectedly, so the REP socket never wedges.

Felix checks what it is told, even by the plugin (``EndpointTable.refusal``):
an address outside the pools (IpPool, IpPool6), an address or interface
that is another endpoint's, or a creation beyond MaxEndpoints is answered
INVALID, and an endpoint we had keeps what it had.  A refused announcement
still counts towards its resync.  Refusals that may clear (the other
endpoint goes, the host gets room) are parked and taken when they do, so a
resync that announces an address before the stale endpoint holding it is
removed still converges.  Newer news for an endpoint replaces its parked
message, and a new resync drops them all (the plugin announces afresh
whatever it still has).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import zmq

from calico.common import messages
from calico.felix.endpoints import FULL, Change, EndpointTable, Refusal, spec_from_message
from calico.felix.metrics import FelixMetrics
from calico.felix.resync_client import ResyncClient
from calico.felix.state import EndpointSpec

log = logging.getLogger(__name__)

ENDPOINT_REQUESTS = frozenset({messages.ENDPOINTCREATED, messages.ENDPOINTUPDATED,
                               messages.ENDPOINTDESTROYED, messages.HEARTBEAT})


class EndpointApi:
    def __init__(self, socket: zmq.Socket, table: EndpointTable, resync: ResyncClient, metrics: FelixMetrics,
                 *, max_endpoints: int, on_created: Callable[[str], None], forget: Callable[[str], None],
                 mark_dirty: Callable[[], None]) -> None:
        """``on_created`` is told of each new endpoint (to hear its ACLs);
        ``forget`` removes a destroyed endpoint from every part of Felix."""
        self.socket = socket
        self.table = table
        self.resync = resync
        self.metrics = metrics
        self.max_endpoints = max_endpoints
        self._on_created = on_created
        self._forget = forget
        self._mark_dirty = mark_dirty
        self._parked: dict[str, dict[str, Any]] = {}  # endpoint id -> its refused message
        self._full_reported = False
        self.last_request_wall: float | None = None

    def on_readable(self) -> None:
        while True:
            try:
                raw = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.last_request_wall = time.time()
            try:
                answer = self.handle(raw)
            except Exception as exc:  # a bug must not wedge the REP socket
                log.exception("Endpoint request failed unexpectedly: %s", exc)
                answer = messages.reply("UNKNOWN", messages.RC_INVALID, f"internal error: {exc}")
            self.socket.send(messages.encode(answer))

    def handle(self, raw: bytes) -> dict[str, Any]:
        """One request from the plugin to its reply (never raises on bad input)."""
        try:
            msg = messages.decode_request(raw, ENDPOINT_REQUESTS)
        except messages.MessageError as exc:
            log.warning("Endpoint API: rejected request (%s)", exc)
            self.resync.count_rejected(raw)
            self.metrics.endpoint_request("rejected")
            return messages.invalid_reply(exc)
        msg_type = msg["type"]
        self.metrics.endpoint_request(msg_type)
        if msg_type == messages.HEARTBEAT:
            return messages.reply(messages.HEARTBEAT)
        if msg_type == messages.ENDPOINTDESTROYED:
            return self._destroy(msg["endpoint_id"])
        return self._create_or_update(msg)

    def _create_or_update(self, msg: dict[str, Any]) -> dict[str, Any]:
        msg_type = msg["type"]
        spec = spec_from_message(msg)
        endpoint_id = spec.endpoint_id
        self._parked.pop(endpoint_id, None)  # this message is newer
        if msg_type == messages.ENDPOINTUPDATED and endpoint_id not in self.table:
            log.warning("ENDPOINTUPDATED for unknown endpoint %s: NOTEXIST", endpoint_id)
            return messages.reply(msg_type, messages.RC_NOTEXIST, f"endpoint {endpoint_id} does not exist")
        refusal = self.table.refusal(spec)
        if refusal is not None:
            self._refuse(msg, refusal)
            # It still counts towards a resync; an endpoint we had keeps what it had.
            known = endpoint_id if endpoint_id in self.table else None
            self.resync.noted(msg_type, msg.get("resync_id"), endpoint_id, known)
            return messages.reply(msg_type, messages.RC_INVALID, refusal.reason)
        change = self._accept(spec)
        self.resync.noted(msg_type, msg.get("resync_id"), endpoint_id, endpoint_id)
        if change is Change.UPDATED:
            self.retry_parked()  # it may have let go of an address
        return messages.reply(msg_type)

    def _accept(self, spec: EndpointSpec, waited: bool = False) -> Change:
        endpoint_id = spec.endpoint_id
        change = self.table.upsert(spec)
        state = "enabled" if spec.enabled else "disabled"
        after = " (its conflict has cleared)" if waited else ""
        if change is Change.CREATED:
            log.info("Endpoint %s created: %s, mac %s, %s%s", endpoint_id,
                     " ".join(spec.addrs) or "no addresses", spec.mac, state, after)
            self._on_created(endpoint_id)
            self._mark_dirty()
        elif change is Change.UPDATED:
            log.info("Endpoint %s updated: %s, mac %s, %s%s", endpoint_id,
                     " ".join(spec.addrs) or "no addresses", spec.mac, state, after)
            self._mark_dirty()
        else:
            log.debug("Endpoint %s unchanged", endpoint_id)
        return change

    def _refuse(self, msg: dict[str, Any], refusal: Refusal) -> None:
        """One log line per refusal, except that a full host says so once
        until it has room again; conflicts that may clear are parked."""
        endpoint_id = msg["endpoint_id"]
        parked = refusal.may_clear and (endpoint_id in self._parked or len(self._parked) < self.max_endpoints)
        if parked:
            self._parked[endpoint_id] = {k: v for k, v in msg.items() if k != "resync_id"}
        full = refusal.kind == FULL
        level = logging.DEBUG if full and self._full_reported else logging.WARNING
        self._full_reported = self._full_reported or full
        log.log(level, "%s for endpoint %s refused (INVALID): %s%s", msg["type"], endpoint_id, refusal.reason,
                "; taken when that clears" if parked else "")

    def drop_parked(self) -> None:
        self._parked.clear()

    def retry_parked(self) -> None:
        """Take parked messages whose conflict has cleared."""
        if len(self.table) < self.max_endpoints:
            self._full_reported = False
        progress = True
        while progress and self._parked:
            progress = False
            for endpoint_id, msg in list(self._parked.items()):
                if msg["type"] == messages.ENDPOINTUPDATED and endpoint_id not in self.table:
                    del self._parked[endpoint_id]
                    continue
                spec = spec_from_message(msg)
                if self.table.refusal(spec) is not None:
                    continue
                del self._parked[endpoint_id]
                self._accept(spec, waited=True)
                self.resync.live(endpoint_id)
                progress = True

    def _destroy(self, endpoint_id: str) -> dict[str, Any]:
        self._parked.pop(endpoint_id, None)
        self.resync.destroyed(endpoint_id)
        if endpoint_id not in self.table:
            log.warning("ENDPOINTDESTROYED for unknown endpoint %s: NOTEXIST", endpoint_id)
            return messages.reply(messages.ENDPOINTDESTROYED, messages.RC_NOTEXIST,
                                  f"endpoint {endpoint_id} does not exist")
        log.info("Endpoint %s destroyed", endpoint_id)
        self._forget(endpoint_id)
        self.retry_parked()
        self._mark_dirty()
        return messages.reply(messages.ENDPOINTDESTROYED)

    def remove_stale(self, resync_id: str, stale: list[str]) -> None:
        """The endpoints a complete resync did not mention."""
        for endpoint_id in stale:
            log.info("Endpoint %s removed: not in resync %s", endpoint_id, resync_id)
            self._forget(endpoint_id)
        if stale:
            self.retry_parked()  # an announcement may have been refused for a stale endpoint's address
