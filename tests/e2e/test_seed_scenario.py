"""The seed's scenario on a real two-host lab: BIRD, Felix, plugin, ACL manager.

One lab for the module; the tests run in order and each leaves the lab as
the next expects: the seed's matrix, then an endpoint file removed (its
route gone from every host, its traffic blocked), then a group's rules
changed in the cluster file.
"""

import os

import pytest

from calico.common.datafiles import write_file_atomically
from calico.lab import check, control, state
from calico.lab.layout import host_ip
from e2e_lab import add_all, assert_matrix_converges, lab_containers, running_lab, wait_until

SEED = [("web1", "host-1", "192.168.1.1", "web"), ("db1", "host-1", "192.168.1.2", "db"),
        ("web2", "host-2", "192.168.2.1", "web"), ("db2", "host-2", "192.168.2.2", "db")]


@pytest.fixture(scope="module")
def lab():
    with running_lab("te2es-", 2) as layout:
        add_all(layout, SEED)
        yield layout


def routes(layout, index):
    return control.kernel_state(layout, index)["routes4"]


def test_same_group_reaches_other_group_does_not(lab):
    matrix = assert_matrix_converges(lab)
    for (src, dst), actual in matrix.items():
        same = src[:-1] == dst[:-1]
        assert actual == {"icmp": same, "tcp": same}, (src, dst)
    # Every host holds a route to every endpoint: its own via the tap, the others' via BGP.
    for index in (1, 2):
        table = routes(lab, index)
        for name, host, ip, _ in SEED:
            line = next(l for l in table.splitlines() if l.split()[0] == ip)
            if host == f"host-{index}":
                assert "dev tap" in line, line
            else:
                assert f"via {host_ip(3 - index)}" in line and "proto bird" in line, line


def test_removing_an_endpoint_file_withdraws_its_route_everywhere_and_blocks_it(lab):
    web2 = state.load(lab).containers["web2"]
    os.unlink(os.path.join(lab.data_dir, "192_168_2_1.txt"))
    for index in (1, 2):
        wait_until(lambda: not any(l.split()[:1] == ["192.168.2.1"] for l in routes(lab, index).splitlines()),
                   what=f"route to 192.168.2.1 to leave host-{index}")
    members = lab_containers(lab)
    web1 = next(c for c in members if c.name == "web1")
    result = check.measure(lab, [web1, web2])
    assert result[("web1", "web2")] == {"icmp": False, "tcp": False}
    assert result[("web2", "web1")] == {"icmp": False, "tcp": False}


def test_changing_a_groups_rules_takes_effect(lab):
    # web2's endpoint file is gone: take the container out of the lab's books too.
    from calico.lab import containers
    containers.remove(lab, "web2")
    containers.add(lab, "web2", "host-2", ["192.168.2.1"], ["web"])
    assert_matrix_converges(lab)
    # db now also accepts ICMP (only) from web; web keeps the seed's rules.
    text = open(lab.cluster_file).read() + "\n[group db]\ninbound = group:db; group:web icmp\n"
    write_file_atomically(lab.cluster_file, text)
    matrix = assert_matrix_converges(lab)
    assert matrix[("web1", "db2")] == {"icmp": True, "tcp": False}
    assert matrix[("web2", "db1")] == {"icmp": True, "tcp": False}
    assert matrix[("db1", "web2")] == {"icmp": False, "tcp": False}
    assert matrix[("db1", "db2")] == {"icmp": True, "tcp": True}
