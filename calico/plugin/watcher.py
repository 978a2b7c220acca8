"""Polling the data directory, cheaply, and turning it into a DataState.

Every poll lists the directory and stats each ``*.txt`` file (names starting
with a dot are skipped, like a shell glob skips them, and the writers'
temporary names do not end in .txt).  A file is read only when its
(mtime_ns, ctime_ns, size, inode) changed, and re-parsed only when its
content hash changed, so a poll of an idle directory costs one stat per file.

With many files even the stats add up (10,000 files: about 90 ms on a small
VM), so a full scan is also rate-limited to keep its CPU share near a fifth:
between full scans only the directory itself is stat'ed, and a change to it
(every create, remove and rename, which is how writers publish a file)
triggers a full scan at once.  Only an in-place edit of a large directory
waits for the next full scan, still well within half a second.

A file that changes while it is being read (someone writing in place rather
than by rename) is left alone for this poll and read again on the next; the
last good parse stands meanwhile.  An unreadable directory keeps the last
state rather than looking empty: losing a mount must not destroy every
endpoint.

``DataDirectory`` adds the store on top: on a change it rebuilds the state
from every file and logs each error line once, when it first appears.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from calico.plugin import store
from calico.plugin.store import DataState, ParsedFile

log = logging.getLogger(__name__)

StatKey = tuple[int, int, int, int]

# A full scan may run again after this many times its own duration, but
# never waits longer than the gap (changes must show within half a second).
FULL_SCAN_SPACING = 4.0
MAX_FULL_SCAN_GAP = 0.4


@dataclass
class _Entry:
    key: StatKey
    digest: bytes
    parsed: ParsedFile


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class DirectoryWatcher:
    """The parsed ``*.txt`` files of one directory, refreshed by ``poll``."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._dir_error: str | None = None
        self._dir_key: StatKey | None = None
        self._next_full_scan = 0.0

    @property
    def files(self) -> list[ParsedFile]:
        return [entry.parsed for _, entry in sorted(self._entries.items())]

    def poll(self) -> bool:
        """Look at the directory; True when any file's contents changed."""
        start = self.clock()
        try:
            # Stat'ed before listing, so a change during the scan shows next time.
            dir_key = _stat_key(os.stat(self.path))
        except OSError:
            dir_key = None
        if dir_key is not None and dir_key == self._dir_key and start < self._next_full_scan:
            return False
        changed = self._scan()
        self._dir_key = dir_key
        self._next_full_scan = start + min(FULL_SCAN_SPACING * (self.clock() - start), MAX_FULL_SCAN_GAP)
        return changed

    def _scan(self) -> bool:
        try:
            listing = {e.name: e for e in os.scandir(self.path)
                       if e.name.endswith(".txt") and not e.name.startswith(".")}
        except OSError as exc:
            reason = f"cannot list data directory {self.path}: {exc.strerror}; keeping the last state"
            if reason != self._dir_error:
                log.error("%s", reason)
                self._dir_error = reason
            return False
        if self._dir_error is not None:
            log.info("data directory %s is readable again", self.path)
            self._dir_error = None
        changed = False
        for name in [n for n in self._entries if n not in listing]:
            del self._entries[name]
            log.debug("%s: removed", name)
            changed = True
        for name, dir_entry in sorted(listing.items()):
            try:
                if not dir_entry.is_file():
                    continue
                key = _stat_key(dir_entry.stat())
            except OSError:
                continue  # gone between listing and stat; the next poll sees it
            entry = self._entries.get(name)
            if entry is not None and entry.key == key:
                continue
            changed |= self._read(name, key, entry)
        return changed

    def _read(self, name: str, key: StatKey, entry: _Entry | None) -> bool:
        path = os.path.join(self.path, name)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
                after = _stat_key(os.fstat(handle.fileno()))
        except FileNotFoundError:
            return False
        except OSError as exc:
            data, after = None, key
            reason = f"cannot read: {exc.strerror}"
        if after != key:
            log.debug("%s: changed while being read; reading it again next poll", name)
            return False
        digest = hashlib.sha256(data).digest() if data is not None else b"unreadable:" + reason.encode()
        if entry is not None and entry.digest == digest:
            entry.key = key
            return False
        if data is None:
            parsed = store.unreadable_file(name, reason)
        else:
            try:
                parsed = store.parse_file(name, data.decode("utf-8"))
            except UnicodeDecodeError:
                parsed = store.unreadable_file(name, "not UTF-8 text")
        log.debug("%s: %s", name, "changed" if entry is not None else "found")
        self._entries[name] = _Entry(key, digest, parsed)
        return True


class DataDirectory:
    """The watcher and the store together: the current DataState."""

    def __init__(self, path: str):
        self.watcher = DirectoryWatcher(path)
        self.state: DataState = store.EMPTY_STATE
        self._reported: set[str] = set()

    def refresh(self) -> tuple[DataState, DataState] | None:
        """Poll; on a change return (old, new) state, else None."""
        if not self.watcher.poll():
            return None
        old = self.state
        self.state = store.build_state(self.watcher.files, old)
        self._report(self.state)
        return old, self.state

    def _report(self, state: DataState) -> None:
        current = set(state.errors) | set(state.notes)
        for line in state.notes:
            if line not in self._reported:
                log.warning("%s", line)
        for line in state.errors:
            if line not in self._reported:
                log.warning("%s", line)
        self._reported = current
