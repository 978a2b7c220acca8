"""The lab's expectations: which probes the groups allow, and how a matrix reads."""

import pytest

from calico.common.datafiles import Cluster, GlobalSettings, parse_data_text
from calico.lab.check import Cell, expected_matrix, format_matrix
from calico.lab.layout import LabError, Layout, check_container_name, host_index
from calico.lab.state import Container


def cluster(groups_text=""):
    contents = parse_data_text("[felix host-1]\nip=10.240.0.11\n" + groups_text, "felix.txt")
    assert contents.errors == []
    return Cluster(contents.hosts, GlobalSettings(), {g.name: g for g in contents.groups})


def ctr(name, host, ip, *groups):
    return Container(name, host, [ip], list(groups), f"id-{name}")


SEED = [ctr("web1", 1, "192.168.1.1", "web"), ctr("db1", 1, "192.168.1.2", "db"),
        ctr("web2", 2, "192.168.2.1", "web"), ctr("db2", 2, "192.168.2.2", "db")]


def test_seed_rules_allow_exactly_same_group_pairs():
    matrix = expected_matrix(cluster(), SEED)
    assert len(matrix) == 12
    for (src, dst), cell in matrix.items():
        same = src[:-1] == dst[:-1]
        assert cell == {"icmp": same, "tcp": same}, (src, dst)


def test_container_in_two_groups_reaches_both():
    containers = [ctr("a", 1, "192.168.1.1", "web"), ctr("b", 2, "192.168.2.1", "db"),
                  ctr("both", 3, "192.168.3.1", "web", "db")]
    matrix = expected_matrix(cluster(), containers)
    assert matrix[("a", "both")]["tcp"] and matrix[("both", "a")]["tcp"]
    assert matrix[("b", "both")]["icmp"] and matrix[("both", "b")]["icmp"]
    assert not matrix[("a", "b")]["icmp"] and not matrix[("b", "a")]["tcp"]


def test_group_rules_from_the_cluster_file_narrow_by_protocol_and_port():
    groups = ("[group web]\ninbound = group:ops icmp; group:web tcp 7777\n"
              "[group ops]\ninbound = group:ops\noutbound = 0.0.0.0/0\n")
    containers = [ctr("w1", 1, "192.168.1.1", "web"), ctr("w2", 2, "192.168.2.1", "web"),
                  ctr("o1", 2, "192.168.2.9", "ops")]
    matrix = expected_matrix(cluster(groups), containers)
    assert matrix[("w1", "w2")] == {"icmp": False, "tcp": True}
    assert matrix[("o1", "w1")] == {"icmp": True, "tcp": False}
    # web's outbound stays the default (group and anywhere), ops' inbound is ops only.
    assert matrix[("w1", "o1")] == {"icmp": False, "tcp": False}


def test_port_outside_the_rule_is_blocked():
    groups = "[group web]\ninbound = group:web tcp 80-90\n"
    containers = [ctr("w1", 1, "192.168.1.1", "web"), ctr("w2", 2, "192.168.2.1", "web")]
    assert expected_matrix(cluster(groups), containers)[("w1", "w2")] == {"icmp": False, "tcp": False}


def test_matrix_marks_unexpected_cells_and_summarises():
    containers = SEED[:2]
    cells = {("web1", "db1"): Cell({"icmp": False, "tcp": False}, {"icmp": True, "tcp": False}),
             ("db1", "web1"): Cell({"icmp": False, "tcp": False}, {"icmp": False, "tcp": False})}
    text = format_matrix(containers, cells)
    assert "+-!" in text
    assert "UNEXPECTED web1 (host-1) -> db1 (host-1) icmp: allowed, groups say block" in text
    assert "3/4 probes as expected - MISMATCH" in text


def test_layout_names_everything_with_the_prefix(tmp_path):
    layout = Layout.from_env(str(tmp_path), "te2e-")
    assert layout.host_ns(2) == "te2e-host-2" and layout.fabric_ns == "te2e-fabric"
    assert layout.container_ns("web1") == "te2e-c-web1"
    assert layout.cluster_file == str(tmp_path / "data" / "felix.txt")
    with pytest.raises(LabError, match="bad lab prefix"):
        Layout.from_env(str(tmp_path), "Bad prefix")
    assert host_index("host-3", 3) == 3 and host_index("2", 3) == 2
    with pytest.raises(LabError, match="no host"):
        host_index("host-4", 3)
    with pytest.raises(LabError, match="bad container name"):
        check_container_name("../x")
