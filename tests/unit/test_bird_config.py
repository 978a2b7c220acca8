"""The rendered BIRD config: what each host's BIRD is told, and that BIRD accepts it."""

import shutil
import subprocess

import pytest

from calico.bird import BirdConfigError, choose_local_host, main, render
from calico.common.datafiles import Cluster, GlobalSettings, Host, parse_data_text


def cluster_of(n, subnets=1, **settings):
    hosts = [Host(f"host-{i}", f"10.240.{(i - 1) % subnets}.{10 + i}") for i in range(1, n + 1)]
    return Cluster(hosts, GlobalSettings(**settings), {})


def subnet_of(host):
    return f"10.240.{host.ip.split('.')[2]}.0/24"


def neighbors(text):
    return sorted(line.split()[1] for line in text.splitlines() if line.strip().startswith("neighbor "))


def tunnel_routes(text):
    return sorted(line.split()[1] for line in text.splitlines() if 'via "tunl0"' in line)


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
    assert "if source = RTS_BGP && net ~ [ 10.65.0.0/16+ ] then {" in text
    # Routes outside the pools are learned (to resolve next hops), never exported.
    assert "if !(net ~ [ 10.65.0.0/16+ ]) then accept;" in text
    assert "192.168" not in text
    # Next hops are never rewritten: a reflected route must still point at its owner.
    assert "next hop self" not in text
    assert text.count("gateway recursive;") == 2 and "multihop;" in text


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


@pytest.mark.parametrize("ipip", ["never", "cross-subnet", "always"])
@pytest.mark.parametrize("reflectors", [(), ("host-2", "host-3")])
def test_every_setting_combination_parses(tmp_path, ipip, reflectors):
    cluster = cluster_of(5, subnets=2, ipip=ipip, route_reflectors=reflectors)
    for local in cluster.hosts:
        assert bird_parses(tmp_path, render(cluster, local, subnet=subnet_of(local)))


def test_ipip_never_routes_nothing_through_the_tunnel():
    cluster = cluster_of(4, subnets=2)
    text = render(cluster, cluster.hosts[0], subnet=subnet_of(cluster.hosts[0]))
    assert tunnel_routes(text) == [] and "calico_ipip" not in text


def test_ipip_always_resolves_every_other_host_through_tunl0():
    cluster = cluster_of(4, subnets=2, ipip="always")
    text = render(cluster, cluster.hosts[0], subnet=subnet_of(cluster.hosts[0]))
    assert tunnel_routes(text) == ["10.240.0.13/32", "10.240.1.12/32", "10.240.1.14/32"]
    # The kernel gets such a route as "via HOST dev tunl0 onlink".
    assert 'if ifname = "tunl0" then { onlink = true; gw = bgp_next_hop; }' in text


def test_ipip_cross_subnet_tunnels_only_to_hosts_on_other_subnets():
    cluster = cluster_of(4, subnets=2, ipip="cross-subnet")
    host1, host2 = cluster.hosts[0], cluster.hosts[1]
    assert tunnel_routes(render(cluster, host1, subnet=subnet_of(host1))) == ["10.240.1.12/32", "10.240.1.14/32"]
    assert tunnel_routes(render(cluster, host2, subnet=subnet_of(host2))) == ["10.240.0.11/32", "10.240.0.13/32"]
    with pytest.raises(BirdConfigError, match="subnet"):
        render(cluster, host1)


def test_route_reflectors_peer_with_everyone_clients_with_the_reflectors_only():
    cluster = cluster_of(6, route_reflectors=("host-2", "host-5"))
    ips = {h.name: h.ip for h in cluster.hosts}
    reflector = render(cluster, cluster.host("host-2"))
    assert neighbors(reflector) == sorted(ip for name, ip in ips.items() if name != "host-2")
    # Clients are rr clients under one cluster id; the other reflector is a plain iBGP peer.
    blocks = reflector.split("protocol bgp ")[1:]
    client_blocks = [b for b in blocks if "rr client;" in b]
    assert len(client_blocks) == 4 and all(f"rr cluster id {ips['host-2']};" in b for b in client_blocks)
    peer_reflector = next(b for b in blocks if f"neighbor {ips['host-5']} " in b)
    assert "rr client" not in peer_reflector
    assert f"rr cluster id {ips['host-2']};" in render(cluster, cluster.host("host-5"))
    client = render(cluster, cluster.host("host-4"))
    assert neighbors(client) == sorted([ips["host-2"], ips["host-5"]]) and "rr client" not in client


def test_full_mesh_session_count_against_reflectors():
    mesh, rr = cluster_of(8), cluster_of(8, route_reflectors=("host-1", "host-2"))
    assert [len(neighbors(render(mesh, h))) for h in mesh.hosts] == [7] * 8
    assert [len(neighbors(render(rr, h))) for h in rr.hosts] == [7, 7, 2, 2, 2, 2, 2, 2]


def test_unknown_reflector_is_refused_in_one_line():
    cluster = cluster_of(3, route_reflectors=("host-9",))
    with pytest.raises(BirdConfigError, match="route_reflectors: 'host-9' is not a \\[felix\\] host"):
        render(cluster, cluster.hosts[0])


def test_cli_takes_settings_from_the_environment(tmp_path, capsys, monkeypatch):
    cluster_file = tmp_path / "felix.txt"
    cluster_file.write_text("[felix host-1]\nip=10.240.0.11\n[felix host-2]\nip=10.240.1.12\n"
                            "[felix host-3]\nip=10.240.0.13\n")
    monkeypatch.setenv("CALICO_IPIP", "cross-subnet")
    monkeypatch.setenv("CALICO_ROUTE_REFLECTORS", "host-3")
    assert main([str(cluster_file), "--host", "host-1", "--subnet", "10.240.0.0/24"]) == 0
    text = capsys.readouterr().out
    assert tunnel_routes(text) == ["10.240.1.12/32"] and neighbors(text) == ["10.240.0.13"]
    monkeypatch.setenv("CALICO_IPIP", "sometimes")
    assert main([str(cluster_file), "--host", "host-1"]) == 1
    assert "CALICO_IPIP" in capsys.readouterr().err
