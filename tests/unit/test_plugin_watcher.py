"""The directory poller and the log-once reporting on top of it (real files
in a temp dir; no network)."""

import logging
import os

from calico.common.datafiles import write_file_atomically
from calico.plugin.watcher import DataDirectory, DirectoryWatcher

CLUSTER = "[felix h1]\nip=10.0.0.1\n"
EP = "[endpoint e]\nid=e\nip=192.168.1.1\nmac=aa:bb:cc:00:00:01\nhost=h1\ngroup=web\n"


def test_only_txt_files_count_and_unchanged_polls_say_so(tmp_path):
    (tmp_path / "felix.txt").write_text(CLUSTER)
    (tmp_path / ".e.txt.123.tmp").write_text("half a fi")
    (tmp_path / ".hidden.txt").write_text("junk")
    (tmp_path / "notes.md").write_text("junk")
    (tmp_path / "sub.txt").mkdir()
    watcher = DirectoryWatcher(str(tmp_path))
    assert watcher.poll() is True
    assert [f.source for f in watcher.files] == ["felix.txt"]
    assert watcher.poll() is False


def test_touch_without_content_change_is_no_change(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text(EP)
    watcher = DirectoryWatcher(str(tmp_path))
    watcher.poll()
    os.utime(path, ns=(1, 1))
    assert watcher.poll() is False
    write_file_atomically(str(path), EP)  # a new inode, the same text
    assert watcher.poll() is False


def test_change_add_remove(tmp_path):
    watcher = DirectoryWatcher(str(tmp_path))
    assert watcher.poll() is False
    write_file_atomically(str(tmp_path / "e.txt"), EP)
    assert watcher.poll() is True and len(watcher.files[0].contents.endpoints) == 1
    write_file_atomically(str(tmp_path / "e.txt"), EP.replace("web", "db"))
    assert watcher.poll() is True and watcher.files[0].contents.endpoints[0].groups == ("db",)
    (tmp_path / "e.txt").unlink()
    assert watcher.poll() is True and watcher.files == []


def test_same_size_in_place_edit_is_seen(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text(EP)
    clock = FakeClock()
    watcher = DirectoryWatcher(str(tmp_path), clock)
    watcher.poll()
    path.write_text(EP.replace("web", "dbs"))
    clock.now += 1.0  # past the next full scan
    assert watcher.poll() is True


def test_not_utf8_is_an_error_for_that_file(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe[endpoint")
    watcher = DirectoryWatcher(str(tmp_path))
    watcher.poll()
    assert watcher.files[0].errors == ("bin.txt: not UTF-8 text",)


def test_missing_directory_keeps_last_state_and_logs_once(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "e.txt").write_text(EP)
    watcher = DirectoryWatcher(str(data))
    watcher.poll()
    (data / "e.txt").unlink()
    data.rmdir()
    with caplog.at_level(logging.INFO):
        assert watcher.poll() is False
        assert watcher.poll() is False
    assert len(watcher.files) == 1
    assert [r.getMessage() for r in caplog.records].count(
        f"cannot list data directory {data}: No such file or directory; keeping the last state") == 1
    data.mkdir()
    assert watcher.poll() is True and watcher.files == []


def test_data_directory_reports_each_fault_once_and_returns_old_new(tmp_path, caplog):
    (tmp_path / "felix.txt").write_text(CLUSTER)
    (tmp_path / "bad.txt").write_text(EP.replace("mac=aa:bb:cc:00:00:01\n", ""))
    data = DataDirectory(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        old, new = data.refresh()
        assert data.refresh() is None
        write_file_atomically(str(tmp_path / "e2.txt"), EP.replace("=e\n", "=e2\n").replace("1.1", "1.2"))
        old2, new2 = data.refresh()
    assert old2 is new and list(new2.endpoints) == ["e2"]
    faults = [r.getMessage() for r in caplog.records]
    assert faults == ["bad.txt: [endpoint e]: missing 'mac'"]
    # Gone and back: reported again, since it is news again.
    (tmp_path / "bad.txt").unlink()
    data.refresh()
    (tmp_path / "bad.txt").write_text(EP.replace("mac=aa:bb:cc:00:00:01\n", ""))
    with caplog.at_level(logging.WARNING):
        data.refresh()
    assert [r.getMessage() for r in caplog.records].count("bad.txt: [endpoint e]: missing 'mac'") == 2


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        self.now += 0.01  # every reading: each full scan "costs" 10 ms
        return self.now


def test_large_directory_scans_are_spaced_but_renames_are_seen_at_once(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text(EP)
    clock = FakeClock()
    watcher = DirectoryWatcher(str(tmp_path), clock)
    watcher.poll()
    # An in-place edit does not touch the directory: it waits for the next
    # full scan, which the scan's own cost pushes out...
    path.write_text(EP.replace("web", "dbs"))
    assert watcher.poll() is False
    clock.now += 1.0
    assert watcher.poll() is True
    # ...while publishing by rename changes the directory: seen on the next poll.
    write_file_atomically(str(tmp_path / "f.txt"), EP.replace("=e\n", "=f\n"))
    assert watcher.poll() is True
    assert [f.source for f in watcher.files] == ["e.txt", "f.txt"]
