"""calico.attach against real namespaces: what a container and its host end up with."""

import os
import subprocess

import pytest

from calico import attach, netns
from calico.common.datafiles import parse_data_file

HOST_NS, CTR_NS = "tatt-host", "tatt-ctr"
POOLS = ("192.168.0.0/16", "fd80:24e2:f998:72d6::/64")


@pytest.fixture
def spaces(tmp_path):
    for name in (HOST_NS, CTR_NS, CTR_NS + "2"):
        netns.remove(name)
        netns.create(name)
    try:
        yield tmp_path
    finally:
        for name in (HOST_NS, CTR_NS, CTR_NS + "2"):
            netns.remove(name)


def link_names(ns):
    return sorted(line.split(":")[1].strip().split("@")[0] for line in
                  netns.run(ns, ["ip", "-o", "link"]).stdout.splitlines())


def run_cli(*args):
    return subprocess.run(netns.argv(HOST_NS, ["calico-attach", *args]), capture_output=True, text=True,
                          env={**os.environ, "PATH": os.path.dirname(os.sys.executable) + ":" + os.environ["PATH"]})


def test_attach_gives_the_container_eth0_address_and_default_route(spaces):
    data_dir = str(spaces)
    result = run_cli("attach", "--netns", CTR_NS, "--id", "cid0123456789abcdef", "--ip",
                     "192.168.1.7,fd80:24e2:f998:72d6::7", "--group", "web,ops", "--host", "host-1",
                     "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    assert "attached cid0123456789abcdef: tapcid01234567" in result.stdout
    addrs = netns.run(CTR_NS, ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert "inet 192.168.1.7/32" in addrs and "inet6 fd80:24e2:f998:72d6::7/128" in addrs
    default4 = netns.run(CTR_NS, ["ip", "route", "show", "default"]).stdout
    assert default4.startswith("default via 169.254.1.1 dev eth0") and "onlink" in default4
    assert netns.run(CTR_NS, ["ip", "-6", "route", "show", "default"]).stdout.startswith("default via fe80::1 dev eth0")
    tap_mac = netns.run(HOST_NS, ["ip", "-o", "link", "show", "tapcid01234567"]).stdout.split("link/ether ")[1].split()[0]
    neighbours = netns.run(CTR_NS, ["ip", "neigh", "show", "dev", "eth0"]).stdout
    assert f"169.254.1.1 lladdr {tap_mac} PERMANENT" in neighbours
    assert f"fe80::1 lladdr {tap_mac} PERMANENT" in neighbours
    link = netns.run(CTR_NS, ["ip", "-o", "link", "show", "eth0"]).stdout
    assert attach.generated_mac("cid0123456789abcdef") in link and "state UP" in link
    assert "tapcid01234567" in netns.run(HOST_NS, ["ip", "-o", "link", "show", "up"]).stdout
    endpoint = parse_data_file(os.path.join(data_dir, "192_168_1_7.txt")).endpoints[0]
    assert endpoint.addrs == ("192.168.1.7", "fd80:24e2:f998:72d6::7")
    assert endpoint.groups == ("web", "ops") and endpoint.host == "host-1"
    assert [n for n in os.listdir(data_dir)] == ["192_168_1_7.txt"]  # no temporary left behind

    result = run_cli("detach", "--id", "cid0123456789abcdef", "--data-dir", data_dir)
    assert result.returncode == 0, result.stderr
    assert os.listdir(data_dir) == []
    assert "tapcid" not in netns.run(HOST_NS, ["ip", "-o", "link"]).stdout
    assert "eth0" not in netns.run(CTR_NS, ["ip", "-o", "link"]).stdout


def test_refused_attach_changes_nothing(spaces):
    data_dir = str(spaces)
    first = attach.build_request(netns.path(CTR_NS), "first", ["192.168.1.1"], "host-1", ["web"], data_dir, POOLS)
    attach.attach(first, host_netns=netns.path(HOST_NS))
    before = (link_names(HOST_NS), link_names(CTR_NS + "2"), sorted(os.listdir(data_dir)))

    # Same address, from another container: refused, one line.
    result = run_cli("attach", "--netns", CTR_NS + "2", "--id", "second", "--ip", "192.168.1.1", "--group",
                     "web", "--host", "host-1", "--data-dir", data_dir)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "already" in result.stderr
    # A container that already has eth0.
    result = run_cli("attach", "--netns", CTR_NS, "--id", "third", "--ip", "192.168.1.3", "--group",
                     "web", "--host", "host-1", "--data-dir", data_dir)
    assert result.returncode == 1 and "already has eth0" in result.stderr
    # A namespace that does not exist.
    result = run_cli("attach", "--netns", "tatt-missing", "--id", "fourth", "--ip", "192.168.1.4", "--group",
                     "web", "--host", "host-1", "--data-dir", data_dir)
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not netns.exists("tatt-missing")
    assert (link_names(HOST_NS), link_names(CTR_NS + "2"), sorted(os.listdir(data_dir))) == before


def test_attach_by_pid_uses_that_process_namespace(spaces):
    """--pid PID (the Docker path): /proc/PID/ns/net, entered by path."""
    data_dir = str(spaces)
    sleeper = subprocess.Popen(netns.argv(CTR_NS, ["sleep", "60"]))
    try:
        result = run_cli("attach", "--pid", str(sleeper.pid), "--id", "bypid", "--ip", "192.168.1.9",
                         "--group", "web", "--host", "host-1", "--data-dir", data_dir)
        assert result.returncode == 0, result.stderr
        assert f"in /proc/{sleeper.pid}/ns/net" in result.stdout
        assert "inet 192.168.1.9/32" in netns.run(CTR_NS, ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert "tapbypid" in link_names(HOST_NS)
    finally:
        sleeper.kill()
        sleeper.wait()
