"""Kernel notifications (inotify) for the data directory, for a one-thread loop.

The library is watchdog (Debian bookworm: python3-watchdog 2.2.1), not
pyinotify (python3-pyinotify 0.9.6).  pyinotify hands out a file descriptor
to poll, which suits our single-threaded EventLoop best, but it has had no
release since 2015 and imports asyncore, which Python 3.12 removed: from
PyPI it no longer imports on any Python after 3.11, and Debian keeps it
alive with its own patches.  watchdog is maintained and runs on every Python
we support.  Its stable interface is threads (an observer thread calls a
handler); its lower-level inotify classes are internal and changed shape
between releases, so only the observer interface is used, and its threads
are fenced off: the handler only appends (what, file name) to a deque and
bumps an eventfd, which the loop's zmq.Poller watches beside the sockets.
Every decision is taken in the loop's own thread.

What watchdog 2.2.1 leaves out, and who covers it (calico/plugin/watcher.py):

* a kernel queue overflow (IN_Q_OVERFLOW) is dropped without a word: the
  periodic full rescan is the safety net;
* the directory renamed away or unmounted (IN_MOVE_SELF, IN_UNMOUNT) is not
  reported: the watcher stats the directory's path every poll interval and
  arms a new watch when the path names another directory;
* a file moved out of the directory is reported 0.5 s late (watchdog waits
  that long for a matching move into a watched directory) and holds back
  the events behind it as long;
* later releases also report opens and closes without writing: ignored,
  or our own reads would wake us for ever.

``remote_filesystem`` tells when inotify cannot be trusted at all: on
network and FUSE file systems a change made on another machine raises no
event (GNU tail makes the same check), so the watcher polls there.
"""

from __future__ import annotations

import collections
import logging
import os
import threading

log = logging.getLogger(__name__)

# What an event asks of the watcher.
NOW = "now"          # the name was renamed, removed or closed after writing: read it
SETTLE = "settle"    # created or written: read it once the writes pause
LOST = "lost"        # the directory itself was removed

_KINDS = {"moved": NOW, "deleted": NOW, "closed": NOW, "created": SETTLE, "modified": SETTLE}

# File systems on which changes made elsewhere raise no inotify event.
REMOTE_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "ceph", "coda", "gfs2", "glusterfs",
    "gpfs", "lustre", "ocfs2", "vboxsf", "vmhgfs", "virtiofs", "fuse",
})


def filesystem_type(path: str) -> str | None:
    """The type of the file system holding ``path`` (from /proc/self/mountinfo,
    matched by device number), or None when it cannot be told."""
    try:
        st = os.stat(path)
        device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 2 and fields[2] == device and "-" in fields[3:]:
                    after = fields.index("-", 3) + 1
                    return fields[after] if after < len(fields) else None
    except OSError:
        return None
    return None


def remote_filesystem(path: str) -> str | None:
    """The file system type when it is one inotify cannot watch fully, else None."""
    kind = filesystem_type(path)
    if kind is None:
        return None
    if kind in REMOTE_FILESYSTEMS or kind.startswith("fuse.") or kind.startswith("nfs"):
        return kind
    return None


class Inbox:
    """Events from watchdog's threads, and an eventfd that says some wait.

    Outlives the watches that feed it, so the loop registers one fd for
    good even when the directory is watched afresh."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._events: collections.deque[tuple[str, tuple[str, ...], tuple[str, ...]]] = collections.deque()
        self._lock = threading.Lock()  # the fd is not written after close

    def put(self, kind: str, names: tuple[str, ...], present: tuple[str, ...] = ()) -> None:
        """One event; a rename within the directory names both sides, in
        one item, so the loop never sees one side without the other.
        ``present``: the names the event says exist now (a rename's
        destination, a file written): if one is missing when it is read, it
        has moved on again, and a later event says where."""
        self._events.append((kind, names, present))
        with self._lock:
            if self.fd >= 0:
                os.eventfd_write(self.fd, 1)

    def take(self) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
        """Every event waiting, oldest first; clears the fd."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        taken = []
        while True:
            try:
                taken.append(self._events.popleft())
            except IndexError:
                return taken

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


class DirectoryWatch:
    """One directory watched through watchdog's inotify observer, feeding an Inbox.

    Raises ImportError when watchdog is missing and OSError when inotify
    refuses (no inotify, "inotify watch limit reached", "inotify instance
    limit reached", no such directory)."""

    def __init__(self, path: str, inbox: Inbox):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers.inotify import InotifyObserver

        # watchdog watches with IN_DONT_FOLLOW: a symlink to the directory
        # would be watched itself, not the directory.
        directory = os.path.realpath(path)

        class Forward(FileSystemEventHandler):
            def dispatch(self, event) -> None:  # runs in watchdog's thread
                kind = _KINDS.get(event.event_type)
                if kind is None:
                    return
                paths = [event.src_path, getattr(event, "dest_path", None)] if event.event_type == "moved" \
                    else [event.src_path]
                names = []
                present = []
                for side, changed in enumerate(paths):
                    if not changed:
                        continue  # one side of a move from or to elsewhere
                    changed = os.fsdecode(changed)
                    if changed == directory:
                        if event.event_type == "deleted":
                            inbox.put(LOST, ())
                    elif os.path.dirname(changed) == directory:
                        names.append(os.path.basename(changed))
                        # Which names the event says exist now: a move's
                        # destination, a file written or closed.
                        if event.event_type != "deleted" and (event.event_type != "moved" or side == 1):
                            present.append(names[-1])
                if names:
                    inbox.put(kind, tuple(names), tuple(present))

        # generate_full_events: a file moved in from elsewhere is a move
        # (read at once), not a creation (read once writes pause).
        self._observer = InotifyObserver(generate_full_events=True)
        self._observer.schedule(Forward(), directory, recursive=False)
        self._observer.start()  # arms the watch here, in this thread: errors raise here

    def close(self) -> None:
        """Stop watching, in a thread of its own: stopping joins watchdog's
        threads, and the loop must never wait on them."""
        threading.Thread(target=self._stop, name="inotify-stop", daemon=True).start()

    def _stop(self) -> None:
        try:
            self._observer.stop()
        except Exception:  # a watch already gone with its directory
            log.debug("stopping the inotify observer", exc_info=True)
