"""Felix's pure parts for outgoing NAT and IP-in-IP, the nat-table plan, and the cluster source."""

import logging
import os

import pytest

from calico.common.config import ConfigError
from calico.common.datafiles import GlobalSettings, Host
from calico.felix import iptables_writer as writer
from calico.felix import nat, tunnel
from calico.felix.cluster import ClusterSource, ClusterView

HOSTS = (Host("host-1", "10.0.0.1"), Host("host-2", "10.0.1.2"))


def view(**settings):
    return ClusterView(GlobalSettings(pool="10.65.0.0/16", pool6="fd00:65::/64", **settings), HOSTS, "10.0.0.1")


def test_nat_off_means_no_chain_no_sets():
    assert nat.nat_chains(view().settings, 4) == {} and nat.pool_sets(view().settings, (4, 6)) == {}


def test_nat_on_masquerades_pool_to_outside_every_pool_per_family():
    settings = view(nat_outgoing=True).settings
    assert nat.nat_chains(settings, 4) == {"felix-POSTROUTING": (
        "-m set --match-set felix-pools4 src -m set ! --match-set felix-pools4 dst -j MASQUERADE",)}
    assert "felix-pools6" in nat.nat_chains(settings, 6)["felix-POSTROUTING"][0]
    sets = nat.pool_sets(settings, (4, 6))
    assert sets["felix-pools4"].members == {"10.65.0.0/16"} and sets["felix-pools6"].members == {"fd00:65::/64"}


def test_ipip_drops_protocol_4_from_anything_but_the_hosts():
    on = view(ipip="cross-subnet")
    assert tunnel.input_rules(on, 4) == ("-p 4 -m set ! --match-set felix-hosts4 src -j DROP",)
    assert tunnel.input_rules(on, 6) == () and tunnel.input_rules(view(), 4) == ()
    assert tunnel.hosts_set(on)["felix-hosts4"].members == {"10.0.0.1/32", "10.0.1.2/32"}
    assert tunnel.hosts_set(view()) == {}


def test_tunnel_holds_this_hosts_address_and_the_uplink_mtu_less_20():
    assert tunnel.desired_tunnel(view(ipip="always")) == tunnel.TunnelSpec(True, "10.0.0.1")
    assert tunnel.desired_tunnel(view()) == tunnel.TunnelSpec(False)
    assert tunnel.tunnel_mtu(1500) == 1480 and tunnel.tunnel_mtu(9001) == 8981


def test_nat_table_jump_comes_and_goes_with_the_chain():
    jumps = nat.NAT_JUMPS
    rule = nat.nat_chains(view(nat_outgoing=True).settings, 4)
    plan = writer.plan_table(writer.KernelTable({}, {"POSTROUTING": ["-j DOCKER"]}), rule, jumps, True)
    assert writer.restore_input(plan, "nat").splitlines() == [
        "*nat", ":felix-POSTROUTING - [0:0]", f"-A felix-POSTROUTING {rule['felix-POSTROUTING'][0]}",
        "-I POSTROUTING 1 -j felix-POSTROUTING", "COMMIT"]
    kernel = writer.KernelTable({"felix-POSTROUTING": list(rule["felix-POSTROUTING"])},
                                {"POSTROUTING": ["-j felix-POSTROUTING", "-j DOCKER"]})
    assert writer.plan_table(kernel, rule, jumps, True).is_empty()
    off = writer.plan_table(kernel, {}, jumps, True)
    assert writer.restore_input(off, "nat").splitlines() == [
        "*nat", "-D POSTROUTING -j felix-POSTROUTING", "-F felix-POSTROUTING", "-X felix-POSTROUTING", "COMMIT"]
    assert writer.plan_table(writer.KernelTable(), {}, jumps, True).is_empty()


def test_protocol_names_read_back_as_the_numbers_felix_writes():
    text = "\n".join(["*filter", ":INPUT ACCEPT [0:0]", ":felix-INPUT - [0:0]",
                      "-A felix-INPUT -p ipencap -m set ! --match-set felix-hosts4 src -j DROP",
                      "-A felix-INPUT -p tcp -j RETURN", "-A felix-INPUT ! -p ipencap -j RETURN", "COMMIT"])
    table = writer.parse_save(text, protocols={"ipencap": 4, "tcp": 6})
    assert table.chains["felix-INPUT"] == ["-p 4 -m set ! --match-set felix-hosts4 src -j DROP",
                                          "-p tcp -j RETURN", "! -p 4 -j RETURN"]
    nat_text = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j felix-POSTROUTING\nCOMMIT\n"
    assert writer.parse_save(nat_text, "nat", nat.NAT_JUMPS).builtins == {"POSTROUTING": ["-j felix-POSTROUTING"]}
    assert writer.parse_save(nat_text).builtins == {}


def test_cluster_source_follows_the_file_and_keeps_the_last_good_view(tmp_path, caplog):
    path = tmp_path / "felix.txt"
    hosts = "[felix host-1]\nip=10.0.0.1\n[felix host-2]\nip=10.0.1.2\n"
    path.write_text(hosts)
    source = ClusterSource("host-1", {"CALICO_CLUSTER_FILE": str(path)})
    assert source.view.settings.ipip == "never" and source.view.local_ip == "10.0.0.1"
    assert source.poll() is None
    path.write_text(hosts + "[global]\nipip = always\nnat_outgoing = true\n")
    os.utime(path, ns=(1, 1))
    new = source.poll()
    assert new is not None and new.settings.ipip == "always" and new.settings.nat_outgoing
    with caplog.at_level(logging.WARNING):
        path.write_text(hosts + "[global]\nipip = sometimes\n")
        os.utime(path, ns=(2, 2))
        assert source.poll() is None
        os.utime(path, ns=(3, 3))
        assert source.poll() is None
    warnings = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(warnings) == 1 and "ipip" in warnings[0] and "keeping the previous settings" in warnings[0]
    assert source.view.settings.ipip == "always"


def test_environment_wins_and_a_bad_variable_stops_start_up(tmp_path):
    path = tmp_path / "felix.txt"
    path.write_text("[felix host-1]\nip=10.0.0.1\n[global]\nnat_outgoing = true\n")
    env = {"CALICO_CLUSTER_FILE": str(path), "CALICO_NAT_OUTGOING": "false", "CALICO_IPIP": "always",
           "CALICO_HOSTS": "host-1=10.9.0.1 host-2=10.9.0.2"}
    source = ClusterSource("host-2", env)
    assert not source.view.settings.nat_outgoing and source.view.settings.ipip == "always"
    assert source.view.local_ip == "10.9.0.2" and len(source.view.hosts) == 2
    with pytest.raises(ConfigError, match="CALICO_IPIP"):
        ClusterSource("host-1", {**env, "CALICO_IPIP": "on"})
    no_file = ClusterSource("host-1", {"CALICO_CLUSTER_FILE": str(tmp_path / "none"), "CALICO_NAT_OUTGOING": "1"})
    assert no_file.view.settings.nat_outgoing and no_file.view.hosts == ()


def test_a_huge_cluster_file_is_not_read(tmp_path, caplog):
    path = tmp_path / "felix.txt"
    path.write_text("[felix host-1]\nip=10.0.0.1\n[global]\nnat_outgoing = true\n")
    source = ClusterSource("host-1", {"CALICO_CLUSTER_FILE": str(path)})
    path.write_text("[felix host-1]\nip=10.0.0.1\n#" + "x" * (1 << 20) + "\n")
    with caplog.at_level(logging.WARNING):
        assert source.poll() is None
    assert source.view.settings.nat_outgoing
    assert any("more than" in r.getMessage() for r in caplog.records)
