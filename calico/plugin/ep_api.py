"""The endpoint API: tell each Felix which endpoints its host owns.

Two directions (docs/protocol.md, "Endpoints: plugin and Felix").  Felix
asks on our REP socket (port 9901): RESYNCSTATE is answered with the host's
endpoint count, and the endpoints themselves follow as ENDPOINTCREATED
messages carrying the resync id; HEARTBEAT is answered.  We push on one REQ channel per ``[felix]`` host
(the host's ip, port 9902): ENDPOINTCREATED / UPDATED / DESTROYED as soon as
the data directory says so.

Only the cluster file's hosts may connect to our REP socket, each with its
own Felix's key (``calico.common.security``), and a RESYNCSTATE is refused
unless it speaks for the host whose key sent it: a RESYNCSTATE empties that
host's outboxes, so a forged one would lose changes queued for it.

Each host's channel has its own outbox, so a dead or slow Felix delays only
itself.  The outbox holds at most one message per endpoint: a newer change
replaces a queued one (a queued CREATED that is then updated stays a
CREATED, now with the new fields), so a Felix that is down for hours costs
one entry per endpoint, not one per change.  Resync messages sit in their
own outbox, sent first and never merged with live changes, because Felix
counts them; a new RESYNCSTATE replaces both outboxes, since the resync
describes everything.

Metrics (``calico.plugin.metrics``): each message sent, per host and type,
and for live changes the time since the file change that caused it (the
earliest, when changes were merged in the outbox).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable, Mapping

import zmq

from calico.common import messages, security
from calico.common.datafiles import Host
from calico.common.rep_server import answer_one
from calico.common.security import Transport
from calico.common.zmqloop import EventLoop, ReqChannel, tcp_address
from calico.common.validation import printable, short_hostname
from calico.plugin import store
from calico.plugin.metrics import PluginMetrics
from calico.plugin.store import DataState, StateChange

log = logging.getLogger(__name__)

REQUEST_TYPES = frozenset({messages.RESYNCSTATE, messages.HEARTBEAT})


class FelixLink:
    """The REQ channel to one Felix and its coalescing outboxes."""

    def __init__(self, loop: EventLoop, transport: Transport, host: Host, timeout_ms: int, keepalive_ms: int,
                 on_missing: Callable[[str, str], None], metrics: PluginMetrics | None = None):
        self.host = host
        self.on_missing = on_missing
        self.metrics = metrics or PluginMetrics()
        self.origins: dict[str, float] = {}  # endpoint id -> when the file change behind its queued message happened
        self.resync_outbox: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.outbox: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        dialer = transport.dialer(zmq.REQ, tcp_address(host.ip, messages.PORT_EP_FELIX),
                                  security.ROLE_PLUGIN_EP, security.felix_host_role(host.name))
        self.channel = ReqChannel(loop, dialer, f"felix {host.name}", timeout_ms, keepalive_ms,
                                  on_reply=self._on_reply)
        self.resyncs = 0

    @property
    def pending(self) -> int:
        return len(self.resync_outbox) + len(self.outbox)

    def push(self, msg: dict[str, Any], origin: float | None = None) -> None:
        """Queue a live change, replacing any queued change of the same endpoint
        (``origin``: when the file change behind it happened, wall clock)."""
        endpoint_id = msg["endpoint_id"]
        if origin is not None:
            self.origins[endpoint_id] = min(origin, self.origins.get(endpoint_id, origin))
        queued = self.outbox.get(endpoint_id)
        if queued is not None and queued["type"] == messages.ENDPOINTCREATED and msg["type"] == messages.ENDPOINTUPDATED:
            # Felix never heard of it: it still needs a CREATED.
            msg = dict(msg, type=messages.ENDPOINTCREATED)
        self.outbox[endpoint_id] = msg
        self.pump()

    def resync(self, created: list[dict[str, Any]]) -> None:
        self.resync_outbox = collections.OrderedDict((m["endpoint_id"], m) for m in created)
        self.outbox.clear()
        self.origins.clear()
        # A Felix asking for a resync has (re)started or lost us: a request
        # still in flight most likely went to its previous incarnation and
        # would hold the resync back until the connection timeout.  The
        # resync covers whatever it carried.
        self.channel.abandon_in_flight("Felix asked for a resync")
        self.pump()

    def pump(self) -> None:
        """Hand the channel the next message once it has nothing to do."""
        if not self.channel.idle:
            return
        outbox = self.resync_outbox or self.outbox
        if outbox:
            endpoint_id, msg = outbox.popitem(last=False)
            self.channel.send(msg)
            self.metrics.sent(self.host.name, msg["type"])
            if outbox is self.outbox:
                origin = self.origins.pop(endpoint_id, None)
                if origin is not None:
                    self.metrics.latency(time.time() - origin)

    def _on_reply(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        rc = reply.get("rc", messages.RC_SUCCESS)
        msg_type, endpoint_id = request["type"], request.get("endpoint_id")
        if rc == messages.RC_SUCCESS:
            log.debug("felix %s: %s %s done", self.host.name, msg_type, endpoint_id)
        elif rc == messages.RC_NOTEXIST and msg_type == messages.ENDPOINTDESTROYED:
            log.debug("felix %s: %s %s: it did not have it", self.host.name, msg_type, endpoint_id)
        elif rc == messages.RC_NOTEXIST and msg_type == messages.ENDPOINTUPDATED:
            log.info("felix %s: does not know endpoint %s it was sent an update for; sending it as created",
                     self.host.name, endpoint_id)
            self.on_missing(self.host.name, endpoint_id)
        else:
            log.warning("felix %s: %s %s answered %s: %r", self.host.name, msg_type, endpoint_id, rc,
                        reply.get("message", ""))
        self.pump()

    def close(self) -> None:
        self.channel.close()


class EndpointApi:
    """The REP socket Felixes ask, and one FelixLink per host."""

    def __init__(self, loop: EventLoop, transport: Transport, bind: str, timeout_ms: int, keepalive_ms: int,
                 metrics: PluginMetrics | None = None):
        self.loop = loop
        self.metrics = metrics or PluginMetrics()
        self.transport = transport
        self.timeout_ms = timeout_ms
        self.keepalive_ms = keepalive_ms
        self.state = DataState()
        self.links: dict[str, FelixLink] = {}
        self.address = tcp_address(bind, messages.PORT_EP_RESYNC)
        # Hosts join (and leave) with the cluster file: no key to hand out.
        self.socket = transport.listen(zmq.REP, self.address, security.ROLE_PLUGIN_EP, security.DOMAIN_EP_RESYNC,
                                       admit=lambda: map(security.felix_host_role, self.state.hosts))
        loop.add_socket(self.socket, self._on_request)
        # Links refill their channel when it falls idle (after a heartbeat,
        # say); checking every loop pass is cheap and needs no bookkeeping.
        loop.add_timer(self._pump_links)

    # --- data directory changes --------------------------------------------

    def apply(self, state: DataState, change: StateChange, changed_at: Mapping[str, float] | None = None) -> None:
        """Hand a change of the data directory to the Felixes (``changed_at``:
        when each changed file changed, for the latency metric)."""
        self.state = state
        changed_at = {} if change.initial or changed_at is None else changed_at
        earliest = min(changed_at.values(), default=None)
        fresh_links = self._update_links(state) if change.hosts_changed else []
        level = logging.DEBUG if change.initial else logging.INFO
        for item in change.endpoints:
            ep = item.endpoint
            log.log(level, "endpoint %s (%s): %s on host %s", ep.endpoint_id, printable(ep.source),
                    item.msg_type.removeprefix("ENDPOINT").lower(), item.host)
            link = self.links.get(item.host)
            if link is not None and item.host not in fresh_links:
                link.push(store.endpoint_message(item.msg_type, ep), changed_at.get(ep.source, earliest))
        for host in fresh_links:
            # A Felix we have just started talking to hears everything (its
            # own resync will replace this if it asks for one).
            for ep in state.endpoints_on(host):
                self.links[host].push(ep.message(messages.ENDPOINTCREATED))
        if change.initial:
            log.info("data directory: %d hosts, %d endpoints, %d groups, %d problems",
                     len(state.hosts), len(state.endpoints), len(state.groups), state.problems)

    def _update_links(self, new: DataState) -> list[str]:
        fresh = []
        for name in list(self.links):
            link = self.links[name]
            if new.hosts.get(name) != link.host:
                log.info("host %s: %s; closing its channel", name,
                         "removed" if name not in new.hosts else f"address now {new.hosts[name].ip}")
                link.close()
                del self.links[name]
        for name, host in sorted(new.hosts.items()):
            if name not in self.links:
                log.info("host %s: talking to its Felix at %s", name,
                         tcp_address(host.ip, messages.PORT_EP_FELIX))
                self.links[name] = FelixLink(self.loop, self.transport, host, self.timeout_ms,
                                             self.keepalive_ms, self._resend_created, self.metrics)
                fresh.append(name)
        return fresh

    def _resend_created(self, host: str, endpoint_id: str) -> None:
        ep = self.state.endpoints.get(endpoint_id)
        if ep is not None and ep.host == host and host in self.links:
            self.links[host].push(ep.message(messages.ENDPOINTCREATED))

    def _pump_links(self, now: float) -> None:
        for link in self.links.values():
            link.pump()

    # --- requests from Felix -----------------------------------------------

    def _on_request(self) -> None:
        answer_one(self.socket, self._answer, log, "endpoint API", copy=False)

    def _answer(self, frames: list[zmq.Frame]) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """The reply to one request, and what to do once it is sent."""
        try:
            if len(frames) != 1:
                raise messages.MessageError(f"want one frame, got {len(frames)}")
            request = messages.decode_request(frames[0].bytes, REQUEST_TYPES)
        except messages.MessageError as exc:
            log.warning("endpoint API: bad request (%s); answered INVALID", exc)
            return messages.invalid_reply(exc), None
        if request["type"] == messages.HEARTBEAT:
            return messages.reply(messages.HEARTBEAT), None
        return self._resync(request, security.peer_role(frames[0]))

    def _resync(self, request: dict[str, Any], sender: str | None) -> tuple[dict[str, Any], Callable[[], None] | None]:
        host = short_hostname(request["hostname"])
        resync_id = request["resync_id"]
        link = self.links.get(host)
        if link is None:
            reason = f"host {host!r} is not a [felix] host of the cluster file"
            log.warning("endpoint API: RESYNCSTATE %r refused: %s", resync_id, reason)
            return messages.reply(messages.RESYNCSTATE, messages.RC_INVALID, reason), None
        if self.transport.secure and sender != security.felix_host_role(host):
            reason = f"a RESYNCSTATE for host {host!r} must come with that host's key, not {sender!r}'s"
            log.warning("endpoint API: RESYNCSTATE %r refused: %s", resync_id, reason)
            return messages.reply(messages.RESYNCSTATE, messages.RC_INVALID, reason), None
        endpoints = self.state.endpoints_on(host)
        log.info("felix %s: resync %r: sending %d endpoints", host, resync_id, len(endpoints))
        self.metrics.resync(host)
        link.resyncs += 1
        created = [ep.message(messages.ENDPOINTCREATED, resync_id) for ep in endpoints]
        return (messages.reply(messages.RESYNCSTATE, endpoint_count=len(endpoints)),
                lambda: link.resync(created))

    def status(self) -> dict[str, Any]:
        """For /status: each host's Felix as this API sees it."""
        self.metrics.links({name: link.pending for name, link in self.links.items()},
                           {name: link.channel.connected for name, link in self.links.items()})
        return {"address": self.address,
                "felixes": {name: {"address": link.channel.address, "connected": link.channel.connected,
                                   "queued": link.pending, "resyncs": link.resyncs}
                            for name, link in sorted(self.links.items())}}

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.loop.remove_timer(self._pump_links)
        self.loop.remove_socket(self.socket)
        self.socket.close(linger=0)
