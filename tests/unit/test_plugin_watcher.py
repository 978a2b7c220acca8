"""The data directory watcher against a real temp directory (no root): the
inotify path through watchdog, the polling fallback, and the log-once
reporting and bounded batches of DataDirectory on top."""

import errno
import logging
import os
import select

import pytest

import polling
from calico.common.datafiles import write_file_atomically
from calico.common.zmqloop import EventLoop
from calico.plugin import inotify, known_files, read_queue, watcher
from calico.plugin.watcher import DataDirectory, DirectoryWatcher

CLUSTER = "[felix h1]\nip=10.0.0.1\n"
EP = "[endpoint e]\nid=e\nip=192.168.1.1\nmac=aa:bb:cc:00:00:01\nhost=h1\ngroup=web\n"


def ep(n, group="web"):
    return f"[endpoint e{n}]\nid=e{n}\nip=192.168.{n // 250}.{n % 250 + 1}\nmac=aa:bb:cc:00:00:01\nhost=h1\ngroup={group}\n"


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def endpoints_of(parsed):
    return [e.endpoint_id for e in parsed.contents.endpoints] if parsed is not None else None


def sources(batch):
    return {name: endpoints_of(parsed) for name, parsed in batch.items()}


def drain(w, timeout=0.2):
    """Hand the watcher whatever inotify reports within ``timeout``."""
    if select.select([w.inbox.fd], [], [], timeout)[0]:
        w.on_events()


def wait_settling(w, name):
    """Until an event has put ``name`` among those read once writes pause."""
    polling.wait_until(lambda: drain(w, 0.02) or w.queue.is_settling(name), what=f"{name} settling", interval=0)


def collect(w, until, what, clock=None, step=0.0):
    """Drain events and read batches until ``until(got)``; the batches merged."""
    got = {}

    def attempt():
        drain(w, 0.02)
        if clock is not None:
            clock.now += step
        got.update(w.batch())
        return until(got)

    polling.wait_until(attempt, what=what, timeout=10, interval=0.01)
    return got


@pytest.fixture
def inotify_watcher(tmp_path):
    made = []

    def make(path=None, clock=None, **kwargs):
        w = DirectoryWatcher(str(path or tmp_path), "inotify", clock=clock or FakeClock(), **kwargs)
        w.start()
        assert w.mode == "inotify"
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


# --- inotify ------------------------------------------------------------------

def test_inotify_mode_is_logged_once_and_the_first_batch_is_every_wanted_file(tmp_path, inotify_watcher, caplog):
    (tmp_path / "felix.txt").write_text(CLUSTER)
    (tmp_path / ".e.txt.123.tmp").write_text("half a fi")
    (tmp_path / ".hidden.txt").write_text("junk")
    (tmp_path / "notes.md").write_text("junk")
    (tmp_path / "sub.txt").mkdir()
    os.mkfifo(tmp_path / "pipe.txt")  # never opened: it would block
    with caplog.at_level(logging.INFO, logger="calico.plugin.watcher"):
        w = inotify_watcher()
        assert list(w.batch()) == ["felix.txt"]
    assert [r.getMessage() for r in caplog.records] == [
        f"data directory {tmp_path}: watching with inotify; full rescan every 60 s"]
    drain(w)
    assert w.batch() == {}


def test_renamed_into_place_is_read_at_once(tmp_path, inotify_watcher):
    clock = FakeClock()
    w = inotify_watcher(clock=clock)
    w.batch()
    write_file_atomically(str(tmp_path / "e.txt"), EP)
    # The clock stands still: no settling wait for a rename.
    got = collect(w, lambda got: "e.txt" in got, "the renamed file")
    assert sources(got) == {"e.txt": ["e"]}
    assert w.due(clock.now) > 0


def test_written_in_place_is_read_when_the_writer_closes_or_pauses(tmp_path, inotify_watcher):
    clock = FakeClock()
    w = inotify_watcher(clock=clock)
    w.batch()
    path = tmp_path / "e.txt"
    with open(path, "w") as handle:
        handle.write(EP[:20])
        handle.flush()
        wait_settling(w, "e.txt")
        assert w.batch() == {}  # half written: not read while the writes may go on
        handle.write(EP[20:])
    got = collect(w, lambda got: "e.txt" in got, "the file closed after writing")
    assert sources(got) == {"e.txt": ["e"]}
    # Edited in place (truncated and rewritten), closed: read whole.
    path.write_text(EP.replace("web", "db"))
    got = collect(w, lambda got: "e.txt" in got, "the edit")
    assert got["e.txt"].contents.endpoints[0].groups == ("db",)
    # A writer that keeps the file open is read once its writes pause.
    with open(path, "a") as handle:
        handle.write("\n[endpoint f]\nid=f\nip=192.168.1.2\nmac=aa:bb:cc:00:00:02\nhost=h1\ngroup=web\n")
        handle.flush()
        wait_settling(w, "e.txt")
        assert w.batch() == {}
        clock.now += read_queue.SETTLE
        assert sources(w.batch()) == {"e.txt": ["e", "f"]}


