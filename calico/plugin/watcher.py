"""Noticing changes in the data directory and reading them, a batch at a time.

The kernel says which files changed (inotify, calico/plugin/inotify.py), so
an idle directory costs nothing however many files it holds.  A name that
was renamed into place, removed, moved away or closed after writing is read
at once; one that was created or written in place is read once the writes
pause (SETTLE after the last, at most MAX_SETTLE after the first), so an
editor or scp rewriting a file in place is read whole, not truncated.  Names
starting with a dot, or not ending in .txt, are ignored (the writers'
temporary names).  A file that changes while it is being read is read
again shortly; the last good parse stands meanwhile.

Polling is the fallback where inotify cannot serve: when watchdog or
inotify is missing, the inotify limits are reached (the watch fails to
arm), or the directory is on a network or FUSE file system where changes
made elsewhere raise no event (``--watch inotify`` watches there anyway;
``--watch poll`` always polls).  The mode is logged once.  Polling stats
the directory every poll interval and lists it with a stat per file when it
changed (every create, remove and rename does), or at the latest every
MAX_FULL_SCAN_GAP; full scans are spaced to keep their CPU share near a fifth.

Safety nets: the directory's path is stat'ed every poll interval, so a
directory removed, replaced by rename or mounted over is noticed and watched
afresh, with a full rescan; and a full rescan runs every RESCAN_INTERVAL
anyway, because watchdog drops the kernel's queue-overflow event and
changes that inotify never reports (writes through mmap) must not stay
unseen for ever.  A rescan stats every file (about 30 ms at 10,000 files),
so once a minute costs under 0.1% of a core.  An unreadable directory keeps
the last state rather than looking empty: losing a mount must not destroy
every endpoint.

``DataDirectory`` adds the store: each batch of changed files (at most
BATCH_FILES per loop wake-up, so a burst of thousands still leaves the
sockets served between batches) is one ``Store.apply`` and one state change
for the API, and each new error line is logged once.  ``changed_at`` says
when each file of the last batch changed (wall clock: its inode change
time, which a write or a rename into place sets; for a file gone, when that
was noticed), for the plugin's change-to-message metric.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Callable

from calico.common.zmqloop import EventLoop
from calico.plugin import inotify, store
from calico.plugin.store import DataState, ParsedFile, StateChange

log = logging.getLogger(__name__)

StatKey = tuple[int, int, int, int]

WATCH_MODES = ("auto", "inotify", "poll")
SETTLE = 0.05
MAX_SETTLE = 1.0
RETRY_DELAY = 0.02           # a file that changed while being read
RESCAN_INTERVAL = 60.0
BATCH_FILES = 200
MAX_FILE_BYTES = 1 << 20     # an endpoint file is ~200 bytes; a cluster file a few KB
# Polling: a full scan may run again after this many times its own duration,
# but never waits longer than the gap (changes must show within half a second).
FULL_SCAN_SPACING = 4.0
MAX_FULL_SCAN_GAP = 0.4


@dataclass
class _Entry:
    key: StatKey
    digest: bytes


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def wanted(name: str) -> bool:
    return name.endswith(".txt") and not name.startswith(".")


class _Retry(Exception):
    """The file changed while it was being read."""


class DirectoryWatcher:
    """The ``*.txt`` files of one directory: which changed, and what they say now."""

    def __init__(self, path: str, watch: str = "auto", poll_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        if watch not in WATCH_MODES:
            raise ValueError(f"watch mode {watch!r} is not one of {', '.join(WATCH_MODES)}")
        self.path = os.path.abspath(path)
        self.requested = watch
        self.poll_interval = poll_interval
        self.clock = clock
        self.mode = "poll"
        self.inbox: inotify.Inbox | None = None
        self._watch: inotify.DirectoryWatch | None = None
        self._entries: dict[str, _Entry] = {}
        self._pending: dict[str, str | None] = {}           # read these next, oldest first; -> the
                                                              # other side of a rename, read with it
        self._settling: dict[str, tuple[float, float]] = {}  # name -> (read at, read at the latest)
        # Names an event said exist: one missing when read has been renamed
        # or removed since, and the event saying so is still on its way; a
        # removal now would take an endpoint down for the moment in between.
        self._expected: set[str] = set()
        self._dir_id: tuple[int, int] | None = None
        self._dir_error: str | None = None
        self._dir_key: StatKey | None = None                 # polling: the directory's own stat
        self._next_check = 0.0
        self._next_full_scan = 0.0
        self._next_rescan = 0.0
        self.changed_at: dict[str, float] = {}  # the last batch's files -> when they changed (wall clock)
        self.read_once = False  # the directory has been listed in full at least once

    # --- mode --------------------------------------------------------------

    def start(self) -> None:
        """Choose the mode, arm the watch (before the first scan, so nothing
        slips between them), and queue every file for reading."""
        reason = None
        if self.requested == "poll":
            reason = "--watch poll"
        elif self.requested == "auto":
            remote = inotify.remote_filesystem(self.path)
            if remote is not None:
                reason = f"it is on a {remote} file system, where changes made elsewhere raise no inotify event"
        if reason is not None:
            log.info("data directory %s: polling every %g ms (%s)", self.path, self.poll_interval * 1000, reason)
        else:
            self.mode = "inotify"
            self.inbox = inotify.Inbox()
        self._check_directory()
        if self.mode == "inotify":
            log.info("data directory %s: watching with inotify; full rescan every %g s", self.path, RESCAN_INTERVAL)

    def _arm(self) -> str | None:
        """Watch the directory afresh; None, or why it cannot be watched."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        try:
            self._watch = inotify.DirectoryWatch(self.path, self.inbox)
        except ImportError as exc:
            return f"watchdog is not installed: {exc}"
        except OSError as exc:
            return f"inotify is unavailable: {exc.strerror or exc}"
        return None

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self.inbox is not None:
            self.inbox.close()

    # --- what to read ------------------------------------------------------

    def on_events(self) -> None:
        """The inbox's fd is readable: note which names to read, and when."""
        if self.inbox is None:
            return
        now = self.clock()
        for kind, names, present in self.inbox.take():
            if kind == inotify.LOST:
                self._next_check = 0.0
                continue
            names = [name for name in names if wanted(name)]
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

    def due(self, now: float) -> float:
        """Seconds until ``batch`` has work (0: now)."""
        if self._dir_error is not None:
            return max(0.0, self._next_check - now)  # only the check can end it
        if self._pending:
            return 0.0
        deadlines = [self._next_check]
        if self.mode == "inotify":
            deadlines.append(self._next_rescan)
        deadlines.extend(at for at, _ in self._settling.values())
        return max(0.0, min(deadlines) - now)

    def batch(self, limit: int | None = None) -> dict[str, ParsedFile | None]:
        """Do what is due and read up to ``limit`` changed files: {name: parse,
        or None when gone}; only files whose content changed are in it."""
        now = self.clock()
        for name, (at, _) in list(self._settling.items()):
            if at <= now:
                del self._settling[name]
                self._pending[name] = None
        check_due = now >= self._next_check
        if check_due:
            self._next_check = now + self.poll_interval
        if check_due or self._pending:
            if not self._check_directory():
                return {}
            if check_due and self.mode == "poll":
                self._poll(now)
        if self.mode == "inotify" and now >= self._next_rescan:
            self._full_scan()
        changed: dict[str, ParsedFile | None] = {}
        self.changed_at = {}
        read = 0
        while self._pending and (limit is None or read < limit):
            name = next(iter(self._pending))
            names = [name]
            other = self._pending.pop(name)
            if other is not None and other in self._pending:
                del self._pending[other]
                names.append(other)
            for name in names:
                read += 1
                try:
                    result = self._read(name, expected=name in self._expected)
                except _Retry:
                    log.debug("%s: changed while being read; reading it again", name)
                    self._settling[name] = (now + RETRY_DELAY, now + RETRY_DELAY)
                    continue
                if result is not False:
                    changed[name] = result
                    entry = self._entries.get(name)
                    wall = time.time()
                    self.changed_at[name] = min(entry.key[1] / 1e9, wall) if result is not None and entry else wall
        return changed

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def error(self) -> str | None:
        """Why the directory cannot be read now (the last state stands), or None."""
        return self._dir_error

    # --- the directory -----------------------------------------------------

    def _check_directory(self) -> bool:
        """Stat the directory's path: usable?  The first directory seen, or a
        different one (replaced, mounted over, back after a removal), is
        watched afresh and scanned in full."""
        try:
            st = os.stat(self.path)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        except OSError as exc:
            self._unreadable(f"cannot read data directory {self.path}: {exc.strerror}; keeping the last state")
            return False
        ident = (st.st_dev, st.st_ino)
        if ident == self._dir_id:
            # Back after a spell of errors: what changed meanwhile is unknown.
            return self._dir_error is None or self._full_scan()
        if self._dir_id is not None:
            log.warning("data directory %s is another directory now; reading it afresh", self.path)
        if self.mode == "inotify":
            reason = self._arm()
            if reason is not None:
                if not os.path.isdir(self.path):
                    return False  # gone again already: arm when it is back
                self._fall_back(reason)
        self._dir_id = ident
        return self._full_scan()

    def _fall_back(self, reason: str) -> None:
        self.mode = "poll"
        log.warning("data directory %s: polling every %g ms (%s)", self.path, self.poll_interval * 1000, reason)

    def _unreadable(self, reason: str) -> None:
        if reason != self._dir_error:
            log.error("%s", reason)
            self._dir_error = reason

    def _full_scan(self) -> bool:
        """List the directory; queue every name whose stat differs from what
        was read, and every name gone."""
        start = self.clock()
        try:
            # Stat'ed before listing, so a change during the scan shows next time.
            dir_key = _stat_key(os.stat(self.path))
            with os.scandir(self.path) as listing:
                found = {e.name: e for e in listing if wanted(e.name)}
        except OSError as exc:
            self._unreadable(f"cannot list data directory {self.path}: {exc.strerror}; keeping the last state")
            return False
        if self._dir_error is not None:
            log.info("data directory %s is readable again", self.path)
            self._dir_error = None
        self.read_once = True
        for name in self._entries.keys() - found.keys():
            self._pending[name] = None
        for name, dir_entry in found.items():
            entry = self._entries.get(name)
            try:
                st = dir_entry.stat()
            except OSError:
                if entry is not None:
                    self._pending[name] = None
                continue
            if not stat.S_ISREG(st.st_mode):
                if entry is not None:
                    self._pending[name] = None
            elif entry is None or entry.key != _stat_key(st):
                self._pending[name] = None
        end = self.clock()
        self._dir_key = dir_key
        self._next_rescan = end + RESCAN_INTERVAL
        self._next_full_scan = start + min(FULL_SCAN_SPACING * (end - start), MAX_FULL_SCAN_GAP)
        return True

    def _poll(self, now: float) -> None:
        """Polling: a full scan when the directory changed or one is due."""
        try:
            dir_key = _stat_key(os.stat(self.path))
        except OSError:
            dir_key = None
        if dir_key is None or dir_key != self._dir_key or now >= self._next_full_scan:
            self._full_scan()

    # --- one file ----------------------------------------------------------

    def _read(self, name: str, expected: bool = False) -> ParsedFile | None | bool:
        """The file's new parse, None when it is gone, False when unchanged
        (or, when ``expected``, missing: the next event tells what became of it)."""
        self._expected.discard(name)
        path = os.path.join(self.path, name)
        data, reason, key = None, None, (0, 0, -1, 0)
        try:
            # stat first: never open a FIFO or a device that took a .txt name.
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                return self._gone(name)
            key = _stat_key(st)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if expected and self.mode == "inotify":
                log.debug("%s: moved on before it was read; waiting for the event that says where", name)
                return False
            return self._gone(name)
        except OSError as exc:
            reason = f"cannot read: {exc.strerror}"
        else:
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    return self._gone(name)
                key = _stat_key(st)
                if st.st_size > MAX_FILE_BYTES:
                    reason = f"larger than {MAX_FILE_BYTES} bytes; not read"
                else:
                    data = _read_at_most(fd, MAX_FILE_BYTES + 1)
                    if len(data) > MAX_FILE_BYTES:
                        data, reason = None, f"larger than {MAX_FILE_BYTES} bytes; not read"
                if _stat_key(os.fstat(fd)) != key:
                    raise _Retry()
            except OSError as exc:
                data, reason = None, f"cannot read: {exc.strerror}"
            finally:
                os.close(fd)
        digest = hashlib.sha256(data).digest() if data is not None else b"unreadable:" + reason.encode()
        entry = self._entries.get(name)
        if entry is not None and entry.digest == digest:
            entry.key = key
            return False
        self._entries[name] = _Entry(key, digest)
        log.debug("%s: %s", name, "changed" if entry is not None else "found")
        if data is None:
            return store.unreadable_file(name, reason)
        try:
            return store.parse_file(name, data.decode("utf-8"))
        except UnicodeDecodeError:
            return store.unreadable_file(name, "not UTF-8 text")

    def _gone(self, name: str) -> None | bool:
        if self._entries.pop(name, None) is None:
            return False
        log.debug("%s: removed", name)
        return None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class DataDirectory:
    """The watcher and the store together: the current DataState, and a
    StateChange for each batch of changed files."""

    def __init__(self, path: str, watch: str = "auto", poll_interval: float = 0.1,
                 batch_files: int = BATCH_FILES, clock: Callable[[], float] = time.monotonic):
        self.watcher = DirectoryWatcher(path, watch, poll_interval, clock)
        self.store = store.Store()
        self.batch_files = batch_files
        self._on_change: Callable[[DataState, StateChange], None] | None = None
        self._loop: EventLoop | None = None

    @property
    def state(self) -> DataState:
        return self.store.state

    @property
    def changed_at(self) -> dict[str, float]:
        """When each file of the last batch changed (see the module docstring)."""
        return self.watcher.changed_at

    def file_counts(self) -> tuple[int, int]:
        """(files read, files with errors of their own or unreadable)."""
        files = self.store.files
        return len(files), sum(1 for parsed in files.values() if parsed.errors or parsed.contents is None)

    def load(self) -> StateChange:
        """Start watching and read every file, as one batch (before the
        sockets are served, so the first request sees every file)."""
        self.watcher.start()
        return self._apply(self.watcher.batch())

    def refresh(self) -> StateChange | None:
        """One batch: the change it made, or None when nothing changed."""
        files = self.watcher.batch(self.batch_files)
        return self._apply(files) if files else None

    def attach(self, loop: EventLoop, on_change: Callable[[DataState, StateChange], None]) -> None:
        """Serve from ``loop``: inotify's fd wakes it; each wake-up applies
        at most one batch and hands the change to ``on_change``."""
        self._on_change = on_change
        self._loop = loop
        if self.watcher.inbox is not None:
            loop.add_socket(self.watcher.inbox.fd, self._on_events)
        loop.add_timer(self._tick)

    def _on_events(self) -> None:
        # The events may make files due at once (a rename) or sooner than
        # the timer last asked for (a write settling).
        self.watcher.on_events()
        self._loop.wake(self._tick, at=self._loop.clock() + self.watcher.due(self.watcher.clock()))

    def _tick(self, now: float) -> float:
        change = self.refresh()
        if change is not None and self._on_change is not None:
            self._on_change(self.state, change)
        return self.watcher.due(self.watcher.clock())

    def close(self) -> None:
        self.watcher.close()

    def _apply(self, files: dict[str, ParsedFile | None]) -> StateChange:
        change = self.store.apply(files)
        for line in change.new_notes + change.new_errors:
            log.warning("%s", line)
        return change
