"""Felix's outgoing NAT and tunl0 set-up against the real kernel, with real packets.

A host namespace with one endpoint (IPv4 and IPv6) and an uplink namespace
beyond a non-tap interface (``fab0``, 10.65.9.1 / fd00:9::1 on the host):
with ``nat_outgoing`` the uplink sees the host's address, without it the
endpoint's.  Each test runs once per iptables backend (legacy, nft).  tunl0 is a TUN device standing in for the kernel's (this
machine's kernel may have no ipip driver); Felix sets it up the same way.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from calico import netns
from calico.common.datafiles import GlobalSettings, Host
from calico.felix.cluster import ClusterView
from calico.felix.dataplane import Dataplane
from felix_dp_helpers import BACKENDS, Lab, acls, sh, spec

EID, MAC = "aaaacluster01", "02:00:00:00:01:01"
ADDRS = ("10.65.0.1", "fd00::1")
OPEN = acls(inbound=["0.0.0.0/0"], outbound=["0.0.0.0/0"], inbound6=["::/0"], outbound6=["::/0"])
HOSTS = (Host("me", "10.65.9.1"), Host("peer", "10.65.9.7"))


def view(**settings) -> ClusterView:
    return ClusterView(GlobalSettings(pool="10.65.0.0/24", pool6="fd00::/64", **settings), HOSTS, "10.65.9.1")


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request):
    lab = Lab("cl", backend=request.param)
    try:
        lab.add_endpoint(EID, ADDRS, MAC)
        lab.add_uplink()
        yield lab
    finally:
        lab.close()


@pytest.fixture()
def dp(lab):
    with netns.entered(lab.host):
        dataplane = Dataplane(iptables_backend=lab.backend)
    dataplane.start()
    try:
        yield dataplane
    finally:
        dataplane.set_cluster(view())
        dataplane.apply({})
        dataplane.close()


def desired():
    return {EID: spec(EID, ADDRS, MAC, OPEN)}


def source_seen_by_uplink(lab, dst: str, port: int) -> str | None:
    """Send one UDP datagram from the endpoint to the uplink; the source address it arrives with."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with netns.entered(lab.endpoint_ns["uplink"]):
        receiver = socket.socket(family, socket.SOCK_DGRAM)
    with netns.entered(lab.endpoint_ns[EID]):
        sender = socket.socket(family, socket.SOCK_DGRAM)
    try:
        receiver.bind((dst, port))
        receiver.settimeout(0.5)
        for _ in range(4):  # the first may wait on neighbour discovery
            sender.sendto(b"who am i", (dst, port))
            try:
                _, address = receiver.recvfrom(100)
            except OSError:
                continue
            return address[0]
        return None
    finally:
        receiver.close()
        sender.close()


def test_outgoing_nat_on_and_off(lab, dp):
    dp.set_cluster(view(nat_outgoing=True))
    dp.apply(desired())
    assert source_seen_by_uplink(lab, "10.65.9.2", 7101) == "10.65.9.1"
    assert source_seen_by_uplink(lab, "fd00:9::2", 7102) == "fd00:9::1"
    assert "-A POSTROUTING -j felix-POSTROUTING" in lab.iptables_save(4, "nat")
    assert "-A POSTROUTING -j felix-POSTROUTING" in lab.iptables_save(6, "nat")
    before = dp.writes.total()
    dp.apply(desired())
    assert dp.writes.total() == before  # nothing changed, nothing written
    dp.set_cluster(view())
    dp.apply(desired())
    assert source_seen_by_uplink(lab, "10.65.9.2", 7103) == "10.65.0.1"
    assert source_seen_by_uplink(lab, "fd00:9::2", 7104) == "fd00::1"
    for version in (4, 6):
        assert "felix-" not in lab.iptables_save(version, "nat")
    assert "felix-pools" not in sh(lab.host, "ipset", "list", "-n")


def ipip_delivered(lab, sender_address: str) -> bool:
    """Does an IP-in-IP packet from ``sender_address`` (an uplink address) reach the host's raw socket?"""
    with netns.entered(lab.host):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    with netns.entered(lab.endpoint_ns["uplink"]):
        out = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    try:
        out.bind((sender_address, 0))
        receiver.settimeout(0.5)
        marker = f"ipip-from-{sender_address}".encode()
        out.sendto(b"\x45" + b"\0" * 19 + marker, ("10.65.9.1", 0))
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                if receiver.recv(2048).endswith(marker):
                    return True
            except OSError:
                return False
        return False
    finally:
        receiver.close()
        out.close()


def test_only_cluster_hosts_may_send_ip_in_ip(lab, dp):
    sh(lab.endpoint_ns["uplink"], "ip", "addr", "add", "10.65.9.7/24", "dev", "eth0", check=False)
    assert ipip_delivered(lab, "10.65.9.2")  # nothing filters protocol 4 yet
    dp.set_cluster(view(ipip="always"))
    dp.apply(desired())
    assert ipip_delivered(lab, "10.65.9.7")  # "peer", a cluster host
    assert not ipip_delivered(lab, "10.65.9.2")  # not a host
    dp.set_cluster(view())
    dp.apply(desired())
    assert ipip_delivered(lab, "10.65.9.2")


def test_tunl0_is_set_up_and_taken_down(lab, dp, caplog):
    created = False
    if "tunl0" not in sh(lab.host, "ip", "-o", "link", "show"):
        with caplog.at_level(logging.ERROR):
            dp.set_cluster(view(ipip="cross-subnet"))
            assert dp.apply(desired()) == set()  # the endpoint is programmed all the same
            before = dp.writes.total()
            dp.apply(desired())
            assert dp.writes.total() == before
        errors = [r.getMessage() for r in caplog.records if "tunl0" in r.getMessage()]
        assert len(errors) <= 1  # a kernel without ipip is reported once
        if errors:
            sh(lab.host, "ip", "tuntap", "add", "tunl0", "mode", "tun")  # what the lab does then
            created = True
            dp.forget_kernel_cache()
    try:
        dp.set_cluster(view(ipip="cross-subnet"))
        dp.apply(desired())
        link = sh(lab.host, "ip", "-o", "link", "show", "tunl0")
        assert "mtu 1480" in link and ",UP" in link
        assert "inet 10.65.9.1/32" in sh(lab.host, "ip", "-o", "addr", "show", "dev", "tunl0")
        before = dp.writes.total()
        dp.apply(desired())
        assert dp.writes.total() == before
        dp.set_cluster(view())
        dp.apply(desired())
        assert ",UP" not in sh(lab.host, "ip", "-o", "link", "show", "tunl0")
        assert "inet " not in sh(lab.host, "ip", "-o", "addr", "show", "dev", "tunl0")
    finally:
        if created:
            sh(lab.host, "ip", "link", "del", "tunl0", check=False)
