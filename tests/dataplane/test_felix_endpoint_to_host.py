"""Endpoint to host: DefaultEndpointToHostAction, with real packets.

A host namespace where the Dataplane runs, endpoints on veth pairs and an
uplink namespace beyond the host's ``fab0`` (felix_dp_helpers.Lab).  The
host's own address on fab0, 10.65.9.1, is what an endpoint would attack:
it reaches the host through the tap (INPUT), never through FORWARD.
Every denial is checked next to a control that gets through the same way,
so a test cannot pass just because nothing was programmed.  Each test runs
once per iptables backend (legacy, nft), the host's own INPUT rule in the
same backend as Felix's.
"""

from __future__ import annotations

import pytest

from calico import netns
from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from felix_dp_helpers import (BACKENDS, HOST, Lab, acls, received, send_frame, send_udp, sh, spec, udp_frame,
                              udp_listening)

A, B = "aaaa01", "bbbb02"
ADDRS = {A: ("10.65.0.1",), B: ("10.65.0.2",)}
MACS = {A: "02:00:00:00:01:01", B: "02:00:00:00:01:02"}
OPEN = acls(inbound=["0.0.0.0/0"], outbound=["0.0.0.0/0"])
HOST_ADDR = "10.65.9.1"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


def ep(eid: str, acl=OPEN):
    return spec(eid, ADDRS[eid], MACS[eid], acl)


def state(*specs) -> dict:
    return {s.endpoint_id: s for s in specs}


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request):
    lab = Lab("toh", backend=request.param)
    try:
        for eid in (A, B):
            lab.add_endpoint(eid, ADDRS[eid], MACS[eid])
        lab.add_uplink()
        yield lab
    finally:
        lab.close()


@pytest.fixture
def programmed(lab):
    """Returns a function programming the lab with a given action; every
    Dataplane it made is closed afterwards."""
    made = []

    def program(action: str | None, desired: dict | None = None) -> Dataplane:
        with netns.entered(lab.host):
            dp = (Dataplane(iptables_backend=lab.backend) if action is None
                  else Dataplane(endpoint_to_host_action=action, iptables_backend=lab.backend))
        made.append(dp)
        dp.start()
        assert dp.apply(desired or state(ep(A), ep(B))) == set()
        return dp

    try:
        yield program
    finally:
        for dp in made:
            dp.close()


@pytest.fixture
def host_input_drops_7002(lab):
    """A rule of the host's own, after Felix's jump: what RETURN hands over to."""
    rule = ["INPUT", "-p", "tcp", "--dport", "7002", "-j", "DROP"]
    lab.iptables("-A", *rule)
    try:
        yield
    finally:
        lab.iptables("-D", *rule)


def test_by_default_an_endpoint_reaches_nothing_on_its_host(lab, programmed):
    programmed(None)
    with lab.listening(HOST, 7001):
        assert lab.ping(B, "10.65.9.2")               # FORWARD works,
        assert lab.ping(B, "10.65.0.1")
        assert lab.tcp_ok("uplink", HOST_ADDR, 7001)  # and the host's port is open to others
        assert not lab.tcp_ok(B, HOST_ADDR, 7001, expect=False)
        assert not lab.ping(B, HOST_ADDR, expect=False)
    assert "-A felix-TO-HOST -j DROP" in lab.iptables_save()


def test_accept_lets_an_endpoint_reach_its_host_as_its_outbound_rules_allow(lab, programmed, host_input_drops_7002):
    programmed("ACCEPT")
    with lab.listening(HOST, 7001), lab.listening(HOST, 7002):
        assert lab.tcp_ok(B, HOST_ADDR, 7001)
        assert lab.tcp_ok(B, HOST_ADDR, 7002)  # ACCEPT: the host's own INPUT rules are not consulted
        assert lab.ping(B, HOST_ADDR)
    only_uplink = acls(inbound=["0.0.0.0/0"], outbound=["10.65.9.2/32"])
    programmed("ACCEPT", state(ep(A), ep(B, only_uplink)))
    with lab.listening(HOST, 7001):
        assert lab.tcp_ok(A, HOST_ADDR, 7001)
        assert not lab.tcp_ok(B, HOST_ADDR, 7001, expect=False)  # B's outbound rules still apply


