"""What each file of the data directory said when it was last read.

``KnownFiles`` keeps, per name, the file's stat and a digest of its bytes:
a directory listing whose stat differs from it says which names to read
again, and a read whose digest is unchanged is no change at all (a rewrite
of the same text, or a new inode with it).  Reading is careful: a FIFO or a
device that took a .txt name is never opened, a file larger than
MAX_FILE_BYTES is not read, and one that changes while it is being read
raises ``Retry`` (the watcher reads it again shortly).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from typing import Iterable, Mapping

from calico.plugin import store
from calico.plugin.store import ParsedFile

log = logging.getLogger("calico.plugin.watcher")

StatKey = tuple[int, int, int, int]

MAX_FILE_BYTES = 1 << 20     # an endpoint file is ~200 bytes; a cluster file a few KB


@dataclass
class _Entry:
    key: StatKey
    digest: bytes


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def wanted(name: str) -> bool:
    """A name the watcher reads (not a writer's temporary name)."""
    return name.endswith(".txt") and not name.startswith(".")


class Retry(Exception):
    """The file changed while it was being read."""


class KnownFiles:
    """Each name read: its stat and the digest of what it said."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._entries: dict[str, _Entry] = {}

    def to_read(self, found: Mapping[str, os.DirEntry]) -> Iterable[str]:
        """The names a listing (``found``: wanted name -> entry) says to read:
        each gone, not a regular file any more, or whose stat changed."""
        yield from self._entries.keys() - found.keys()
        for name, dir_entry in found.items():
            known = name in self._entries
            try:
                st = dir_entry.stat()
            except OSError:
                if known:
                    yield name
                continue
            if not stat.S_ISREG(st.st_mode):
                if known:
                    yield name
            elif not known or self._entries[name].key != stat_key(st):
                yield name

    def changed_at(self, name: str) -> float | None:
        """The inode change time (seconds) of what was last read, if known."""
        entry = self._entries.get(name)
        return entry.key[1] / 1e9 if entry is not None else None

    def read(self, name: str, await_event: bool = False) -> ParsedFile | None | bool:
        """The file's new parse, None when it is gone, False when unchanged
        (or, when ``await_event``, missing: the next inotify event tells
        what became of it)."""
        path = os.path.join(self.directory, name)
        data, reason, key = None, None, (0, 0, -1, 0)
        try:
            # stat first: never open a FIFO or a device that took a .txt name.
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                return self._gone(name)
            key = stat_key(st)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if await_event:
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
                key = stat_key(st)
                if st.st_size > MAX_FILE_BYTES:
                    reason = f"larger than {MAX_FILE_BYTES} bytes; not read"
                else:
                    data = _read_at_most(fd, MAX_FILE_BYTES + 1)
                    if len(data) > MAX_FILE_BYTES:
                        data, reason = None, f"larger than {MAX_FILE_BYTES} bytes; not read"
                if stat_key(os.fstat(fd)) != key:
                    raise Retry()
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
