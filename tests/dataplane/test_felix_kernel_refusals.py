"""One endpoint the kernel refuses never stalls the host: real refusals, real packets.

Felix validates everything it programs, and no validated endpoint spec was
found that the kernel refuses on a host in order (README, "When the kernel
refuses an endpoint").  What the kernel does refuse comes from the host's
state, and that is what these tests use, unmocked:

- a tap with IPv6 disabled (``net.ipv6.conf.<tap>.disable_ipv6=1``, what a
  host with ``net.ipv6.conf.default.disable_ipv6=1`` gives every new tap):
  the kernel refuses the endpoint's IPv6 route, "IPv6 is disabled on
  nexthop device";
- a felix- ipset of another type left under an endpoint's set name: the
  kernel refuses to swap the new contents in, "their type does not match".

The first is persistent: the endpoint at fault is failed closed (its chains
a single DROP, no sets, no routes) and named in exactly one log line; an
endpoint created in the same pass and one created afterwards carry traffic
exactly as their ACLs say; and the culprit converges once the cause is
gone and it is retried.  The second is cured by the search's first step,
the known-good state, which destroys unused felix- sets: nobody is blamed.
"""

from __future__ import annotations

import logging

import pytest

from calico import netns
from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from felix_dp_helpers import Lab, acls, content_set_name, sh, spec

A, B, G, H, I, J = "aaaa01", "bbbb02", "gggg07", "hhhh08", "iiii09", "jjjj10"
ADDRS = {A: ("10.65.0.1",), B: ("10.65.0.2",), G: ("10.65.0.7", "fd00::7"), H: ("10.65.0.8",),
         I: ("10.65.0.9",), J: ("10.65.0.10",)}
MACS = {eid: f"02:00:00:00:02:{n:02x}" for n, eid in enumerate((A, B, G, H, I, J), start=1)}
OPEN = acls(inbound=["0.0.0.0/0"], outbound=["0.0.0.0/0"], inbound6=["::/0"], outbound6=["::/0"])
# In only from B, out anywhere: what H and I are checked against.
ONLY_FROM_B = acls(inbound=[Rule(cidr="10.65.0.2/32")], outbound=["0.0.0.0/0"])
# In from the lab's /24, out anywhere: J's, an inbound set no other endpoint here names.
FROM_THE_LAB = acls(inbound=["10.65.0.0/24"], outbound=["0.0.0.0/0"])


def ep(eid: str, acl=OPEN):
    return spec(eid, ADDRS[eid], MACS[eid], acl)


def state(*specs) -> dict:
    return {s.endpoint_id: s for s in specs}


@pytest.fixture
def lab():
    lab = Lab("krf")
    try:
        for eid in (A, B, G, H, I, J):
            lab.add_endpoint(eid, ADDRS[eid], MACS[eid])
        yield lab
    finally:
        lab.close()


@pytest.fixture
def dp(lab):
    with netns.entered(lab.host):
        dataplane = Dataplane(iptables_backend=lab.backend)
    dataplane.start()
    try:
        yield dataplane
    finally:
        dataplane.close()


def culprit_lines(caplog, endpoint_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and endpoint_id in r.getMessage()]


def assert_fail_closed(lab, endpoint_id: str) -> None:
    saved = lab.iptables_save(4)
    tag = endpoint_id[:11]
    assert f"-A felix-from-{tag} -j DROP" in saved and f"-A felix-to-{tag} -j DROP" in saved
    assert saved.count(f"-A felix-from-{tag} ") == 1 and saved.count(f"-A felix-to-{tag} ") == 1
    assert tag not in lab.ipset_save()
    assert f"tap{tag}" not in lab.routes()


def assert_only_b_gets_in(lab, endpoint_id: str, addr: str) -> None:
    assert lab.ping(B, addr)
    assert lab.ping(endpoint_id, "10.65.0.1")  # its outbound: anywhere
    assert not lab.ping(A, addr, expect=False)