def test_return_hands_allowed_traffic_to_the_hosts_own_input_rules(lab, programmed, host_input_drops_7002):
    programmed("RETURN")
    with lab.listening(HOST, 7001), lab.listening(HOST, 7002):
        assert lab.tcp_ok(B, HOST_ADDR, 7001)
        assert not lab.tcp_ok(B, HOST_ADDR, 7002, expect=False)
    only_uplink = acls(inbound=["0.0.0.0/0"], outbound=[Rule(cidr="10.65.9.2/32")])
    programmed("RETURN", state(ep(A), ep(B, only_uplink)))
    with lab.listening(HOST, 7001):
        assert lab.tcp_ok(A, HOST_ADDR, 7001)
        assert not lab.tcp_ok(B, HOST_ADDR, 7001, expect=False)


def test_dhcp_to_the_host_gets_through_and_nothing_else_does(lab, programmed):
    programmed(None)
    b_ns = lab.endpoint_ns[B]
    with udp_listening(lab.host, 67) as server, udp_listening(lab.host, 6767) as other:
        # A client without an address yet: 0.0.0.0:68 -> 255.255.255.255:67, broadcast.
        discover = b"dhcp-discover"
        send_frame(b_ns, "eth0", udp_frame(MACS[B], BROADCAST_MAC, ("0.0.0.0", 68), ("255.255.255.255", 67),
                                           discover))
        assert received(server, discover, 2.0) == ("0.0.0.0", 68)
        # A renewal, unicast from the endpoint's address.
        send_udp(b_ns, ("10.65.0.2", 68), (HOST_ADDR, 67), b"dhcp-request")
        assert received(server, b"dhcp-request", 2.0) == ("10.65.0.2", 68)
        # Not DHCP: the wrong source port, or another port.
        send_udp(b_ns, ("10.65.0.2", 6800), (HOST_ADDR, 67), b"not-dhcp")
        assert received(server, b"not-dhcp", 0.5) is None
        send_udp(b_ns, ("10.65.0.2", 68), (HOST_ADDR, 6767), b"other-port")
        assert received(other, b"other-port", 0.5) is None


def test_a_spoofed_dhcp_shaped_packet_is_not_forwarded(lab, programmed):
    """The DHCP exception lives only on the way to the host: through FORWARD a
    DHCP-shaped packet meets the MAC and source checks like any other."""
    programmed(None)
    a_ns, b_ns = lab.endpoint_ns[A], lab.endpoint_ns[B]
    with udp_listening(a_ns, 67) as victim:
        send_udp(b_ns, ("10.65.0.2", 68), ("10.65.0.1", 67), b"honest")  # control: B's own address
        assert received(victim, b"honest", 2.0) == ("10.65.0.2", 68)
        sh(b_ns, "ip", "addr", "add", "10.65.0.99/32", "dev", "eth0")
        try:
            send_udp(b_ns, ("10.65.0.99", 68), ("10.65.0.1", 67), b"spoofed-source")
            assert received(victim, b"spoofed-source", 0.5) is None
        finally:
            sh(b_ns, "ip", "addr", "del", "10.65.0.99/32", "dev", "eth0")
        # A forged MAC with B's own address: the frame is built by hand.
        tap_mac = lab.tap_mac(B)
        send_frame(b_ns, "eth0", udp_frame(MACS[B], tap_mac, ("10.65.0.2", 68), ("10.65.0.1", 67), b"mac-ok"))
        assert received(victim, b"mac-ok", 2.0) == ("10.65.0.2", 68)
        send_frame(b_ns, "eth0", udp_frame("02:00:00:00:99:99", tap_mac, ("10.65.0.2", 68), ("10.65.0.1", 67),
                                           b"spoofed-mac"))
        assert received(victim, b"spoofed-mac", 0.5) is None


def test_a_packet_to_loopback_through_the_tap_is_dropped_even_with_accept(lab, programmed):
    """Taps have route_localnet=1, so without the rule a packet to 127.0.0.1
    would reach the host's loopback-only services."""
    programmed("ACCEPT")
    b_ns = lab.endpoint_ns[B]
    tap_mac = lab.tap_mac(B)
    with udp_listening(lab.host, 7003) as anywhere:
        send_frame(b_ns, "eth0", udp_frame(MACS[B], tap_mac, ("10.65.0.2", 40000), (HOST_ADDR, 7003), b"control"))
        assert received(anywhere, b"control", 2.0) == ("10.65.0.2", 40000)
        send_frame(b_ns, "eth0", udp_frame(MACS[B], tap_mac, ("10.65.0.2", 40000), ("127.0.0.1", 7003), b"lo"))
        assert received(anywhere, b"lo", 0.5) is None
