"""``calico-lab down`` cleans up after a crash and harms nothing that is not the lab's."""

import os
import subprocess
import sys

from calico import netns
from calico.lab import control, processes
from calico.lab.layout import Layout

PREFIX = "te2ed-"


def test_down_after_a_half_finished_up_removes_everything_and_only_that(tmp_path):
    layout = Layout.from_env(str(tmp_path / "lab"), PREFIX)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # What a crash part-way through 'up' and 'add' could leave behind:
        for name in (layout.fabric_ns, layout.host_ns(1), layout.container_ns("web1")):
            netns.create(name)
        os.makedirs(layout.pid_dir)
        # a process in a lab namespace that no pid file names,
        stray = subprocess.Popen(netns.argv(layout.host_ns(1), ["sleep", "60"]))
        # a stale pid file naming a process that is not the lab's,
        with open(layout.pid_file("host-1-felix"), "w") as handle:
            handle.write(f"{bystander.pid}\n")
        # and one naming a lab process.
        processes.start(layout, "host-1-bird", layout.host_ns(1), ["sleep", "61", layout.lab_dir])

        done = control.down(layout)

        assert stray.wait(timeout=10) is not None
        assert bystander.poll() is None, "down killed a process that was not the lab's"
        assert not [n for n in netns.names() if n.startswith(PREFIX)]
        assert not os.path.exists(layout.lab_dir)
        assert any("deleted 3 namespace(s)" in line for line in done), done
        assert control.down(layout) == []  # idempotent
    finally:
        bystander.kill()
        bystander.wait()
        control.down(layout)
