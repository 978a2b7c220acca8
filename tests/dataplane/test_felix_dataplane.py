"""Felix's dataplane against real iptables, ipsets and routes, with real packets.

One host namespace where ``Dataplane`` runs (created there, then called from
this thread in the root namespace: it enters its own namespace per call) and
one namespace per endpoint on a veth pair.  Each test applies the whole
desired state it needs, so tests do not depend on each other's leftovers.

Every test runs twice, once per iptables backend (``IptablesBackend`` legacy
and nft), each in a lab of its own; in both the other backend is checked to
stay empty, and the nft runs to leave no legacy table behind.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from calico import netns
from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from calico.felix.tools import ToolError
from felix_dp_helpers import (BACKENDS, Lab, acls, content_set_name, echo_round_trip, felix_chains_in, iptables_tool,
                              sh, spec)

A, B, C, D, E, F = "aaaaaaaaaaaa01", "bbbb02", "cccc03", "dddd04", "eeee05", "ffff06"
ADDRS = {A: ("10.65.0.1",), B: ("10.65.0.2",), C: ("10.65.0.3", "10.65.0.13"),
         D: ("10.65.0.4", "fd00::4"), E: ("fd00::5",), F: ("10.65.0.6",)}
MACS = {eid: f"02:00:00:00:00:{n:02x}" for n, eid in enumerate((A, B, C, D, E, F), start=1)}
OPEN = acls(inbound=["0.0.0.0/0"], outbound=["0.0.0.0/0"], inbound6=["::/0"], outbound6=["::/0"])
ANYWHERE = content_set_name("hash:net", 4, "0.0.0.0/1", "128.0.0.0/1")  # 0.0.0.0/0, as its two halves


def ep(eid: str, acl=OPEN, enabled: bool = True):
    return spec(eid, ADDRS[eid], MACS[eid], acl, enabled)


def state(*specs) -> dict:
    return {s.endpoint_id: s for s in specs}


def root_felix_state() -> tuple[set, set]:
    chains = felix_chains_in(None, "legacy") | felix_chains_in(None, "nft")
    sets = {name for name in sh(None, "ipset", "list", "-n").split() if name.startswith("felix-")}
    return chains, sets


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request):
    root_before = root_felix_state()
    lab = Lab("dp", backend=request.param)
    try:
        for eid in (A, B, C, D, E):
            lab.add_endpoint(eid, ADDRS[eid], MACS[eid])
        lab.add_uplink()
        lab.root_before = root_before
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def dp(lab):
    with netns.entered(lab.host):
        dataplane = Dataplane(iptables_backend=lab.backend)
    assert dataplane.iptables_backend == lab.backend
    dataplane.start()
    try:
        yield dataplane
    finally:
        dataplane.close()


def traffic_state():
    a_acl = acls(inbound=[
        Rule(cidr="10.65.0.2/32"),                                         # B: anything (hash:net)
        Rule(cidr="10.65.0.3/32", protocol="tcp", port=8080),              # C: one port (hash:net,port)
        Rule(cidr="0.0.0.0/0", protocol="tcp", port=(9000, 9010)),         # anyone: a port range
        Rule(cidr="10.65.0.3/32", protocol="icmp", icmp_type=8),           # C: echo request, any code
        Rule(cidr="10.65.0.4/32", protocol="icmp", icmp_type=8, icmp_code=0),  # D: echo request 0
        Rule(cidr="10.65.0.4/32", protocol=47),                            # D: GRE, by number
    ], outbound=["0.0.0.0/0"])
    return state(ep(A, a_acl), ep(B), ep(C), ep(D), ep(E))


def test_traffic_is_allowed_exactly_where_the_acls_say(lab, dp):
    assert dp.apply(traffic_state()) == set()
    assert lab.ping(B, "10.65.0.1")                      # hash:net
    assert lab.ping(C, "10.65.0.1")                      # ICMP type, any code
    assert lab.ping(D, "10.65.0.1")                      # ICMP type/code in hash:net,port
    assert not lab.ping(C, "10.65.0.1", source="10.65.0.13", expect=False)  # C's other address: no rule
    assert lab.ping(A, "10.65.0.2")                      # outbound 0.0.0.0/0, B open
    with lab.listening(A, 8080), lab.listening(A, 9005), lab.listening(A, 9011):
        assert lab.tcp_ok(C, "10.65.0.1", 8080)
        assert lab.tcp_ok(B, "10.65.0.1", 8080)
        assert not lab.tcp_ok(D, "10.65.0.1", 8080, expect=False)
        assert lab.tcp_ok(D, "10.65.0.1", 9005)
        assert not lab.tcp_ok(D, "10.65.0.1", 9011, expect=False)


def test_traffic_between_endpoints_and_a_non_tap_interface_is_forwarded(lab, dp):
    # Catches interface wildcards that match more than they say (python-iptables
    # writes IPv6 interface masks as 0x01 bytes: "-o tap+" would match "fab0",
    # and iptables-save prints the rule the same either way).
    dp.apply(state(ep(A), ep(B), ep(D), ep(E)))
    assert lab.ping(D, "10.65.9.2") and lab.ping(D, "fd00:9::2")
    assert lab.ping("uplink", "10.65.0.4") and lab.ping("uplink", "fd00::4")
    assert lab.ping("uplink", "fd00::5")


def _raw_delivered(lab, sender: str, dst: str, proto: int) -> bool:
    with netns.entered(lab.endpoint_ns[A]):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    with netns.entered(lab.endpoint_ns[sender]):
        out = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    try:
        receiver.settimeout(0.4)
        marker = f"felix-test-{sender}".encode()
        out.sendto(marker, (dst, 0))
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            try:
                packet = receiver.recv(2048)
            except OSError:
                return False
            if packet.endswith(marker):
                return True
        return False
    finally:
        receiver.close()
        out.close()


def test_a_protocol_given_by_number_is_matched(lab, dp):
    dp.apply(traffic_state())
    assert _raw_delivered(lab, D, "10.65.0.1", 47)
    assert not _raw_delivered(lab, C, "10.65.0.1", 47)


def _udp_delivered(lab, sender: str, source: str, port: int = 7000) -> bool:
    with netns.entered(lab.endpoint_ns[A]):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.entered(lab.endpoint_ns[sender]):
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("0.0.0.0", port))
        receiver.settimeout(0.5)
        out.bind((source, 0))
        out.sendto(b"spoof?", ("10.65.0.1", port))
        try:
            return receiver.recv(100) == b"spoof?"
        except OSError:
            return False
    finally:
        receiver.close()
        out.close()


def test_spoofed_source_address_or_mac_is_dropped(lab, dp):
    dp.apply(state(ep(A), ep(B), ep(C), ep(D), ep(E)))
    b_ns = lab.endpoint_ns[B]
    assert _udp_delivered(lab, B, "10.65.0.2")
    sh(b_ns, "ip", "addr", "add", "10.65.0.99/32", "dev", "eth0")
    try:
        assert not _udp_delivered(lab, B, "10.65.0.99")
        assert not lab.ping(B, "10.65.0.1", source="10.65.0.99", expect=False)
    finally:
        sh(b_ns, "ip", "addr", "del", "10.65.0.99/32", "dev", "eth0")
    sh(b_ns, "ip", "link", "set", "eth0", "address", "02:00:00:00:99:99")
    try:
        assert not _udp_delivered(lab, B, "10.65.0.2")
    finally:
        sh(b_ns, "ip", "link", "set", "eth0", "address", MACS[B])
    assert _udp_delivered(lab, B, "10.65.0.2")


def test_endpoint_without_acls_or_disabled_sends_and_receives_nothing(lab, dp):
    for closed in (ep(C, acl=None), ep(C, enabled=False)):
        dp.apply(state(ep(A), ep(B), closed, ep(D), ep(E)))
        assert not lab.ping(C, "10.65.0.2", expect=False)
        assert not lab.ping(B, "10.65.0.3", expect=False)
        assert not lab.ping(A, "10.65.0.13", expect=False)
        assert "10.65.0.3 dev tapcccc03" in lab.routes()  # route kept: the state stays visible
    dp.apply(state(ep(A), ep(B), ep(C), ep(D), ep(E)))
    assert lab.ping(C, "10.65.0.2")
    assert lab.ping(B, "10.65.0.13")


def test_acl_change_keeps_established_flows(lab, dp):
    only_b = acls(inbound=[Rule(cidr="10.65.0.2/32", protocol="tcp", port=8080)], outbound=["0.0.0.0/0"])
    dp.apply(state(ep(A, only_b), ep(B), ep(C), ep(D), ep(E)))
    with lab.listening(A, 8080):
        flow = lab.connect(B, "10.65.0.1", 8080)
        assert flow is not None
        try:
            assert echo_round_trip(flow)
            # A change that still allows the flow (the sets are swapped under it).
            b_and_d = acls(inbound=[Rule(cidr="10.65.0.2/32", protocol="tcp", port=8080),
                                    Rule(cidr="10.65.0.4/32", protocol="tcp", port=8080)], outbound=["0.0.0.0/0"])
            dp.apply(state(ep(A, b_and_d), ep(B), ep(C), ep(D), ep(E)))
            assert echo_round_trip(flow, b"still there")
            assert lab.tcp_ok(D, "10.65.0.1", 8080)
            # Established flows are returned by conntrack before any ACL (DESIGN
            # section 6), so even a flow the new ACLs would refuse carries on;
            # new connections follow the new ACLs.
            only_c = acls(inbound=[Rule(cidr="10.65.0.3/32", protocol="tcp", port=8080)], outbound=["0.0.0.0/0"])
            dp.apply(state(ep(A, only_c), ep(B), ep(C), ep(D), ep(E)))
            assert echo_round_trip(flow, b"established")
            assert not lab.tcp_ok(B, "10.65.0.1", 8080, expect=False)
            assert lab.tcp_ok(C, "10.65.0.1", 8080)
        finally:
            flow.close()


def test_destroy_removes_route_neighbour_chains_and_sets(lab, dp):
    c_acl = acls(inbound=["0.0.0.0/0", Rule(cidr="0.0.0.0/0", protocol="tcp", port=22)], outbound=["0.0.0.0/0"])
    c_port = content_set_name("hash:net,port", 4, "0.0.0.0/1,tcp:22", "128.0.0.0/1,tcp:22")  # only C's rules
    dp.apply(state(ep(A), ep(B), ep(C, c_acl), ep(D), ep(E)))
    assert "felix-from-cccc03" in lab.iptables_save()
    assert f"-A felix-to-cccc03 -m set --match-set {c_port} src,dst -j RETURN" in lab.iptables_save()
    assert lab.set_members(c_port) == {"0.0.0.0/1,tcp:22", "128.0.0.0/1,tcp:22"}
    assert f"-A felix-to-cccc03 -m set --match-set {ANYWHERE} src -j RETURN" in lab.iptables_save()
    assert "10.65.0.13 dev tapcccc03" in lab.routes()
    dp.apply(state(ep(A), ep(B), ep(D), ep(E)))
    for text in (lab.iptables_save(), lab.ipset_save(), lab.routes(), lab.neighbours()):
        assert "cccc03" not in text
    assert c_port not in lab.ipset_save()  # the set only C named goes with C ...
    assert lab.set_members(ANYWHERE) == {"0.0.0.0/1", "128.0.0.0/1"}  # ... the one it shared stays
    assert not lab.ping(C, "10.65.0.2", expect=False)  # its tap now meets the catch-all drop
    assert lab.ping(B, "10.65.0.1")


def test_interface_that_appears_later_is_programmed_on_retry(lab, dp):
    desired = state(ep(A), ep(B), ep(D), ep(E), ep(F))
    assert dp.apply(desired) == {F}
    # Until its interface exists, an endpoint costs nothing: no chains, sets or route.
    assert "ffff06" not in lab.iptables_save() + lab.ipset_save()
    assert "10.65.0.6" not in lab.routes()
    lab.add_endpoint(F, ADDRS[F], MACS[F])
    assert dp.apply(desired) == set()
    assert "10.65.0.6 dev tapffff06" in lab.routes()
    assert lab.ping(B, "10.65.0.6")
    assert sh(lab.host, "sysctl", "-n", "net.ipv4.conf.tapffff06.proxy_arp").strip() == "1"
    assert sh(lab.host, "sysctl", "-n", "net.ipv4.neigh.tapffff06.proxy_delay").strip() == "0"
    assert sh(lab.host, "sysctl", "-n", "net.ipv4.conf.tapffff06.route_localnet").strip() == "1"


def test_endpoints_without_interfaces_add_no_chains_or_sets(lab, dp):
    present = traffic_state()
    dp.apply(present)
    before = lab.kernel_state()
    writes = dp.writes.total()
    wide = acls(inbound=["10.0.0.0/8", Rule(cidr="0.0.0.0/0", protocol="tcp", port=22)], outbound=["0.0.0.0/0"],
                inbound6=["::/0"], outbound6=["::/0"])
    absent = {f"absent{n:03d}": spec(f"absent{n:03d}", (f"10.66.{n // 250}.{n % 250 + 1}", f"fd00:66::{n + 1:x}"),
                                     f"02:00:00:01:{n // 256:02x}:{n % 256:02x}", wide)
              for n in range(200)}
    assert dp.apply({**present, **absent}) == set(absent)
    assert dp.writes.total() == writes
    assert lab.kernel_state() == before
    dp.forget_kernel_cache()  # also when everything is read back from the kernel
    assert dp.apply({**present, **absent}) == set(absent)
    assert dp.writes.total() == writes and lab.kernel_state() == before


def test_resync_with_nothing_changed_writes_nothing(lab, dp):
    desired = traffic_state()
    dp.apply(desired)
    before_state = lab.kernel_state()
    before_writes = dp.writes.snapshot()
    assert dp.apply(desired) == set()
    assert dp.writes.snapshot() == before_writes
    dp.forget_kernel_cache()  # a periodic resync: everything read back from the kernel
    assert dp.apply(desired) == set()
    assert dp.writes.snapshot() == before_writes
    assert lab.kernel_state() == before_state


def test_ipv6_endpoint_routes_chains_sets_and_ping6(lab, dp):
    d_acl = acls(inbound=["0.0.0.0/0"], outbound=["0.0.0.0/0"],
                 inbound6=[Rule(cidr="::/0", protocol="tcp", port=22)], outbound6=["::/0"])
    e_acl = acls(inbound6=[Rule(cidr="fd00::/64", protocol="icmpv6", icmp_type=128)], outbound6=["::/0"])
    dp.apply(state(ep(A), ep(B), ep(D, d_acl), ep(E, e_acl)))
    assert "fd00::5 dev tapeeee05" in lab.routes()
    assert "fe80::1 dev tapeeee05 proxy" in lab.neighbours()
    assert "felix-from-eeee05" in lab.iptables_save(6)
    assert "felix-from-eeee05" not in lab.iptables_save(4)  # no IPv4 address, no IPv4 chains
    echo_from = content_set_name("hash:net", 6, "fd00::/64")
    assert f"create {echo_from} hash:net family inet6" in lab.ipset_save()
    assert lab.set_members(echo_from) == {"fd00::/64"}
    assert (f"-A felix-to-eeee05 -p ipv6-icmp -m icmp6 --icmpv6-type 128 -m set --match-set {echo_from} src "
            "-j RETURN") in lab.iptables_save(6)
    assert lab.ping(D, "fd00::5")
    assert not lab.ping(E, "fd00::4", expect=False)
    with lab.listening(D, 22, v6=True), lab.listening(D, 23, v6=True):
        assert lab.tcp_ok(E, "fd00::4", 22)
        assert not lab.tcp_ok(E, "fd00::4", 23, expect=False)
    assert lab.ping(D, "10.65.0.2")  # and its IPv4 side still works


def test_a_pass_that_fails_halfway_is_repaired_by_the_next(lab, dp):
    before = state(ep(A), ep(B), ep(C), ep(D), ep(E))
    dp.apply(before)
    after = traffic_state()
    after[F] = ep(F)
    del after[C]
    broken = {iptables_tool(lab.backend, 4, "-restore"): True}

    def flaky(argv, **kwargs):
        if broken.get(argv[0]):
            return subprocess.CompletedProcess(argv, 1, "", "iptables-restore: line 3 failed")
        return subprocess.run(argv, **kwargs)

    with netns.entered(lab.host):
        restarted = Dataplane(iptables_mode="restore", iptables_backend=lab.backend)
    try:
        restarted.iptables[4].runner = flaky
        # Every IPv4 commit fails, also with no endpoint changed: no endpoint
        # is to blame, so the error reaches the agent (which backs off).
        with pytest.raises(ToolError):
            restarted.apply(after)  # sets and routes written, IPv4 rules not
        assert restarted.failed == {}
        assert "felix-from-cccc03" in lab.iptables_save()
        broken.clear()
        restarted.forget_kernel_cache()  # what the agent does after a failed pass
        assert restarted.apply(after) == set()
        settled = lab.kernel_state()
        writes = restarted.writes.total()
        restarted.forget_kernel_cache()
        restarted.apply(after)
        assert restarted.writes.total() == writes and lab.kernel_state() == settled
    finally:
        restarted.close()
        dp.forget_kernel_cache()  # another instance changed the kernel under the module's Dataplane
    assert "cccc03" not in settled["iptables"] + settled["ipsets"] + settled["routes"]
    assert lab.ping(B, "10.65.0.1") and lab.ping(B, "10.65.0.6")


def _wipe_felix_state(lab) -> None:
    """Remove every trace of Felix from the host namespace, by hand."""
    for version in (4, 6):
        tool = iptables_tool(lab.backend, version)
        for builtin, jump in (("INPUT", "felix-INPUT"), ("FORWARD", "felix-FORWARD")):
            while netns.run(lab.host, [tool, "-D", builtin, "-j", jump], check=False).returncode == 0:
                pass
        chains = [line.split()[0][1:] for line in sh(lab.host, f"{tool}-save", "-t", "filter").splitlines()
                  if line.startswith(":felix-")]
        for chain in chains:
            sh(lab.host, tool, "-F", chain)
        for chain in chains:
            sh(lab.host, tool, "-X", chain)
    for name in sh(lab.host, "ipset", "list", "-n").split():
        if name.startswith("felix-"):
            sh(lab.host, "ipset", "destroy", name)
    sh(lab.host, "ip", "route", "flush", "proto", "80")
    sh(lab.host, "ip", "-6", "route", "flush", "proto", "80")
    for line in lab.neighbours().splitlines():
        words = line.split()
        if words[2].startswith("tap"):
            sh(lab.host, "ip", "neigh", "del", *(["proxy"] if "proxy" in words else []), words[0], "dev", words[2])


def test_restart_with_changed_endpoints_converges_to_exactly_the_clean_state(lab, dp):
    old = traffic_state()
    old[F] = ep(F)
    dp.apply(old)
    host = lab.host
    # Things that are not Felix's, which it must leave alone ...
    lab.iptables("-N", "OTHER-CHAIN")
    lab.iptables("-A", "OTHER-CHAIN", "-s", "192.0.2.1/32", "-j", "DROP")
    lab.iptables("-I", "INPUT", "1", "-j", "OTHER-CHAIN")
    sh(host, "ipset", "create", "other-set", "hash:ip")
    sh(host, "ipset", "add", "other-set", "192.0.2.1")
    sh(host, "ip", "route", "add", "192.0.2.0/24", "dev", "tapbbbb02", "proto", "static")
    # ... and Felix's own mess from a previous life: a duplicate rule and jump,
    # a stale chain, set and route.
    lab.iptables("-A", "felix-FROM-ENDPOINT", "-i", "tapbbbb02", "-g", "felix-from-bbbb02")
    lab.iptables("-A", "INPUT", "-j", "felix-INPUT")
    lab.iptables("-N", "felix-from-zzzz99")
    lab.iptables("-A", "felix-from-zzzz99", "-j", "DROP")
    sh(host, "ipset", "create", "felix-4in-zzzz99-net", "hash:net")  # (named as Felix once named sets)
    sh(host, "ipset", "create", f"{ANYWHERE}-t", "hash:net")  # a temp left by a crash (B still names the set)
    sh(host, "ip", "route", "add", "10.65.9.9/32", "dev", "tapbbbb02", "proto", "80")

    new_a = acls(inbound=[Rule(cidr="10.65.0.4/32", protocol="udp", port=53)], outbound=["0.0.0.0/0"])
    new = state(ep(A, new_a), ep(B), ep(D, acls(inbound=["10.65.0.0/24"], outbound6=["::/0"])), ep(E), ep(F))

    with netns.entered(host):
        # python-iptables where it can be used (legacy); nft has one means only.
        restarted = Dataplane(iptables_mode="library" if lab.backend == "legacy" else "auto", ipset_mode="library",
                              iptables_backend=lab.backend)
    try:
        restarted.start()
        assert "felix-from-cccc03" in lab.iptables_save()  # start() keeps enforcing the old state
        assert restarted.apply(new) == set()
    finally:
        restarted.close()
    converged = lab.kernel_state()

    saved = converged["iptables"]
    assert saved.count("-A INPUT -j felix-INPUT") == 1
    assert saved.splitlines().index("-A INPUT -j felix-INPUT") < saved.splitlines().index("-A INPUT -j OTHER-CHAIN")
    assert saved.count("-A felix-FROM-ENDPOINT -i tapbbbb02 -g felix-from-bbbb02") == 1
    assert "-A OTHER-CHAIN -s 192.0.2.1/32 -j DROP" in saved
    for text in converged.values():
        assert "cccc03" not in text and "zzzz99" not in text and "10.65.9.9" not in text
    assert f"{ANYWHERE}-t" not in converged["ipsets"]
    assert lab.set_members(ANYWHERE) == {"0.0.0.0/1", "128.0.0.0/1"}
    assert "add other-set 192.0.2.1" in converged["ipsets"]
    assert "192.0.2.0/24 dev tapbbbb02" in sh(host, "ip", "route", "show", "proto", "static")

    # The same desired state built on a host with no trace of Felix, through
    # the other means of writing (iptables-restore, ipset restore).
    _wipe_felix_state(lab)
    with netns.entered(host):
        fresh = Dataplane(iptables_mode="restore", ipset_mode="restore", iptables_backend=lab.backend)
    try:
        fresh.start()
        fresh.apply(new)
    finally:
        fresh.close()
    assert lab.kernel_state() == converged
    assert lab.ping(A, "10.65.0.4")  # and the result carries traffic as the new ACLs say
    assert not lab.ping(B, "10.65.0.1", expect=False)


def _not_felix(save_text: str) -> list[str]:
    """A save listing without Felix's chains, rules and jumps (and comments)."""
    return [line for line in save_text.splitlines()
            if not line.startswith(("#", ":felix-", "-A felix-")) and "-j felix-" not in line]