def test_deleted_moved_away_and_moved_in(tmp_path, inotify_watcher):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(EP)
    (data / "b.txt").write_text(EP.replace("=e\n", "=b\n"))
    w = inotify_watcher(data)
    assert set(w.batch()) == {"a.txt", "b.txt"}
    (data / "a.txt").unlink()
    assert collect(w, lambda got: "a.txt" in got, "the deletion") == {"a.txt": None}
    (data / "b.txt").rename(elsewhere / "b.txt")
    assert collect(w, lambda got: "b.txt" in got, "the move away") == {"b.txt": None}
    (elsewhere / "b.txt").rename(data / "c.txt")
    assert sources(collect(w, lambda got: "c.txt" in got, "the move in")) == {"c.txt": ["b"]}
    # Renamed within the directory: one name goes, the other comes.
    (data / "c.txt").rename(data / "d.txt")
    got = collect(w, lambda got: {"c.txt", "d.txt"} <= set(got), "the rename")
    assert sources(got) == {"c.txt": None, "d.txt": ["b"]}


def test_a_rename_within_the_directory_is_one_batch_even_at_the_limit(tmp_path, inotify_watcher):
    (tmp_path / "a.txt").write_text(EP)
    (tmp_path / "z.txt").write_text(EP.replace("=e\n", "=z\n"))
    w = inotify_watcher()
    w.batch()
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    (tmp_path / "z.txt").unlink()
    polling.wait_until(lambda: drain(w, 0.02) or w.pending == 3, what="three names to read", interval=0)
    # Never one side of the rename without the other (the endpoint would go
    # and come back).
    assert sources(w.batch(1)) == {"a.txt": None, "b.txt": ["e"]}
    assert w.batch(1) == {"z.txt": None}


def test_a_symlink_to_the_directory_watches_the_directory(tmp_path, inotify_watcher):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    w = inotify_watcher(tmp_path / "link")
    w.batch()
    write_file_atomically(str(real / "e.txt"), EP)
    assert sources(collect(w, lambda got: "e.txt" in got, "the file in the linked directory")) == {"e.txt": ["e"]}


def test_unchanged_content_is_no_change(tmp_path, inotify_watcher):
    path = tmp_path / "e.txt"
    path.write_text(EP)
    w = inotify_watcher()
    w.batch()
    os.utime(path, ns=(1, 1))
    write_file_atomically(str(path), EP)  # a new inode, the same text
    (tmp_path / "marker.txt").write_text(CLUSTER)
    got = collect(w, lambda got: "marker.txt" in got, "the marker")
    assert list(got) == ["marker.txt"]


def test_a_file_changing_while_read_is_read_again(tmp_path, inotify_watcher, monkeypatch):
    path = tmp_path / "e.txt"
    real_read = known_files._read_at_most
    edits = []

    def read_then_edit(fd, limit):
        data = real_read(fd, limit)
        if not edits:
            edits.append(1)
            with open(path, "a") as handle:  # someone writing in place meanwhile
                handle.write("\n[endpoint f]\nid=f\nip=192.168.1.2\nmac=aa:bb:cc:00:00:02\nhost=h1\ngroup=web\n")
        return data

    clock = FakeClock()
    w = inotify_watcher(clock=clock)
    w.batch()
    monkeypatch.setattr(known_files, "_read_at_most", read_then_edit)
    write_file_atomically(str(path), EP)
    batches = []
    polling.wait_until(lambda: drain(w, 0.02) or batches.append(w.batch()) or edits, what="the first read",
                       interval=0)
    assert not any(batches) and w.batch() == {}  # what it read while the file changed is not used
    clock.now += read_queue.SETTLE
    got = collect(w, lambda got: "e.txt" in got, "the second read")
    assert sources(got) == {"e.txt": ["e", "f"]}


