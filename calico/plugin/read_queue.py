"""Which names of the data directory to read next, and when.

A name renamed into place, removed, moved away or closed after writing is
read at once (with the other side of a rename, in the same batch); one
created or written in place waits until its writes pause, SETTLE after the
last and at most MAX_SETTLE after the first, so a file rewritten in place is
read whole.  Names an event said exist are remembered until read: one found
missing then was renamed or removed since, and the event saying so is still
on its way.
"""

from __future__ import annotations

from typing import Iterable

from calico.plugin import inotify

SETTLE = 0.05
MAX_SETTLE = 1.0


class ReadQueue:
    """Names to read now (oldest first), names whose writes are settling,
    and names an event said exist."""

    def __init__(self) -> None:
        self._pending: dict[str, str | None] = {}           # -> the other side of a rename, read with it
        self._settling: dict[str, tuple[float, float]] = {}  # name -> (read at, read at the latest)
        self._expected: set[str] = set()

    def __len__(self) -> int:
        """Names to read now."""
        return len(self._pending)

    def note_event(self, kind: str, names: list[str], present: Iterable[str], now: float) -> None:
        """One inotify event (not LOST) about these wanted ``names``."""
        for name in names:
            if name in present:
                self._expected.add(name)
            else:
                self._expected.discard(name)
            if kind == inotify.NOW:
                self._settling.pop(name, None)
                # Both sides of a rename go to the store in one batch:
                # an endpoint moving file must not vanish in between.
                self._pending[name] = next((other for other in names if other != name), None)
            elif name not in self._pending:
                latest = self._settling.get(name, (now, now + MAX_SETTLE))[1]
                self._settling[name] = (min(now + SETTLE, latest), latest)

    def add(self, name: str) -> None:
        """Read ``name`` at the next batch."""
        self._pending[name] = None

    def retry(self, name: str, at: float) -> None:
        """Read ``name`` again at ``at`` (it changed while it was read)."""
        self._settling[name] = (at, at)

    def settle(self, now: float) -> None:
        """Names whose writes have paused are read now."""
        for name, (at, _) in list(self._settling.items()):
            if at <= now:
                del self._settling[name]
                self._pending[name] = None

    def is_settling(self, name: str) -> bool:
        return name in self._settling

    def settling_deadlines(self) -> Iterable[float]:
        return (at for at, _ in self._settling.values())

    def take(self) -> list[str]:
        """The next name to read, with the other side of its rename if that
        is still to read (empty: nothing to read)."""
        if not self._pending:
            return []
        name = next(iter(self._pending))
        names = [name]
        other = self._pending.pop(name)
        if other is not None and other in self._pending:
            del self._pending[other]
            names.append(other)
        return names

    def forget_expected(self, name: str) -> bool:
        """Whether an event said ``name`` exists (it is being read now)."""
        if name in self._expected:
            self._expected.discard(name)
            return True
        return False
