"""Felix's resync with the plugin: RESYNCSTATE on the plugin's REQ channel.

A resync (docs/protocol.md, "Endpoints: plugin and Felix") asks the plugin
for every endpoint of this host; the plugin answers with how many it will
send and then announces each (ENDPOINTCREATED carrying the resync id) on
Felix's endpoint API (``endpoint_api``), which reports them here.  When it
has them all, the endpoints held before that it did not mention are
removed.  Until the first resync completes Felix programs nothing.

A resync starts at start-up, every ResyncIntervalSecs (with a re-read of the
kernel), after a refusal (retried after ConnectionTimeoutMillis), when the
plugin's channel resets, and when the announcements stop coming for twice
ConnectionTimeoutMillis.  Starting one abandons any still running.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from typing import Any, Callable, Protocol

from calico.common import messages
from calico.felix.endpoints import EndpointTable, Resync
from calico.felix.metrics import FelixMetrics

log = logging.getLogger(__name__)


class Channel(Protocol):
    """What we need of a ``zmqloop.ReqChannel``."""

    connected: bool

    def send(self, msg: dict[str, Any]) -> None: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...


OnReply = Callable[[dict[str, Any], dict[str, Any]], None]
ChannelFactory = Callable[[OnReply, Callable[[], None]], Channel]


class ResyncClient:
    def __init__(self, channel: ChannelFactory, table: EndpointTable, clock: Callable[[], float],
                 metrics: FelixMetrics, *, hostname: str, timeout_ms: int, interval_secs: float,
                 on_begin: Callable[[], None], remove_stale: Callable[[str, list[str]], None],
                 mark_dirty: Callable[[], None], repair: Callable[[], None],
                 last_pass_end: Callable[[], float]) -> None:
        """``channel(on_reply, on_reset)`` opens the REQ channel to the
        plugin.  ``on_begin`` is told when a resync starts, ``remove_stale``
        given the endpoints a complete resync did not mention, ``repair``
        called at each periodic resync; ``last_pass_end`` says when the last
        dataplane pass ended (a long pass delays our reading)."""
        self.table = table
        self.clock = clock
        self.metrics = metrics
        self.hostname = hostname
        self.timeout = timeout_ms / 1000.0
        self.interval = float(interval_secs)
        self._on_begin = on_begin
        self._remove_stale = remove_stale
        self._mark_dirty = mark_dirty
        self._repair = repair
        self._last_pass_end = last_pass_end
        now = clock()
        self.current: Resync | None = None   # the resync running now
        self.synced_at: float | None = None  # loop clock: the first resync completed
        self.synced_wall: float | None = None
        self.started = 0
        self._progress_at = now
        self._retry_at: float | None = None
        self._next_periodic = now + self.interval
        self._resets_unanswered = 0
        self.plugin = channel(self._on_reply, self._on_reset)

    def begin(self, reason: str, level: int = logging.INFO) -> None:
        """Ask the plugin for every endpoint of this host; any resync still
        running is abandoned (its count no longer means anything)."""
        self.current = Resync(str(uuid.uuid4()), reason)
        self.started += 1
        self.metrics.resync_started()
        self._on_begin()
        self._retry_at = None
        self._progress_at = self.clock()
        self.plugin.clear()
        self.plugin.send(messages.make(messages.RESYNCSTATE, resync_id=self.current.resync_id,
                                       hostname=self.hostname))
        log.log(level, "Resync %s started (%s) for host %s", self.current.resync_id, reason, self.hostname)

    def _on_reset(self) -> None:
        # A plugin that stays down resets the channel every timeout: say so
        # once, then quietly keep trying.
        self._resets_unanswered += 1
        self.begin("plugin connection lost", logging.INFO if self._resets_unanswered == 1 else logging.DEBUG)

    def _on_reply(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        if request["type"] != messages.RESYNCSTATE:
            return
        self._resets_unanswered = 0
        resync = self.current
        if resync is None or request.get("resync_id") != resync.resync_id:
            log.debug("Reply to abandoned resync %s ignored", request.get("resync_id"))
            return
        count = reply.get("endpoint_count")
        if reply.get("rc", messages.RC_SUCCESS) != messages.RC_SUCCESS or count is None:
            log.warning("Resync %s refused by the plugin (rc %s: %r); retrying in %.1fs", resync.resync_id,
                        reply.get("rc"), reply.get("message") or "no endpoint_count", self.timeout)
            self.current = None
            self._retry_at = self.clock() + self.timeout
            return
        resync.expected = count
        self._progress_at = self.clock()
        log.info("Resync %s: plugin will send %d endpoint(s)", resync.resync_id, count)
        self._check_complete()

    def _check_complete(self) -> None:
        resync = self.current
        if resync is None or not resync.complete:
            return
        self.current = None
        stale = resync.stale(self.table.ids())
        self._remove_stale(resync.resync_id, stale)
        log.info("Resync %s complete: %d endpoint(s), %d removed", resync.resync_id, len(self.table), len(stale))
        if self.synced_at is None:
            self.synced_at = self.clock()
            self.synced_wall = time.time()
            self._mark_dirty()  # the first pass, even for an empty table: it removes leftovers
        elif stale:
            self._mark_dirty()

    # --- what the endpoint API hears ------------------------------------------------

    def noted(self, msg_type: str, resync_id: Any, key: str, endpoint_id: str | None) -> None:
        """An endpoint message was taken or refused; ``endpoint_id`` is the
        endpoint it leaves current (None: none of ours)."""
        resync = self.current
        if resync is None:
            return
        if msg_type == messages.ENDPOINTCREATED and resync_id == resync.resync_id:
            resync.announced(key, endpoint_id)
            self._progress_at = self.clock()
            self._check_complete()
        elif endpoint_id is not None:
            resync.live(endpoint_id)

    def live(self, endpoint_id: str) -> None:
        if self.current is not None:
            self.current.live(endpoint_id)

    def destroyed(self, endpoint_id: str) -> None:
        if self.current is not None:
            self.current.destroyed(endpoint_id)

    def count_rejected(self, raw: bytes) -> None:
        """A resync announcement we had to reject still counts towards the
        resync, or the resync would never complete.  Its endpoint, if it has
        a usable id, keeps what it had: rejecting new values of an endpoint
        is no reason to tear down its old ones."""
        if self.current is None:
            return
        msg = messages.peek(raw)
        if msg is None or msg.get("type") != messages.ENDPOINTCREATED:
            return
        endpoint_id = msg.get("endpoint_id")
        known = endpoint_id if isinstance(endpoint_id, str) and endpoint_id in self.table else None
        key = known or f"rejected:{zlib.crc32(raw):08x}"
        self.noted(messages.ENDPOINTCREATED, msg.get("resync_id"), key, known)

    # --- the timer -----------------------------------------------------------------

    def timer(self, now: float) -> float:
        if now >= self._next_periodic:
            self._next_periodic = now + self.interval
            self._repair()
            self.begin("periodic")
        elif self._retry_at is not None and now >= self._retry_at:
            self.begin("retry")
        elif self.current is not None and self.current.expected is not None:
            # The plugin promised endpoints that stopped coming: start again
            # rather than wait for ever (the quiet time is counted from our
            # own last pass too, since a long pass delays our reading).
            quiet_since = max(self._progress_at, self._last_pass_end())
            if now - quiet_since >= 2 * self.timeout:
                log.warning("Resync %s stalled at %d of %d endpoint(s); starting again",
                            self.current.resync_id, len(self.current.counted), self.current.expected)
                self.begin("stalled")
        deadlines = [self._next_periodic - now, self.timeout]
        if self._retry_at is not None:
            deadlines.append(self._retry_at - now)
        if self.current is not None and self.current.expected is not None:
            # The loop calls a timer only when it is due: name the moment a
            # stall would be declared, or it is seen up to a timeout late.
            deadlines.append(max(self._progress_at, self._last_pass_end()) + 2 * self.timeout - now)
        return min(deadlines)

    def close(self) -> None:
        self.plugin.close()
