"""The rendered BIRD config: what each host's BIRD is told, and that BIRD accepts it."""

import shutil
import subprocess

import pytest

from calico.bird import BirdConfigError, choose_local_host, main, render
from calico.common.datafiles import Cluster, GlobalSettings, Host, parse_data_text


def cluster_of(n, **settings):
    hosts = [Host(f"host-{i}", f"10.240.0.{10 + i}") for i in range(1, n + 1)]
    return Cluster(hosts, GlobalSettings(**settings), {})


def bird_parses(tmp_path, text):
    if shutil.which("bird") is None:
        pytest.skip("bird (bird2) is not installed")
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    result = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return True


@pytest.mark.parametrize("n", [1, 2, 5])
def test_every_host_config_parses_and_peers_with_every_other_host(tmp_path, n):
    cluster = cluster_of(n)
    for local in cluster.hosts:
        text = render(cluster, local, felix_proto=80)
        assert f"router id {local.ip};" in text
        neighbors = [line.split()[1] for line in text.splitlines() if line.strip().startswith("neighbor ")]
        assert sorted(neighbors) == sorted(h.ip for h in cluster.hosts if h != local)
        assert text.count("protocol bgp ") == n - 1
        assert f"local {local.ip} as 64511;" in text
        assert bird_parses(tmp_path, text)


def test_kernel_protocols_learn_only_felix_routes_inside_the_pools():
    text = render(cluster_of(2, pool="10.65.0.0/16", pool6="fd00:65::/64"),
                  Host("host-1", "10.240.0.11"), felix_proto=77)
    assert "if krt_source = 77 && net ~ [ 10.65.0.0/16+ ] then accept;" in text
    assert "if krt_source = 77 && net ~ [ fd00:65::/64+ ] then accept;" in text
    assert text.count("learn;") == 2 and text.count("persist;") == 2
    assert "if source = RTS_BGP && net ~ [ 10.65.0.0/16+ ] then accept;" in text
    assert "192.168" not in text
    assert text.count("next hop self;") == 2


def test_as_number_and_log_file_come_through(tmp_path):
    text = render(cluster_of(2, as_number=65001), Host("host-2", "10.240.0.12"), log_path="/tmp/x/bird.log")
    assert "local 10.240.0.12 as 65001;" in text
    assert "neighbor 10.240.0.11 as 65001;" in text
    assert 'log "/tmp/x/bird.log" all;' in text
    assert bird_parses(tmp_path, text)


def test_host_names_become_unique_protocol_names(tmp_path):
    hosts = [Host("a-b", "10.0.0.1"), Host("a_b", "10.0.0.2"), Host("c", "10.0.0.3")]
    text = render(Cluster(hosts, GlobalSettings(), {}), hosts[2])
    assert "protocol bgp peer_a_b from" in text and "protocol bgp peer_a_b_2 from" in text
    assert bird_parses(tmp_path, text)


def test_local_host_by_name_then_address_then_hostname():
    cluster = cluster_of(3)
    assert choose_local_host(cluster, "host-2", [], "x").name == "host-2"
    assert choose_local_host(cluster, None, ["127.0.0.1", "10.240.0.13"], "host-1").name == "host-3"
    assert choose_local_host(cluster, None, ["127.0.0.1"], "host-1.example.com").name == "host-1"
    with pytest.raises(BirdConfigError, match="use --host"):
        choose_local_host(cluster, None, [], "elsewhere")
    with pytest.raises(BirdConfigError, match="not a \\[felix\\] host"):
        choose_local_host(cluster, "host-9", [], "host-1")


def test_ipv6_host_address_is_refused():
    hosts = [Host("h1", "10.0.0.1"), Host("h2", "fd00::2")]
    with pytest.raises(BirdConfigError, match="IPv6"):
        render(Cluster(hosts, GlobalSettings(), {}), hosts[0])


def test_cli_renders_the_named_host_from_the_seed_style_cluster_file(tmp_path, capsys):
    cluster_file = tmp_path / "felix.txt"
    cluster_file.write_text("[felix host-1]\nip=10.240.254.171\nhost=host-1\n"
                            "[felix host-2]\nip=10.240.58.221\nhost=host-2\n"
                            "[global]\npool=192.168.0.0/16\n")
    out = tmp_path / "etc" / "bird.conf"
    assert main([str(cluster_file), "--host", "host-2.example", "--output", str(out)]) == 0
    text = out.read_text()
    assert "router id 10.240.58.221;" in text and "neighbor 10.240.254.171 as 64511;" in text
    assert main([str(cluster_file), "--host", "nohost"]) == 1
    assert "nohost" in capsys.readouterr().err
    assert parse_data_text(cluster_file.read_text(), "felix.txt").errors == []
