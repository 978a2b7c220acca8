"""run_bird, the bird image's entry point (calico.bird_runner): which config
BIRD is started with, rendered from what, and what the user reads on failure.

calico-bird-config is replaced by a stand-in that records its command line
and writes a config (or, in one test, by the real calico.bird.main), and
BIRD's exec by a recorder, so each test reads the command BIRD would run,
the files left in the config directory and standard error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from calico import bird, bird_runner
from calico.bird_runner import Site

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "[felix host_1]\nip=10.99.0.1\nhost=host_1\n\n[felix host_2]\nip=10.99.0.2\nhost=host_2.example.com\n"
SEED_CLUSTER = "[felix HOST1]\nip=IP1\nhost=HOST1\n\n[felix HOST2]\nip=IP2\nhost=HOST2\n"
READY = "router id 1.2.3.4;\n"


class Run:
    """Stands in for calico-bird-config: records each command, writes ``config``."""

    def __init__(self, config: str = "router id 10.99.0.1;\n", returncode: int = 0):
        self.commands: list[list[str]] = []
        self.config = config
        self.returncode = returncode

    def __call__(self, command, check=False):
        self.commands.append(command)
        if self.returncode == 0:
            Path(command[command.index("--output") + 1]).write_text(self.config)
        return subprocess.CompletedProcess(command, self.returncode)


class Start:
    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None, run: Run | None = None):
        self.tmp = tmp_path
        self.run = run or Run()
        self.site = Site({"CALICO_CLUSTER_FILE": str(tmp_path / "none.txt"), **(env or {})},
                         str(tmp_path / "etc"), self.run, str(tmp_path / "log"), str(tmp_path / "run"))
        self.execs: list[list[str]] = []

    def __call__(self, *argv: str) -> int:
        return bird_runner.main(list(argv), self.site, lambda file, args: self.execs.append(args))

    @property
    def config(self) -> str:
        """The config file BIRD was started with."""
        (args,) = self.execs
        assert args[:3] == ["bird", "-f", "-c"] and args[4:] == ["-s", str(self.tmp / "run" / "bird.ctl")]
        return args[3]


def test_a_numbered_config_is_the_nth_host_of_calico_hosts(tmp_path, capsys):
    start = Start(tmp_path, {"CALICO_HOSTS": "host_1=10.99.0.1, host_2.example.com=10.99.0.2"})
    start("bird2.conf")
    assert start.config == str(tmp_path / "etc" / "bird2.conf")
    hosts_file = tmp_path / "etc" / "calico-hosts.txt"
    assert start.run.commands == [["calico-bird-config", str(hosts_file), "--output", start.config,
                                   "--log-file", str(tmp_path / "log" / "bird.log"), "--host", "host_2"]]
    assert hosts_file.read_text() == ("[felix host_1]\nip=10.99.0.1\nhost=host_1\n\n"
                                      "[felix host_2]\nip=10.99.0.2\nhost=host_2\n")
    err = capsys.readouterr().err
    assert f"run_bird: bird2.conf is host host_2 (10.99.0.2) of {hosts_file}" in err
    assert f"run_bird: bird -f -c {start.config} -s " in err


def test_the_rendered_config_logs_to_the_file_and_to_standard_error(tmp_path):
    start = Start(tmp_path, {"CALICO_HOSTS": "host_1=10.99.0.1"})
    start("bird1.conf")
    log_file = tmp_path / "log" / "bird.log"
    assert Path(start.config).read_text() == f'log "{log_file}" all;\nlog stderr all;\nrouter id 10.99.0.1;\n'


def test_log_lines_already_there_are_not_added_again(tmp_path):
    log_file = tmp_path / "log" / "bird.log"
    start = Start(tmp_path, {"CALICO_HOSTS": "host_1=10.99.0.1"}, Run(f'log "{log_file}" all;\nlog stderr all;\n'))
    start("bird1.conf")
    assert Path(start.config).read_text() == f'log "{log_file}" all;\nlog stderr all;\n'


@pytest.mark.parametrize("hosts", ["HOST1=IP1 HOST2=IP2", "$HOST1=$IP1 $HOST2=$IP2", "host_1=$ADDRESS", ""])
def test_calico_hosts_not_filled_in_falls_back_to_the_cluster_file(tmp_path, hosts):
    cluster = tmp_path / "felix.txt"
    cluster.write_text(CLUSTER)
    start = Start(tmp_path, {"CALICO_HOSTS": hosts, "CALICO_CLUSTER_FILE": str(cluster)})
    start("bird2.conf")
    assert start.run.commands[0][1] == str(cluster) and start.run.commands[0][-2:] == ["--host", "host_2"]
    assert not (tmp_path / "etc" / "calico-hosts.txt").exists()


@pytest.mark.parametrize("text", [SEED_CLUSTER, "[felix h1]\nip=$IP1\nhost=h1\n", "[global]\nas=64511\n"])
def test_without_a_cluster_description_a_config_of_that_name_is_used_as_it_is(tmp_path, text):
    cluster = tmp_path / "felix.txt"
    cluster.write_text(text)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "bird1.conf").write_text(READY)
    start = Start(tmp_path, {"CALICO_CLUSTER_FILE": str(cluster)})
    start("bird1.conf")
    assert start.run.commands == []
    assert start.config == str(tmp_path / "etc" / "bird1.conf")
    assert Path(start.config).read_text() == READY


def test_without_any_description_the_error_says_what_to_provide(tmp_path, capsys):
    start = Start(tmp_path)
    assert start("bird1.conf") == 1
    assert start.execs == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("run_bird: error: bird1.conf: no cluster description: ")
    assert "CALICO_HOSTS" in err and "/opt/plugin/data/felix.txt" in err and "CALICO_CLUSTER_FILE" in err


def test_a_number_beyond_the_cluster_is_refused(tmp_path, capsys):
    start = Start(tmp_path, {"CALICO_HOSTS": "host_1=10.99.0.1 host_2=10.99.0.2"})
    assert start("bird3.conf") == 1
    assert "bird3.conf: the cluster (" in capsys.readouterr().err and start.execs == []


@pytest.mark.parametrize("item, reason", [("host_1", "want name=ip"), ("host_1=999.1.1.1", "bad IP address"),
                                          ("bad/name=10.99.0.1", "bad host name")])
def test_a_bad_calico_hosts_item_stops_it_with_one_line(tmp_path, capsys, item, reason):
    start = Start(tmp_path, {"CALICO_HOSTS": item})
    assert start("bird1.conf") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"run_bird: error: environment CALICO_HOSTS item '{item}': {reason}")
    assert err.count("\n") == 1 and start.run.commands == [] and start.execs == []


def test_a_cluster_file_argument_renders_this_hosts_config(tmp_path):
    cluster = tmp_path / "felix.txt"
    cluster.write_text(CLUSTER)
    start = Start(tmp_path)
    start(str(cluster))
    assert start.config == str(tmp_path / "etc" / "calico.conf")
    assert "--host" not in start.run.commands[0]  # calico-bird-config picks the local host


@pytest.mark.parametrize("argv, env", [(["host_2"], {}), ([], {"CALICO_BIRD_HOST": "host_2"})])
def test_the_host_of_a_cluster_file_may_be_named(tmp_path, argv, env):
    cluster = tmp_path / "felix.txt"
    cluster.write_text(CLUSTER)
    start = Start(tmp_path, env)
    start(str(cluster), *argv)
    assert start.run.commands[0][-2:] == ["--host", "host_2"]


def test_a_ready_config_is_used_as_it_is_by_name_or_path(tmp_path):
    (tmp_path / "etc").mkdir()
    ready = tmp_path / "etc" / "my.conf"
    ready.write_text(READY)
    for arg in ("my.conf", str(ready)):
        start = Start(tmp_path)
        start(arg)
        assert start.config == str(ready) and start.run.commands == []
    assert ready.read_text() == READY


def test_a_missing_config_names_where_bare_names_are_looked_up(tmp_path, capsys):
    assert Start(tmp_path)("nope.conf") == 1
    assert f"nope.conf: no such file (bare names are looked up in {tmp_path / 'etc'})" in capsys.readouterr().err


def test_a_failing_calico_bird_config_stops_it(tmp_path, capsys):
    start = Start(tmp_path, {"CALICO_HOSTS": "host_1=10.99.0.1"}, Run(returncode=1))
    assert start("bird1.conf") == 1
    assert "calico-bird-config failed for " in capsys.readouterr().err and start.execs == []


def test_the_real_calico_bird_config_renders_the_named_host(tmp_path):
    cluster = tmp_path / "felix.txt"
    cluster.write_text(CLUSTER)

    def real(command, check=False):
        return subprocess.CompletedProcess(command, bird.main(command[1:] + ["--subnet", "10.99.0.0/24"]))

    start = Start(tmp_path, run=Run())
    start.site.run = real
    start(str(cluster), "host_1")
    text = Path(start.config).read_text()
    assert "router id 10.99.0.1;" in text and 'description "host_2";' in text
    assert text.count("log stderr all;") == 1


@pytest.mark.parametrize("argv, code", [(["--help"], 0), ([], 2), (["a", "b", "c"], 2)])
def test_usage(tmp_path, capsys, argv, code):
    assert Start(tmp_path)(*argv) == code
    assert capsys.readouterr().err.startswith("run_bird CONFIG [HOST]: start BIRD 2")


def test_the_images_run_bird_is_the_package_entry_point():
    result = subprocess.run([sys.executable, str(REPO / "bird" / "run_bird"), "--help"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0
    assert result.stderr.strip() == bird_runner.__doc__.strip()