def test_directory_replaced_by_rename_is_watched_afresh(tmp_path, inotify_watcher, caplog):
    data, new, old = tmp_path / "data", tmp_path / "data.new", tmp_path / "data.old"
    data.mkdir()
    (data / "a.txt").write_text(EP)
    (data / "b.txt").write_text(EP.replace("=e\n", "=b\n"))
    clock = FakeClock()
    w = inotify_watcher(data, clock=clock)
    assert set(w.batch()) == {"a.txt", "b.txt"}
    new.mkdir()
    (new / "b.txt").write_text(EP.replace("=e\n", "=b\n"))
    (new / "c.txt").write_text(EP.replace("=e\n", "=c\n"))
    data.rename(old)
    new.rename(data)
    with caplog.at_level(logging.WARNING, logger="calico.plugin.watcher"):
        clock.now += 1.0  # the next check of the directory's path
        assert sources(w.batch()) == {"a.txt": None, "c.txt": ["c"]}
    assert f"data directory {data} is another directory now; reading it afresh" in caplog.messages
    # The new directory is the one watched.
    (data / "d.txt").write_text(EP.replace("=e\n", "=d\n"))
    assert sources(collect(w, lambda got: "d.txt" in got, "a file in the new directory")) == {"d.txt": ["d"]}
    (old / "a.txt").write_text(EP)
    drain(w)
    assert w.batch() == {}


