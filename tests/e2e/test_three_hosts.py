"""Three hosts, two groups and a container in both: the full mesh carries every route."""

import pytest

from calico.lab import hosts, probe
from calico.lab.layout import LISTEN_PORT
from e2e_lab import add_all, assert_matrix_converges, running_lab, wait_until

V6_A1, V6_AB3 = "fd80:24e2:f998:72d6::a1", "fd80:24e2:f998:72d6::ab3"
CONTAINERS = [("a1", "host-1", f"192.168.1.1,{V6_A1}", "alpha"), ("b2", "host-2", "192.168.2.1", "beta"),
              ("ab3", "host-3", f"192.168.3.1,{V6_AB3}", "alpha,beta"), ("a2", "host-2", "192.168.2.2", "alpha")]


@pytest.fixture(scope="module")
def lab():
    with running_lab("te2et-", 3) as layout:
        add_all(layout, CONTAINERS)
        yield layout


def test_every_host_peers_with_every_other(lab):
    for index in (1, 2, 3):
        sessions = hosts.bgp_sessions(lab, index)
        assert len(sessions) == 2 and all("Established" in s for s in sessions.values()), sessions


def test_container_in_two_groups_talks_to_both(lab):
    matrix = assert_matrix_converges(lab)
    both = {"icmp": True, "tcp": True}
    none = {"icmp": False, "tcp": False}
    assert matrix[("a1", "ab3")] == matrix[("ab3", "a1")] == both
    assert matrix[("b2", "ab3")] == matrix[("ab3", "b2")] == both
    assert matrix[("a1", "a2")] == both
    assert matrix[("a1", "b2")] == matrix[("b2", "a2")] == none


def test_ipv6_endpoints_reach_each_other_across_hosts(lab):
    assert_matrix_converges(lab)
    wait_until(lambda: probe.ping(lab.container_ns("a1"), V6_AB3), timeout_s=10, what="IPv6 ping a1 -> ab3")
    assert probe.ping(lab.container_ns("ab3"), V6_A1)
    assert probe.tcp_connect(lab.container_ns("a1"), V6_AB3, LISTEN_PORT)
