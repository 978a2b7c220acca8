"""The event loop's timers by deadline: which are due, and in what order.

No sockets and no clock of its own: ``EventLoop`` (``calico.common.zmqloop``)
tells it the time and how to call a timer, so the order of work is plain
code, tested alone.  A timer answers seconds until it needs calling again,
or None to run at the next turn without a deadline of its own; the caller
turns that into an absolute deadline (or None) for this queue.

Due timers run earliest deadline first (ties: the order they were added),
each at most once in a turn: one woken (``wake``) during the timer phase
before its own run came runs in that phase, one woken after it ran is due
again at once, for the next turn.  After callbacks run every turn, after the
timers; their answer only bounds the wait.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Callable

Timer = Callable[[float], float | None]
# Runs one timer at ``now``: the absolute deadline it asks for, or None.
Call = Callable[[Timer, float], float | None]
_Item = tuple[float, int, int, "_Scheduled"]


@dataclass(eq=False)
class _Scheduled:
    """One registered timer and when it is due."""

    timer: Timer
    after: bool                    # an after callback: every turn, after the timers
    seq: int                       # the order added: breaks ties between equal deadlines
    deadline: float | None = None  # None: at the next turn, without shortening the wait
    generation: int = 0            # heap items of an older generation are stale
    woken: float | None = None     # a wake-up asked for while it ran this turn
    removed: bool = False


class TimerQueue:
    """Timers by deadline (a heap), the ones due at the next turn, and the
    after callbacks."""

    def __init__(self, now: float) -> None:
        self._scheduled: dict[Timer, _Scheduled] = {}
        self._heap: list[_Item] = []
        self._next_turn: list[_Item] = []
        self._after: list[_Scheduled] = []
        self._after_deadline: float | None = None
        self._seq = itertools.count()
        self.turn_now = now  # the time the last timer phase ran at
        self._ran: dict[_Scheduled, float | None] | None = None  # during the timer phase

    @property
    def in_timer_phase(self) -> bool:
        return self._ran is not None

    def add(self, timer: Timer, now: float, after: bool = False) -> None:
        """A timer first due at ``now``, or an after callback."""
        if timer in self._scheduled:
            raise ValueError(f"timer {timer!r} is already registered")
        entry = _Scheduled(timer, after, next(self._seq))
        self._scheduled[timer] = entry
        if after:
            self._after.append(entry)
        else:
            self._put(entry, now)

    def remove(self, timer: Timer) -> None:
        entry = self._scheduled.pop(timer, None)
        if entry is None:
            return
        entry.removed = True  # its heap items are skipped when they come up
        if entry.after:
            self._after.remove(entry)

    def wake(self, timer: Timer, at: float) -> None:
        """Due no later than ``at``: a deadline is only ever brought forward.
        After callbacks run every turn anyway."""
        entry = self._scheduled.get(timer)
        if entry is None or entry.after:
            return
        if self._ran is not None and entry in self._ran:
            entry.woken = at if entry.woken is None else min(entry.woken, at)
        elif entry.deadline is not None and at < entry.deadline:
            self._put(entry, at)
        # A deadline of None is the next turn already: any ``at`` is no sooner.

    def run_due(self, now: float, call: Call) -> None:
        """Run every timer due by ``now`` (module docstring)."""
        self.turn_now = now
        for item in self._next_turn:
            heapq.heappush(self._heap, item)
        self._next_turn = []
        ran: dict[_Scheduled, float | None] = {}
        self._ran = ran
        try:
            while self._heap and self._heap[0][0] <= now:
                item = heapq.heappop(self._heap)
                entry = item[3]
                if self._current(item) and entry not in ran:
                    ran[entry] = None  # in ``ran`` while it runs: a wake-up it asks for itself is kept
                    ran[entry] = call(entry.timer, now)
        finally:
            self._ran = None
        for entry, deadline in ran.items():
            if entry.removed:
                continue
            woken, entry.woken = entry.woken, None
            if woken is not None:
                deadline = woken if deadline is None else min(deadline, woken)
            self._put(entry, deadline)

    def run_after(self, now: float, call: Call) -> None:
        deadlines = [call(entry.timer, now) for entry in list(self._after) if not entry.removed]
        self._after_deadline = min((d for d in deadlines if d is not None), default=None)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a timer or an after callback (None: none)."""
        while self._heap and not self._current(self._heap[0]):
            heapq.heappop(self._heap)
        deadlines = [d for d in (self._heap[0][0] if self._heap else None, self._after_deadline) if d is not None]
        return min(deadlines, default=None)

    def __len__(self) -> int:
        """Items held, stale ones included (each wake-up that moved a deadline left one)."""
        return len(self._heap) + len(self._next_turn)

    def _put(self, entry: _Scheduled, deadline: float | None) -> None:
        entry.generation += 1
        entry.deadline = deadline
        item = (self.turn_now if deadline is None else deadline, entry.seq, entry.generation, entry)
        if deadline is None:
            self._next_turn.append(item)
            return
        heapq.heappush(self._heap, item)
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._heap = [item for item in self._heap if self._current(item)]
            heapq.heapify(self._heap)

    @staticmethod
    def _current(item: _Item) -> bool:
        entry = item[3]
        return not entry.removed and item[2] == entry.generation