def test_directory_removed_keeps_the_last_state_and_is_read_when_back(tmp_path, inotify_watcher, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(EP)
    clock = FakeClock()
    w = inotify_watcher(data, clock=clock)
    w.batch()
    os.rename(data, tmp_path / "gone")
    with caplog.at_level(logging.INFO, logger="calico.plugin.watcher"):
        for _ in range(3):
            clock.now += 1.0
            drain(w, 0.05)
            assert w.batch() == {}
            assert w.due(clock.now) > 0  # waiting, not spinning
        clock.now += watcher.RESCAN_INTERVAL
        assert w.batch() == {} and w.due(clock.now) > 0
        data.mkdir()
        (data / "b.txt").write_text(EP.replace("=e\n", "=b\n"))
        clock.now += 1.0
        assert sources(w.batch()) == {"a.txt": None, "b.txt": ["b"]}
    assert caplog.messages.count(f"cannot read data directory {data}: No such file or directory; "
                                 "keeping the last state") == 1
    (data / "c.txt").write_text(EP.replace("=e\n", "=c\n"))
    assert sources(collect(w, lambda got: "c.txt" in got, "a file in the recreated directory")) == {"c.txt": ["c"]}


def test_rescan_finds_what_no_event_reported(tmp_path, inotify_watcher):
    clock = FakeClock()
    w = inotify_watcher(clock=clock)
    w.batch()
    (tmp_path / "e.txt").write_text(EP)
    assert select.select([w.inbox.fd], [], [], 5)[0]
    polling.wait_until(lambda: len(w.inbox.take()) == 0, what="the events to stop", interval=0.1)
    # All lost, as in a kernel queue overflow.
    assert w.batch() == {}
    clock.now += watcher.RESCAN_INTERVAL
    assert sources(w.batch()) == {"e.txt": ["e"]}


def test_a_burst_comes_in_bounded_batches(tmp_path, inotify_watcher):
    w = inotify_watcher()
    w.batch()
    for n in range(500):
        (tmp_path / f".e{n}.tmp").write_text(ep(n))
    for n in range(500):
        os.rename(tmp_path / f".e{n}.tmp", tmp_path / f"e{n}.txt")
    sizes, got = [], {}

    def step():
        drain(w, 0.02)
        batch = w.batch(200)
        sizes.append(len(batch))
        got.update(batch)
        return len(got) == 500

    polling.wait_until(step, what="every file of the burst", timeout=20, interval=0)
    assert max(sizes) == 200 and sum(sizes) == 500


def test_too_large_file_is_an_error_for_that_file(tmp_path, inotify_watcher, monkeypatch):
    monkeypatch.setattr(known_files, "MAX_FILE_BYTES", 100)
    (tmp_path / "big.txt").write_text(EP + "#" * 100)
    w = inotify_watcher()
    assert w.batch()["big.txt"].errors == ("big.txt: larger than 100 bytes; not read",)


def test_not_utf8_and_unreadable_are_errors_for_that_file(tmp_path, inotify_watcher):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe[endpoint")
    w = inotify_watcher()
    assert w.batch()["bin.txt"].errors == ("bin.txt: not UTF-8 text",)


# --- falling back to polling --------------------------------------------------

def test_inotify_failing_falls_back_to_polling_and_says_so_once(tmp_path, monkeypatch, caplog):
    def refuse(path, inbox):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(inotify, "DirectoryWatch", refuse)
    clock = FakeClock()
    w = DirectoryWatcher(str(tmp_path), "auto", clock=clock)
    with caplog.at_level(logging.INFO, logger="calico.plugin.watcher"):
        w.start()
        w.batch()
    assert w.mode == "poll"
    assert caplog.messages == [f"data directory {tmp_path}: polling every 100 ms "
                               "(inotify is unavailable: inotify watch limit reached)"]
    write_file_atomically(str(tmp_path / "e.txt"), EP)
    clock.now += 0.1
    assert sources(w.batch()) == {"e.txt": ["e"]}


def test_remote_file_system_is_polled_unless_inotify_is_asked_for(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(inotify, "remote_filesystem", lambda path: "nfs4")
    with caplog.at_level(logging.INFO, logger="calico.plugin.watcher"):
        w = DirectoryWatcher(str(tmp_path), "auto")
        w.start()
    assert w.mode == "poll" and "on a nfs4 file system" in caplog.messages[0]
    forced = DirectoryWatcher(str(tmp_path), "inotify")
    forced.start()
    try:
        assert forced.mode == "inotify"
    finally:
        forced.close()


def test_filesystem_type_from_mountinfo(tmp_path):
    assert inotify.filesystem_type("/proc") == "proc"
    assert inotify.remote_filesystem("/proc") is None
    assert inotify.filesystem_type(str(tmp_path / "missing")) is None


def poller(tmp_path, clock=None):
    w = DirectoryWatcher(str(tmp_path), "poll", clock=clock or FakeClock())
    w.start()
    return w


def test_polling_change_add_remove_and_unchanged_rewrites(tmp_path):
    clock = FakeClock()
    w = poller(tmp_path, clock)
    assert w.mode == "poll" and w.batch() == {}
    write_file_atomically(str(tmp_path / "e.txt"), EP)
    clock.now += 0.1
    assert sources(w.batch()) == {"e.txt": ["e"]}
    write_file_atomically(str(tmp_path / "e.txt"), EP)  # same text, new inode
    os.utime(tmp_path / "e.txt", ns=(1, 1))
    clock.now += 1.0
    assert w.batch() == {}
    write_file_atomically(str(tmp_path / "e.txt"), EP.replace("=e\n", "=f\n"))
    clock.now += 0.1
    assert sources(w.batch()) == {"e.txt": ["f"]}
    (tmp_path / "e.txt").unlink()
    clock.now += 0.1
    assert w.batch() == {"e.txt": None}


def test_polling_spaces_full_scans_but_sees_renames_at_once(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text(EP)
    clock = FakeClock()
    w = poller(tmp_path, clock)
    w.batch()
    w._next_full_scan = clock.now + 0.3  # as after a slow scan of a large directory
    # An in-place edit does not touch the directory: it waits for the next
    # full scan...
    path.write_text(EP.replace("web", "dbs"))
    clock.now += 0.1
    assert w.batch() == {}
    clock.now += 0.3
    assert list(w.batch()) == ["e.txt"]
    # ...while publishing by rename changes the directory: seen on the next poll.
    w._next_full_scan = clock.now + 0.3
    write_file_atomically(str(tmp_path / "f.txt"), EP.replace("=e\n", "=f\n"))
    clock.now += 0.1
    assert list(w.batch()) == ["f.txt"]


def test_polling_missing_directory_keeps_last_state_and_logs_once(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "e.txt").write_text(EP)
    clock = FakeClock()
    w = poller(data, clock)
    assert list(w.batch()) == ["e.txt"]
    (data / "e.txt").unlink()
    data.rmdir()
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            clock.now += 0.1
            assert w.batch() == {}
            assert w.due(clock.now) > 0  # waiting, not spinning
    assert caplog.messages.count(
        f"cannot read data directory {data}: No such file or directory; keeping the last state") == 1
    data.mkdir()
    clock.now += 0.1
    assert w.batch() == {"e.txt": None}


# --- DataDirectory ------------------------------------------------------------

def test_data_directory_reports_each_fault_once_and_returns_changes(tmp_path, caplog):
    (tmp_path / "felix.txt").write_text(CLUSTER)
    (tmp_path / "bad.txt").write_text(EP.replace("mac=aa:bb:cc:00:00:01\n", ""))
    clock = FakeClock()
    data = DataDirectory(str(tmp_path), "poll", clock=clock)
    with caplog.at_level(logging.WARNING):
        change = data.load()
        assert change.initial and change.new_errors == ["bad.txt: [endpoint e]: missing 'mac'"]
        clock.now += 1.0
        assert data.refresh() is None
        write_file_atomically(str(tmp_path / "e2.txt"), EP.replace("=e\n", "=e2\n").replace("1.1", "1.2"))
        clock.now += 0.1
        change = data.refresh()
    assert [c.endpoint.endpoint_id for c in change.endpoints] == ["e2"] and list(data.state.endpoints) == ["e2"]
    assert caplog.messages == ["bad.txt: [endpoint e]: missing 'mac'"]
    # Gone and back: reported again, since it is news again.
    (tmp_path / "bad.txt").unlink()
    clock.now += 0.1
    data.refresh()
    (tmp_path / "bad.txt").write_text(EP.replace("mac=aa:bb:cc:00:00:01\n", ""))
    with caplog.at_level(logging.WARNING):
        clock.now += 1.0
        data.refresh()
    assert caplog.messages.count("bad.txt: [endpoint e]: missing 'mac'") == 2


def test_data_directory_in_a_loop_applies_one_bounded_batch_per_wake_up(tmp_path):
    (tmp_path / "felix.txt").write_text(CLUSTER)
    data = DataDirectory(str(tmp_path), "inotify", batch_files=100)
    loop = EventLoop()
    changes = []
    try:
        data.load()
        data.attach(loop, lambda state, change: changes.append(len(change.endpoints)))
        for n in range(450):
            (tmp_path / f".e{n}.tmp").write_text(ep(n))
        for n in range(450):
            os.rename(tmp_path / f".e{n}.tmp", tmp_path / f"e{n}.txt")
        polling.wait_until(lambda: loop.run_once(0.05) or sum(changes) == 450, what="every endpoint",
                           timeout=20, interval=0)
    finally:
        data.close()
    assert max(changes) == 100 and len(changes) >= 5
    assert len(data.state.groups["web"].members) == 450


def test_data_directory_in_a_loop_reads_a_file_renamed_in_at_the_turn_after_its_event(tmp_path):
    # The loop's clock stands still: the file is read because inotify's event
    # woke the timer, not because a poll interval or rescan came due.
    (tmp_path / "felix.txt").write_text(CLUSTER)
    clock = FakeClock()
    data = DataDirectory(str(tmp_path), "inotify", clock=clock)
    loop = EventLoop(clock=clock)
    changes = []
    try:
        data.load()
        data.attach(loop, lambda state, change: changes.append([item.endpoint.endpoint_id
                                                                for item in change.endpoints]))
        loop.run_once(0)
        write_file_atomically(str(tmp_path / "e.txt"), EP)
        polling.wait_until(lambda: loop.run_once(0.05) or changes, what="the endpoint", timeout=10, interval=0)
    finally:
        data.close()
    assert changes == [["e"]]


def test_a_file_renamed_on_before_its_event_is_read_is_not_taken_for_removed(tmp_path, inotify_watcher):
    # Written into place, then renamed again before the first event was read
    # (the rename's event still on its way): the endpoint must not vanish in
    # between, which would tear down a working container for a moment.
    write_file_atomically(str(tmp_path / "a.txt"), EP)
    w = inotify_watcher()
    assert sources(w.batch()) == {"a.txt": ["e"]}
    # From here only the test feeds the watcher: the kernel's own events for
    # the rename below would otherwise race the ones the test plays late.
    kernel_fed, w.inbox = w.inbox, inotify.Inbox()
    kernel_fed.close()
    w.inbox.put(inotify.NOW, ("a.txt",), ("a.txt",))        # "a.txt written", seen late
    os.rename(tmp_path / "a.txt", tmp_path / "b.txt")
    w.on_events()
    assert w.batch() == {}                                     # not "a.txt: gone"
    w.inbox.put(inotify.NOW, ("a.txt", "b.txt"), ("b.txt",))  # the rename's own event
    w.on_events()
    assert sources(w.batch()) == {"a.txt": None, "b.txt": ["e"]}


def test_a_removed_file_is_removed_at_once(tmp_path, inotify_watcher):
    write_file_atomically(str(tmp_path / "a.txt"), EP)
    w = inotify_watcher()
    w.batch()
    os.unlink(tmp_path / "a.txt")
    assert sources(collect(w, lambda got: "a.txt" in got, "the removal")) == {"a.txt": None}
