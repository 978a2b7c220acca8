"""Noticing changes in the data directory and reading them, a batch at a time.

The kernel says which files changed (inotify, calico/plugin/inotify.py), so
an idle directory costs nothing however many files it holds.  A name that
was renamed into place, removed, moved away or closed after writing is read
at once; one that was created or written in place is read once the writes
pause (SETTLE after the last, at most MAX_SETTLE after the first), so an
editor or scp rewriting a file in place is read whole, not truncated.  Names
starting with a dot, or not ending in .txt, are ignored (the writers'
temporary names).  A file that changes while it is being read is read
again shortly; the last good parse stands meanwhile.  Which names to read,
and when, is ``read_queue``; what each file said, and reading one,
``known_files``.

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
import logging
import os
import stat
import time
from typing import Callable

from calico.common.settings import WATCH_MODES
from calico.common.zmqloop import EventLoop
from calico.plugin import inotify, store
from calico.plugin.known_files import KnownFiles, Retry, StatKey, stat_key, wanted
from calico.plugin.read_queue import ReadQueue
from calico.plugin.store import DataState, ParsedFile, StateChange

log = logging.getLogger(__name__)

RETRY_DELAY = 0.02           # a file that changed while being read
RESCAN_INTERVAL = 60.0
BATCH_FILES = 200
# Polling: a full scan may run again after this many times its own duration,
# but never waits longer than the gap (changes must show within half a second).
FULL_SCAN_SPACING = 4.0
MAX_FULL_SCAN_GAP = 0.4


class DirectoryWatcher:
    """The ``*.txt`` files of one directory: which changed, and what they say
    now.  It holds how the directory is watched and when it is next checked
    and scanned; the names to read are its ``queue`` (``read_queue``), what
    each file said is its ``files`` (``known_files``)."""

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
        self.files = KnownFiles(self.path)
        self.queue = ReadQueue()
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
            else:
                self.queue.note_event(kind, [name for name in names if wanted(name)], present, now)

    def due(self, now: float) -> float:
        """Seconds until ``batch`` has work (0: now)."""
        if self._dir_error is not None:
            return max(0.0, self._next_check - now)  # only the check can end it
        if self.queue:
            return 0.0
        deadlines = [self._next_check]
        if self.mode == "inotify":
            deadlines.append(self._next_rescan)
        deadlines.extend(self.queue.settling_deadlines())
        return max(0.0, min(deadlines) - now)

    def batch(self, limit: int | None = None) -> dict[str, ParsedFile | None]:
        """Do what is due and read up to ``limit`` changed files: {name: parse,
        or None when gone}; only files whose content changed are in it."""
        now = self.clock()
        self.queue.settle(now)
        check_due = now >= self._next_check
        if check_due:
            self._next_check = now + self.poll_interval
        if check_due or self.queue:
            if not self._check_directory():
                return {}
            if check_due and self.mode == "poll":
                self._poll(now)
        if self.mode == "inotify" and now >= self._next_rescan:
            self._full_scan()
        changed, self.changed_at = _read_queued(self.queue, self.files, limit, now, self.mode == "inotify")
        return changed

    @property
    def pending(self) -> int:
        return len(self.queue)

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
                self.mode = "poll"
                log.warning("data directory %s: polling every %g ms (%s)", self.path, self.poll_interval * 1000,
                            reason)
        self._dir_id = ident
        return self._full_scan()

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
            dir_key = stat_key(os.stat(self.path))
            with os.scandir(self.path) as listing:
                found = {e.name: e for e in listing if wanted(e.name)}
        except OSError as exc:
            self._unreadable(f"cannot list data directory {self.path}: {exc.strerror}; keeping the last state")
            return False
        if self._dir_error is not None:
            log.info("data directory %s is readable again", self.path)
            self._dir_error = None
        self.read_once = True
        for name in self.files.to_read(found):
            self.queue.add(name)
        end = self.clock()
        self._dir_key = dir_key
        self._next_rescan = end + RESCAN_INTERVAL
        self._next_full_scan = start + min(FULL_SCAN_SPACING * (end - start), MAX_FULL_SCAN_GAP)
        return True

    def _poll(self, now: float) -> None:
        """Polling: a full scan when the directory changed or one is due."""
        try:
            dir_key = stat_key(os.stat(self.path))
        except OSError:
            dir_key = None
        if dir_key is None or dir_key != self._dir_key or now >= self._next_full_scan:
            self._full_scan()


def _read_queued(queue: ReadQueue, files: KnownFiles, limit: int | None, now: float,
                 inotify_mode: bool) -> tuple[dict[str, ParsedFile | None], dict[str, float]]:
    """Read up to ``limit`` names from ``queue`` (both sides of a rename
    together): the files whose content changed, and when each changed."""
    changed: dict[str, ParsedFile | None] = {}
    changed_at: dict[str, float] = {}
    read = 0
    while queue and (limit is None or read < limit):
        for name in queue.take():
            read += 1
            await_event = queue.forget_expected(name) and inotify_mode
            try:
                result = files.read(name, await_event)
            except Retry:
                log.debug("%s: changed while being read; reading it again", name)
                queue.retry(name, now + RETRY_DELAY)
                continue
            if result is not False:
                changed[name] = result
                ctime, wall = files.changed_at(name), time.time()
                changed_at[name] = min(ctime, wall) if result is not None and ctime is not None else wall
    return changed, changed_at


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
