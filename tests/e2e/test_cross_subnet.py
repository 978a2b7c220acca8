"""Hosts on two subnets joined by a cloud-like router: IP-in-IP and outgoing NAT.

One lab for the module (4 hosts; host-1 and host-3 on 10.240.0.0/24, host-2
and host-4 on 10.240.1.0/24), its settings switched at run time with
``calico-lab set``'s code, as an operator would: the tests run in order and
each starts from the settings the previous one left.  The router forwards
only between host addresses (and to the outside namespace), so container
traffic crosses it only inside IP-in-IP or masqueraded.
"""

import subprocess

import pytest

from calico import netns
from calico.common.iptables_backends import felix_table
from calico.lab import control, hosts, probe
from calico.lab.layout import OUTSIDE_IP, ROUTER_IP, host_ip
from e2e_lab import add_all, assert_matrix_converges, running_lab, wait_until
from packets import Capture, echo_request, send_ipip

SUBNETS = 2
CONTAINERS = [("x1", "host-1", "192.168.1.1", "g"), ("x2", "host-2", "192.168.2.1", "g"),
              ("x3", "host-3", "192.168.3.1", "g"), ("y4", "host-4", "192.168.4.1", "other")]
X1, X2, X3 = "192.168.1.1", "192.168.2.1", "192.168.3.1"
H1, H2, H3 = (host_ip(i, SUBNETS) for i in (1, 2, 3))


@pytest.fixture(scope="module")
def lab():
    with running_lab("te2ex-", 4, subnets=SUBNETS) as layout:
        add_all(layout, CONTAINERS)
        yield layout


def set_settings(lab, **changes):
    problems = hosts.set_settings(lab, 4, {k: str(v) for k, v in changes.items()})
    assert not problems, problems


def routes(lab, index):
    return control.kernel_state(lab, index)["routes4"]


def route_to(lab, index, ip):
    return next((line for line in routes(lab, index).splitlines() if line.split()[:1] == [ip]), "")


def reach(lab, src, dst_ip):
    return probe.ping(lab.container_ns(src), dst_ip)


def test_without_ipip_only_containers_on_the_same_subnet_reach_each_other(lab):
    wait_until(lambda: reach(lab, "x1", X3) and reach(lab, "x3", X1), what="x1 <-> x3 (same subnet)")
    assert not reach(lab, "x1", X2) and not reach(lab, "x2", X1) and not reach(lab, "x2", X3)
    # The route exists (BGP crossed the router) but leads to the router, which drops pool addresses.
    assert f"via {ROUTER_IP.format(0)} dev fab0" in route_to(lab, 1, X2)


def test_cross_subnet_mode_tunnels_between_subnets_only(lab):
    set_settings(lab, ipip="cross-subnet")
    matrix = assert_matrix_converges(lab)
    assert matrix[("x1", "x2")] == matrix[("x2", "x3")] == {"icmp": True, "tcp": True}
    assert "dev tunl0" in route_to(lab, 1, X2) and f"via {H2}" in route_to(lab, 1, X2)
    assert "dev fab0" in route_to(lab, 1, X3)
    with Capture(lab.host_ns(1), "fab0") as fabric:
        assert reach(lab, "x1", X2) and reach(lab, "x1", X3)
    # To the other subnet: inside IP-in-IP between the hosts, never bare.
    assert fabric.tunnelled(H1, H2, X1, X2) >= 1 and fabric.tunnelled(H2, H1, X2, X1) >= 1
    assert fabric.plain(X1, X2) == 0 and fabric.plain(X2, X1) == 0
    # Same subnet: bare, not encapsulated.
    assert fabric.plain(X1, X3) >= 1 and fabric.plain(X3, X1) >= 1
    assert fabric.tunnelled(H1, H3, X1, X3) == 0 and fabric.tunnelled(H3, H1, X3, X1) == 0


def test_always_mode_tunnels_same_subnet_traffic_too(lab):
    set_settings(lab, ipip="always")
    wait_until(lambda: "dev tunl0" in route_to(lab, 1, X3), what="host-1's route to x3 through tunl0")
    assert_matrix_converges(lab)
    with Capture(lab.host_ns(1), "fab0") as fabric:
        assert reach(lab, "x1", X3)
    assert fabric.tunnelled(H1, H3, X1, X3) >= 1 and fabric.plain(X1, X3) == 0