def test_with_dockers_forward_drop_only_felix_chains_and_jumps_are_touched(lab, dp):
    """Docker's rules in the same backend (FORWARD policy DROP, its chains and
    jumps, a nat rule): traffic flows as the ACLs say, Felix's jump ends up
    first again after Docker put one of its own above it, and nothing that is
    not Felix's changes, rule for rule."""
    docker = [("-P", "FORWARD", "DROP"), ("-N", "DOCKER"), ("-N", "DOCKER-USER"),
              ("-A", "DOCKER-USER", "-j", "RETURN"), ("-A", "FORWARD", "-o", "docker0", "-j", "DOCKER"),
              ("-I", "FORWARD", "1", "-j", "DOCKER-USER"),  # above Felix's jump, as a restarted dockerd does
              ("-t", "nat", "-N", "DOCKER"),
              ("-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE")]
    dp.forget_kernel_cache()  # the test before changed the kernel through other Dataplanes
    dp.apply(traffic_state())
    for version in (4, 6):
        for args in docker:
            lab.iptables(*[a if a != "172.17.0.0/16" or version == 4 else "fd17::/64" for a in args], version=version)
    try:
        before = {(v, t): _not_felix(lab.iptables_save(v, t)) for v in (4, 6) for t in ("filter", "nat")}
        assert "-P FORWARD DROP" not in before[(4, "filter")]  # (save spells a policy ":FORWARD DROP")
        assert ":FORWARD DROP [0:0]" in before[(4, "filter")]
        dp.forget_kernel_cache()  # a periodic resync: Felix sees Docker's jump above its own
        dp.apply(traffic_state())
        for version in (4, 6):
            forward = [line for line in lab.iptables_save(version).splitlines() if line.startswith("-A FORWARD ")]
            assert forward == ["-A FORWARD -j felix-FORWARD", "-A FORWARD -j DOCKER-USER",
                               "-A FORWARD -o docker0 -j DOCKER"], forward
            for table in ("filter", "nat"):
                assert _not_felix(lab.iptables_save(version, table)) == before[(version, table)]
        assert lab.ping(B, "10.65.0.1") and lab.ping(D, "fd00::5")  # through FORWARD, policy DROP
        assert lab.ping("uplink", "10.65.0.4") and lab.ping("uplink", "fd00::4")
        with lab.listening(A, 8080):
            assert lab.tcp_ok(C, "10.65.0.1", 8080)
            assert not lab.tcp_ok(D, "10.65.0.1", 8080, expect=False)
    finally:
        for version in (4, 6):
            for args in (("-D", "FORWARD", "-j", "DOCKER-USER"), ("-D", "FORWARD", "-o", "docker0", "-j", "DOCKER"),
                         ("-X", "DOCKER"), ("-F", "DOCKER-USER"), ("-X", "DOCKER-USER"), ("-P", "FORWARD", "ACCEPT"),
                         ("-t", "nat", "-F", "POSTROUTING"), ("-t", "nat", "-X", "DOCKER")):
                lab.iptables(*args, version=version, check=False)
    dp.forget_kernel_cache()


def test_the_other_backend_is_left_alone(lab, dp):
    dp.forget_kernel_cache()
    dp.apply(traffic_state())
    other = "nft" if lab.backend == "legacy" else "legacy"
    assert felix_chains_in(lab.host, lab.backend) and felix_chains_in(lab.host, other) == set()
    if lab.backend == "nft":  # never python-iptables, nor any legacy read that would create a table
        assert sh(lab.host, "cat", "/proc/net/ip_tables_names").split() == []
        assert sh(lab.host, "cat", "/proc/net/ip6_tables_names").split() == []
    else:
        assert sh(lab.host, "iptables-nft-save").strip() == "" and sh(lab.host, "ip6tables-nft-save").strip() == ""


def test_root_namespace_untouched(lab):
    assert root_felix_state() == lab.root_before
