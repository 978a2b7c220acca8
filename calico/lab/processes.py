"""Starting and stopping the lab's processes, by pid and nothing else.

Each process is started as an argument list under ``ip netns exec NS``
(which execs the command, so the pid we get is the command's own), in its
own session so it outlives the ``calico-lab`` command that started it, with
its output appended to a log file in the lab directory.  Its pid goes into a
pid file named after a label (``host-1-felix``, ``c-web1-listener``).

Stopping reads the pid file and signals the process only if its command
line still mentions the lab directory: a pid file left by a crash may by
now name somebody else's process.  ``kill_in_namespaces`` is the sweep
``down`` uses for whatever has no pid file (a crash between start and pid
write): any process whose network namespace is one of the lab's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Iterable, Sequence

from calico import netns
from calico.common.validation import DECIMAL_RE
from calico.lab.layout import Layout


def start(layout: Layout, label: str, ns: str, command: Sequence[str],
          env: dict[str, str] | None = None) -> int:
    os.makedirs(layout.log_dir, exist_ok=True)
    os.makedirs(layout.pid_dir, exist_ok=True)
    with open(layout.out_file(label), "ab") as log:
        proc = subprocess.Popen(netns.argv(ns, command), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    with open(layout.pid_file(label), "w", encoding="utf-8") as handle:
        handle.write(f"{proc.pid}\n")
    return proc.pid


def read_pid(layout: Layout, label: str) -> int | None:
    try:
        with open(layout.pid_file(label), encoding="utf-8") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if DECIMAL_RE.fullmatch(text) else None


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def is_ours(layout: Layout, pid: int) -> bool:
    """True while ``pid`` is a live process started by this lab."""
    return not _is_zombie(pid) and any(layout.lab_dir in part for part in cmdline(pid))


def alive(layout: Layout, label: str) -> int | None:
    """The process's pid if it runs, else None."""
    pid = read_pid(layout, label)
    return pid if pid is not None and is_ours(layout, pid) else None


def labels(layout: Layout) -> list[str]:
    try:
        return sorted(name[:-4] for name in os.listdir(layout.pid_dir) if name.endswith(".pid"))
    except FileNotFoundError:
        return []


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pids(pids: Iterable[int], sig: int = signal.SIGTERM, wait: float = 3.0) -> None:
    """Signal each pid, wait for all to go, then SIGKILL the stragglers."""
    pending = set()
    for pid in pids:
        try:
            os.kill(pid, sig)
            pending.add(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            _reap(pid)
            if _is_zombie(pid):
                pending.discard(pid)
        time.sleep(0.02)
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)


def stop(layout: Layout, label: str, sig: int = signal.SIGTERM) -> bool:
    """Stop one labelled process (if it is still ours) and drop its pid file."""
    pid = alive(layout, label)
    if pid is not None:
        stop_pids([pid], sig)
    try:
        os.unlink(layout.pid_file(label))
    except FileNotFoundError:
        pass
    return pid is not None


def kill(layout: Layout, label: str) -> int | None:
    """SIGKILL one labelled process (a crash, for tests); keeps its pid file."""
    pid = alive(layout, label)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _is_zombie(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.01)
    return pid


def pids_in_namespaces(ns_names: Iterable[str]) -> list[int]:
    """Every process living in one of these named namespaces."""
    inodes = set()
    for name in ns_names:
        try:
            inodes.add(os.stat(netns.path(name)).st_ino)
        except OSError:
            pass
    found = []
    if not inodes:
        return found
    for entry in os.listdir("/proc"):
        if not DECIMAL_RE.fullmatch(entry):
            continue
        try:
            link = os.readlink(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if link.startswith("net:[") and int(link[5:-1]) in inodes and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def kill_in_namespaces(ns_names: Iterable[str]) -> int:
    pids = pids_in_namespaces(ns_names)
    stop_pids(pids, signal.SIGTERM, wait=2.0)
    return len(pids)