def _felix_backend(lab, index: int) -> str:
    """The iptables backend host-``index``'s Felix programs (IptablesBackend = auto in the lab)."""
    backend, _ = felix_table(4, runner=lambda argv, **kwargs: subprocess.run(netns.argv(lab.host_ns(index), argv),
                                                                             **kwargs))
    assert backend is not None, f"no Felix chains on host-{index}"
    return backend


def _drop_counter(lab):
    text = netns.run(lab.host_ns(1), [f"iptables-{_felix_backend(lab, 1)}", "-L", "felix-INPUT", "-v", "-x",
                                      "-n"]).stdout
    line = next(line for line in text.splitlines() if "felix-hosts4" in line)
    return int(line.split()[0])


def test_ip_in_ip_from_a_machine_that_is_not_a_cluster_host_is_dropped(lab):
    # An echo request "from x3" to x1, encapsulated by hand.  From host-3 (a
    # cluster host) host-1 decapsulates it and x1 gets it; from the outside
    # namespace (which can reach host-1 through the router) it is dropped.
    inner_from_host = echo_request(X3, X1, b"from-a-host")
    inner_from_outside = echo_request(X3, X1, b"from-outside")
    before = _drop_counter(lab)
    with Capture(lab.container_ns("x1"), "eth0") as x1:
        send_ipip(lab.host_ns(3), H1, inner_from_host)
        send_ipip(lab.outside_ns, H1, inner_from_outside)
    assert x1.echo_requests(b"from-a-host") == 1
    assert x1.echo_requests(b"from-outside") == 0
    assert _drop_counter(lab) == before + 1


def test_outgoing_nat_lets_containers_reach_the_outside_with_the_hosts_address(lab):
    x1_ns = lab.container_ns("x1")
    assert not probe.ping(x1_ns, OUTSIDE_IP)
    set_settings(lab, nat_outgoing="true")
    # Each host's Felix notices the change on its own: wait for both.
    wait_until(lambda: probe.ping(x1_ns, OUTSIDE_IP), what="x1 -> outside with NAT on")
    wait_until(lambda: probe.ping(lab.container_ns("x2"), OUTSIDE_IP), what="x2 -> outside with NAT on")
    with Capture(lab.outside_ns, "eth0") as outside:
        assert probe.ping(x1_ns, OUTSIDE_IP) and probe.ping(lab.container_ns("x2"), OUTSIDE_IP)
    assert outside.plain(H1, OUTSIDE_IP) >= 1 and outside.plain(H2, OUTSIDE_IP) >= 1
    assert not any(s.src.startswith("192.168.") for s in outside.seen)
    # Container to container is still not translated.
    with Capture(lab.container_ns("x2"), "eth0") as x2:
        assert reach(lab, "x1", X2)
    assert x2.plain(X1, X2) >= 1 and x2.plain(H1, X2) == 0
    set_settings(lab, nat_outgoing="false")
    wait_until(lambda: not probe.ping(x1_ns, OUTSIDE_IP), what="x1 -> outside blocked with NAT off")
    wait_until(lambda: not probe.ping(lab.container_ns("x2"), OUTSIDE_IP), what="x2 -> outside blocked")


def test_switching_ipip_off_again_leaves_nothing_stale(lab):
    set_settings(lab, ipip="never")
    for index in (1, 2):
        wait_until(lambda: "tunl0" not in routes(lab, index), what=f"host-{index}'s routes off tunl0")
    wait_until(lambda: not reach(lab, "x1", X2), what="x1 -> x2 blocked again")
    assert reach(lab, "x1", X3)
    for index in range(1, 5):
        kernel = control.kernel_state(lab, index)
        assert "felix-hosts4" not in kernel["iptables"] and "felix-hosts4" not in kernel["ipset"]
        assert "felix-pools" not in kernel["ipset"]
        for backend in ("legacy", "nft"):  # save without -t: every table there is, none created
            assert "felix-POSTROUTING" not in netns.run(lab.host_ns(index), [f"iptables-{backend}-save"]).stdout
        link = netns.run(lab.host_ns(index), ["ip", "-o", "addr", "show", "dev", "tunl0"]).stdout
        assert "inet " not in link
        assert ",UP" not in netns.run(lab.host_ns(index), ["ip", "-o", "link", "show", "tunl0"]).stdout
