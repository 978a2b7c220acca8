"""One event loop over ZeroMQ sockets, and a REQ channel that survives peers.

Every component is a single thread polling its sockets.  ``EventLoop`` holds
the poller, the per-socket handlers and the timers; handlers run to
completion, so component state needs no locks.  A handler or timer that
raises is logged in one line and the loop carries on: no message, however
it is made, ends a component (a REP socket whose handler failed before
answering still answers, rc INVALID, or it could never take another
request).

One turn of the loop (``run_once``) does its work in a fixed order:

1. the timers that are due, earliest deadline first, each at most once (the
   heap is ``calico.common.timer_queue``); a timer answers how long until it
   needs calling again, or None to run at the next turn without shortening
   the wait;
2. the ``add_after`` callbacks, every turn, in the order added: work that
   the timers and handlers mark and one pass does (Felix's dataplane pass);
3. the wait, until a socket is readable or the earliest deadline, and the
   handlers of the readable sockets.

So a handler's work is seen by the next turn's timers and after callbacks,
which follow at once.  Whoever marks work for a timer (a dirty flag, a
request just sent) calls ``wake``: a timer woken in step 1 before its own
run came runs in that same step, and otherwise at the start of the next
turn, without waiting.

Every socket is made by ``make_socket``, the one place its options are set,
among them the largest message it accepts (MaxMessageBytes): a peer that
sends more is disconnected by ZeroMQ before anything is allocated for it.

``ReqChannel`` wraps a REQ socket, opened (and re-opened) by a ``Dialer``
(``calico.common.security.Transport`` makes them, with the keys).  A ZeroMQ REQ socket that has sent a
request and never hears back is stuck for good (it refuses to send again),
so the channel watches the outstanding request: after
ConnectionTimeoutMillis without a reply the socket is closed and made afresh
and ``on_reset`` tells the owner that whatever state the peer held may be
gone (Felix resyncs, the ACL manager asks for all groups again).  When the
line is quiet for ConnectionKeepaliveIntervalMillis it sends a HEARTBEAT, so
a dead peer is noticed even when there is nothing to say.

``EventLoop.last_iteration`` is stamped at the start of every iteration
(an idle loop still turns at least once a second): the health server's
liveness watchdog reads it from its own thread (``calico.common.health``).
For the tests of that watchdog only, ``CALICO_DEBUG_STALL_FILE`` names a
file: while it exists, the loop sleeps instead of turning, as a stuck
component would.  Unset (the default), it costs nothing.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from typing import Any, Callable, Protocol

import zmq

from calico.common import messages
from calico.common.timer_queue import Timer, TimerQueue
from calico.common.validation import shown

log = logging.getLogger(__name__)

Handler = Callable[[], None]

# The largest message a socket accepts unless MaxMessageBytes says otherwise.
# The largest messages of a real cluster are those of a big group: for
# 10,000 members with 64-character ids and an IPv4 and an IPv6 address each,
# its GROUPUPDATE is 0.97 MB and a member's ACLUPDATE (every member's
# addresses, both directions) 2.7 MB (bench/message_size_bench.py).  16 MiB
# passes groups of up to about 60,000 such members, while bounding what one
# peer can make us hold.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Below this even ordinary requests could be refused; a setting smaller
# than this is a mistake, not a policy.
MIN_MAX_MESSAGE_BYTES = 64 * 1024
# The liveness tests' hook (module docstring); never set in production.
STALL_FILE_ENV = "CALICO_DEBUG_STALL_FILE"


class Dialer(Protocol):
    """Opens a fresh client socket to one address (with whatever keys it needs)."""

    address: str

    def open(self) -> zmq.Socket: ...


def tcp_address(host: str, port: int) -> str:
    """A ZeroMQ tcp:// address; IPv6 literals need brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def make_socket(context: zmq.Context, kind: int, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IPV6, 1)  # harmless for IPv4, needed for v6 peers
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    return sock


def _answer_if_owed(sock: zmq.Socket) -> None:
    """A REP socket that took a request must send a reply before it can take
    another; sending when nothing is owed fails with EFSM, which is fine."""
    try:
        sock.send(messages.encode(messages.reply("UNKNOWN", messages.RC_INVALID, "internal error")), zmq.NOBLOCK)
    except zmq.ZMQError:
        return
    log.warning("answered INVALID for the failed handler")