def test_a_tap_refusing_ipv6_fails_only_its_endpoint(lab, dp, caplog):
    dp.apply(state(ep(A), ep(B)))
    sh(lab.host, "sysctl", "-w", f"net.ipv6.conf.tap{G}.disable_ipv6=1")
    with caplog.at_level(logging.INFO, logger="calico.felix"):
        # G and H arrive in the same pass; G's IPv6 route is refused.
        assert dp.apply(state(ep(A), ep(B), ep(G), ep(H, ONLY_FROM_B))) == set()
    assert set(dp.failed) == {G}
    assert "IPv6 is disabled" in dp.failed[G].error
    lines = culprit_lines(caplog, G)
    assert len(lines) == 1 and lines[0].startswith(f"Endpoint {G} failed closed")
    assert_fail_closed(lab, G)
    assert not lab.ping(G, "10.65.0.2", expect=False)
    assert not lab.ping(B, "10.65.0.7", expect=False)
    assert_only_b_gets_in(lab, H, "10.65.0.8")

    # Another endpoint afterwards: G, unchanged, stays closed without a new search or line.
    writes = dp.writes.total()
    with caplog.at_level(logging.INFO, logger="calico.felix"):
        assert dp.apply(state(ep(A), ep(B), ep(G), ep(H, ONLY_FROM_B), ep(I, ONLY_FROM_B))) == set()
    assert dp.writes.total() > writes and set(dp.failed) == {G}
    assert len(culprit_lines(caplog, G)) == 1
    assert_only_b_gets_in(lab, I, "10.65.0.9")
    assert_fail_closed(lab, G)

    # Nothing changed: nothing written, also with the kernel read back.
    writes = dp.writes.total()
    desired = state(ep(A), ep(B), ep(G), ep(H, ONLY_FROM_B), ep(I, ONLY_FROM_B))
    dp.apply(desired)
    dp.forget_kernel_cache()
    dp.apply(desired)
    assert dp.writes.total() == writes

    # The cause gone, the periodic retry brings G in.
    sh(lab.host, "sysctl", "-w", f"net.ipv6.conf.tap{G}.disable_ipv6=0")
    dp.retry_failed_endpoints()
    assert dp.apply(desired) == set()
    assert dp.failed == {}
    assert lab.ping(B, "10.65.0.7") and lab.ping(G, "10.65.0.2")


def test_a_set_the_kernel_will_not_swap_is_cleared_by_the_known_good_pass(lab, dp, caplog):
    """A refusal that the known-good state cures blames nobody: the stray set
    is destroyed with the other unused felix- sets, and the endpoint converges
    in the same apply."""
    dp.apply(state(ep(A), ep(B)))
    # Left behind by someone else under J's inbound set name, with another type.
    j_in = content_set_name("hash:net", 4, "10.65.0.0/24")
    sh(lab.host, "ipset", "create", j_in, "hash:ip")
    dp.forget_kernel_cache()  # as at start-up or a periodic resync: the kernel is read again
    with caplog.at_level(logging.INFO, logger="calico.felix"):
        assert dp.apply(state(ep(A), ep(B), ep(J, FROM_THE_LAB), ep(H, ONLY_FROM_B))) == set()
    refused = [r.getMessage() for r in caplog.records if "refused a dataplane pass" in r.getMessage()]
    assert len(refused) == 1 and "type does not match" in refused[0]
    assert dp.failed == {} and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"create {j_in} hash:net family inet" in lab.ipset_save()
    assert lab.set_members(j_in) == {"10.65.0.0/24"}
    assert f"-A felix-to-{J} -m set --match-set {j_in} src -j RETURN" in lab.iptables_save()
    assert lab.ping(J, "10.65.0.2") and lab.ping(B, "10.65.0.10")
    assert_only_b_gets_in(lab, H, "10.65.0.8")