class EventLoop:
    """Poll sockets; call their handlers; run timers when they are due."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._poller = zmq.Poller()
        self._handlers: dict[zmq.Socket, Handler] = {}
        self.stopped = False
        self.last_iteration = clock()  # read by the health server's thread
        self._timers = TimerQueue(self.last_iteration)
        self._stall_file = os.environ.get(STALL_FILE_ENV) or None

    def add_socket(self, sock: zmq.Socket | int, handler: Handler) -> None:
        """Call ``handler`` when ``sock`` is readable: a ZeroMQ socket or a
        plain file descriptor (the poller takes both)."""
        self._handlers[sock] = handler
        self._poller.register(sock, zmq.POLLIN)

    def remove_socket(self, sock: zmq.Socket | int) -> None:
        if self._handlers.pop(sock, None) is not None:
            self._poller.unregister(sock)

    def add_timer(self, timer: Timer) -> None:
        """``timer(now)`` does what is due and returns seconds until it next
        needs calling (None: no deadline of its own; it runs at the next
        turn, whenever that comes).  It is first due at once."""
        self._timers.add(timer, self._wake_time())

    def add_after(self, callback: Timer) -> None:
        """``callback(now)`` runs at the end of every turn, after the due
        timers, in the order added: for work the handlers and timers mark
        (Felix's dataplane pass).  It answers as a timer does, but its
        answer only bounds the wait: it runs every turn anyway."""
        self._timers.add(callback, self._wake_time(), after=True)

    def remove_timer(self, timer: Timer) -> None:
        self._timers.remove(timer)

    def wake(self, timer: Timer, at: float | None = None) -> None:
        """Run ``timer`` no later than ``at`` (loop clock; default: now, in
        this turn if its phase has not passed it yet, else at the start of
        the next).  For callers that mark work for a timer (a dirty flag, a
        request just sent): the timer's own deadline is only ever brought
        forward."""
        self._timers.wake(timer, self._wake_time() if at is None else at)

    def _wake_time(self) -> float:
        # Inside the timer phase "now" is the turn's own: a timer woken by
        # another is due in the same turn however far the clock has moved.
        return self._timers.turn_now if self._timers.in_timer_phase else self.clock()

    def run_once(self, max_wait: float = 1.0) -> None:
        """One turn: the due timers, the after callbacks, then the wait
        (at most ``max_wait``) and the handlers of the sockets that became
        readable.  What a handler marks is seen by the next turn, which
        begins at once when it woke a timer."""
        if self._stall_file is not None:
            self._debug_stall()
        now = self.clock()
        self.last_iteration = now
        self._timers.run_due(now, self._call)
        self._timers.run_after(now, self._call)
        deadline = self._timers.next_deadline()
        wait = max_wait if deadline is None else min(max_wait, max(deadline - self.clock(), 0.0))
        # Rounded up: waking a fraction of a millisecond early would spin
        # (poll(0)) until the deadline.
        for sock, _ in self._poller.poll(math.ceil(wait * 1000)):
            handler = self._handlers.get(sock)
            if handler is None:
                continue
            try:
                handler()
            except Exception as exc:
                self._failed(f"the handler of a {zmq.SocketType(sock.type).name} socket", exc)
                if sock.type == zmq.REP and not sock.closed:
                    _answer_if_owed(sock)

    def _call(self, timer: Timer, now: float) -> float | None:
        """Run one timer: the deadline it asks for, None for the next turn
        (a timer that raised is called again then, as before it failed)."""
        try:
            wait = timer(now)
        except Exception as exc:  # a bug must not end the component
            self._failed("a timer", exc)
            return None
        return None if wait is None else now + max(wait, 0.0)

    def _debug_stall(self) -> None:
        """The test hook (CALICO_DEBUG_STALL_FILE): sleep while the file exists."""
        if not os.path.exists(self._stall_file):  # type: ignore[arg-type]
            return
        log.warning("%s exists (%s): the event loop stalls until it is removed", self._stall_file, STALL_FILE_ENV)
        while os.path.exists(self._stall_file) and not self.stopped:  # type: ignore[arg-type]
            time.sleep(0.05)
        log.warning("%s removed: the event loop runs again", self._stall_file)

    @staticmethod
    def _failed(what: str, exc: Exception) -> None:
        log.error("%s failed (%s: %s); carrying on", what, type(exc).__name__, shown(str(exc)))
        log.debug("failure detail", exc_info=True)

    def run(self) -> None:
        while not self.stopped:
            self.run_once()

    def stop(self) -> None:
        self.stopped = True


class ReqChannel:
    """A REQ socket to one peer, with timeout, re-creation and keepalive."""

    def __init__(self, loop: EventLoop, dialer: Dialer, name: str,
                 timeout_ms: int, keepalive_ms: int,
                 on_reply: Callable[[dict[str, Any], dict[str, Any]], None],
                 on_reset: Callable[[], None] | None = None,
                 retry_lost_request: bool = True):
        self.loop = loop
        self.dialer = dialer
        self.address = dialer.address
        self.name = name
        self.timeout = timeout_ms / 1000.0
        self.keepalive = keepalive_ms / 1000.0
        self.on_reply = on_reply
        self.on_reset = on_reset
        self.retry_lost_request = retry_lost_request
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.in_flight: dict[str, Any] | None = None
        self.sent_at = 0.0
        self.last_heard = loop.clock()
        self.connected = False  # True once the peer has answered since the last reset
        self.resets = 0
        self.socket = self._open()
        loop.add_timer(self._tick)

    def _open(self) -> zmq.Socket:
        sock = self.dialer.open()
        self.loop.add_socket(sock, self._readable)
        return sock

    def send(self, msg: dict[str, Any]) -> None:
        """Queue a request; requests go out one at a time, in order."""
        self.queue.append(msg)
        self._pump()

    def clear(self) -> None:
        """Forget queued requests (the one in flight still gets its answer)."""
        self.queue.clear()

    @property
    def idle(self) -> bool:
        return self.in_flight is None and not self.queue

    def _pump(self) -> None:
        if self.in_flight is None and self.queue:
            msg = self.queue.popleft()
            self.in_flight = msg
            self.sent_at = self.loop.clock()
            self.socket.send(messages.encode(msg))
            log.debug("%s: sent %s", self.name, msg.get("type"))
        # Every change of the channel's state ends here: a request sent or
        # answered moves the timeout or the keepalive, maybe earlier than
        # the timer last asked for.
        self.loop.wake(self._tick, at=self._due_at())

    def _due_at(self) -> float:
        """When the timer must next look (loop clock): the timeout of the
        request in flight, else the keepalive."""
        if self.in_flight is not None:
            return self.sent_at + self.timeout
        return max(self.last_heard, self.sent_at) + self.keepalive

    def _readable(self) -> None:
        try:
            raw = self.socket.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        request, self.in_flight = self.in_flight, None
        self.last_heard = self.loop.clock()
        if not self.connected:
            log.info("%s: connected to %s", self.name, self.address)
        self.connected = True
        if request is not None and request["type"] != messages.HEARTBEAT:
            try:
                reply = messages.decode_reply(raw, request["type"])
            except messages.MessageError as exc:
                log.warning("%s: bad reply from %s: %s", self.name, self.address, exc)
            else:
                self.on_reply(request, reply)
        self._pump()

    def _tick(self, now: float) -> float:
        if self.in_flight is not None:
            if now - self.sent_at >= self.timeout:
                self._reset(now)
                return 0.0
            return self.sent_at + self.timeout - now
        if not self.queue and now - max(self.last_heard, self.sent_at) >= self.keepalive:
            self.send(messages.make(messages.HEARTBEAT))
            return self.timeout
        return max(self.last_heard, self.sent_at) + self.keepalive - now

    def _reset(self, now: float) -> None:
        lost, self.in_flight = self.in_flight, None
        # Warn when a live peer goes quiet; a peer that stays down would
        # otherwise log the same line every timeout, forever.
        level = logging.WARNING if self.connected or self.resets == 0 else logging.DEBUG
        log.log(level, "%s: no answer from %s within %.1fs to %s; reconnecting",
                self.name, self.address, self.timeout, lost and lost.get("type"))
        self.loop.remove_socket(self.socket)
        self.socket.close(linger=0)
        self.socket = self._open()
        self.connected = False
        self.resets += 1
        self.last_heard = now
        if lost is not None and self.retry_lost_request and lost["type"] != messages.HEARTBEAT:
            self.queue.appendleft(lost)
        if self.on_reset is not None:
            self.on_reset()
        self._pump()

    def abandon_in_flight(self, reason: str) -> None:
        """Give up the request in flight now, without waiting for the timeout,
        and open a fresh socket.  For when the peer has told us another way
        that it restarted: its answer will never come.  Queued requests stay;
        ``on_reset`` is not called (the caller already knows)."""
        if self.in_flight is None:
            return
        log.info("%s: %s; dropping the %s in flight to %s and reconnecting",
                 self.name, reason, self.in_flight.get("type"), self.address)
        self.in_flight = None
        self.loop.remove_socket(self.socket)
        self.socket.close(linger=0)
        self.socket = self._open()
        self.connected = False
        self.last_heard = self.loop.clock()
        self._pump()

    def close(self) -> None:
        # The timer goes too: a closed channel must never send again.
        self.loop.remove_timer(self._tick)
        self.loop.remove_socket(self.socket)
        self.socket.close(linger=0)
