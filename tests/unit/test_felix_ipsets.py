"""Felix's desired ipsets and their plans (pure; no kernel)."""

from calico.common.rules import Rule
from calico.felix import ipset_writer, ipsets
from calico.felix.ipsets import HASH_NET, HASH_NET_PORT, SetMatch, SetSpec
from calico.felix.state import AclRules, Acls, EndpointSpec

MAC = "02:00:00:00:00:01"


def endpoint(inbound=(), outbound=(), inbound6=(), outbound6=(), addrs=("10.0.0.1",), eid="endpoint-one-long"):
    return EndpointSpec(eid, MAC, addrs, acls=Acls(AclRules(tuple(inbound), tuple(outbound)),
                                                   AclRules(tuple(inbound6), tuple(outbound6))))


def sets_of(spec, versions=(4, 6)):
    return ipsets.desired_sets({spec.endpoint_id: spec}, versions)


def test_rules_are_sorted_into_net_port_and_class_sets():
    spec = endpoint(inbound=[
        Rule(cidr="10.1.0.0/16"),
        Rule(cidr="10.2.0.0/16", protocol="tcp", port=80),
        Rule(cidr="10.2.0.0/16", protocol="udp", port=(53, 53)),
        Rule(cidr="10.3.0.0/16", protocol="icmp", icmp_type=8, icmp_code=0),
        Rule(cidr="10.4.0.0/16", protocol=47),
        Rule(cidr="10.5.0.0/16", protocol="tcp"),
        Rule(cidr="10.6.0.0/16", protocol="tcp", port=(1000, 2000)),
        Rule(cidr="10.7.0.0/16", protocol="icmp"),
        Rule(cidr="10.8.0.0/16", protocol="icmp", icmp_type=3),
    ])
    desired = sets_of(spec)
    base = "felix-4in-endpoint-on"
    assert desired.sets[base + "-net"] == SetSpec(base + "-net", HASH_NET, 4, frozenset({"10.1.0.0/16"}))
    assert desired.sets[base + "-port"].members == {
        ("10.2.0.0/16", 6, 80), ("10.2.0.0/16", 17, 53), ("10.3.0.0/16", 1, 8 << 8), ("10.4.0.0/16", 47, 0)}
    matches = desired.matches[("endpoint-one-long", 4, "in")]
    assert matches[:2] == (SetMatch(base + "-net", HASH_NET), SetMatch(base + "-port", HASH_NET_PORT))
    # classes in (protocol number, kind) order: icmp any, icmp type 3, tcp any, tcp range
    assert matches[2:] == (
        SetMatch(base + "-c0", HASH_NET, "icmp"),
        SetMatch(base + "-c1", HASH_NET, "icmp", icmp_type=3),
        SetMatch(base + "-c2", HASH_NET, "tcp"),
        SetMatch(base + "-c3", HASH_NET, "tcp", ports=(1000, 2000)),
    )
    assert desired.sets[base + "-c3"].members == {"10.6.0.0/16"}
    assert desired.matches[("endpoint-one-long", 4, "out")] == ()
    assert not desired.warnings


def test_zero_prefix_is_stored_as_two_halves_in_every_set_type():
    spec = endpoint(outbound=[Rule(cidr="0.0.0.0/0"), Rule(cidr="0.0.0.0/0", protocol="tcp", port=443)],
                    outbound6=[Rule(cidr="::/0", protocol="icmpv6")], addrs=("10.0.0.1", "fd00::1"))
    desired = sets_of(spec)
    assert desired.sets["felix-4out-endpoint-on-net"].members == {"0.0.0.0/1", "128.0.0.0/1"}
    assert desired.sets["felix-4out-endpoint-on-port"].members == {("0.0.0.0/1", 6, 443), ("128.0.0.0/1", 6, 443)}
    v6 = desired.sets["felix-6out-endpoint-on-c0"]
    assert (v6.version, v6.members) == (6, frozenset({"::/1", "8000::/1"}))


def test_fail_closed_and_missing_family_get_no_sets():
    closed = EndpointSpec("closed", MAC, ("10.0.0.1",), acls=None)
    disabled = EndpointSpec("off", MAC, ("10.0.0.2",), enabled=False,
                            acls=Acls(AclRules((Rule(cidr="0.0.0.0/0"),), ())))
    v4_only = endpoint(inbound6=[Rule(cidr="::/0")])
    desired = ipsets.desired_sets({"closed": closed, "off": disabled, v4_only.endpoint_id: v4_only}, (4, 6))
    assert desired.sets == {}
    assert ("closed", 4, "in") not in desired.matches
    assert desired.matches[(v4_only.endpoint_id, 4, "in")] == ()
    assert (v4_only.endpoint_id, 6, "in") not in desired.matches


def test_rules_that_cannot_apply_are_skipped_with_a_warning_and_never_widen():
    good = [Rule(cidr="10.1.0.0/16", protocol="tcp", port=22)]
    bad = ["0.0.0.0/0", Rule(group="web"), Rule(cidr="fd00::/64"), Rule(cidr="0.0.0.0/0", protocol="icmpv6"), None]
    with_bad = sets_of(endpoint(inbound=good + bad))
    only_good = sets_of(endpoint(inbound=good))
    assert with_bad.sets == only_good.sets
    assert with_bad.matches == only_good.matches
    assert len(with_bad.warnings) == len(bad)
    assert all("skipped" in w and "endpoint-one-long" in w for w in with_bad.warnings)


def test_names_fit_ipset_limits_with_room_for_the_temporary_twin():
    spec = endpoint(inbound=[Rule(cidr="10.0.0.0/8", protocol=p) for p in range(100, 140)]
                    + [Rule(cidr="10.0.0.0/8", protocol="tcp", port=(1, p)) for p in range(2, 20)],
                    eid="x" * 64)
    for name in sets_of(spec).sets:
        assert len(ipsets.temp_name(name)) <= 31


def test_member_text_is_what_ipset_restore_reads():
    assert ipsets.member_text("10.0.0.0/8", HASH_NET) == "10.0.0.0/8"
    assert ipsets.member_text(("10.0.0.0/8", 6, 80), HASH_NET_PORT) == "10.0.0.0/8,tcp:80"
    assert ipsets.member_text(("10.0.0.0/8", 1, 3 << 8 | 4), HASH_NET_PORT) == "10.0.0.0/8,icmp:3/4"
    assert ipsets.member_text(("fd00::/8", 58, 128 << 8), HASH_NET_PORT) == "fd00::/8,icmpv6:128/0"
    assert ipsets.member_text(("10.0.0.0/8", 47, 0), HASH_NET_PORT) == "10.0.0.0/8,47:0"


def test_canonical_cidr_matches_rule_spelling():
    assert ipsets.canonical_cidr("10.1.0.0", 16) == Rule(cidr="10.1.0.0/16").cidr
    assert ipsets.canonical_cidr("2001:db8:0:0::", 64) == Rule(cidr="2001:0db8::/64").cidr


def spec_set(name, members, set_type=HASH_NET, version=4):
    return SetSpec(name, set_type, version, frozenset(members))


def test_plan_creates_new_replaces_changed_and_leaves_equal_sets():
    kernel = {"felix-a": spec_set("felix-a", {"10.0.0.0/8"}), "felix-b": spec_set("felix-b", {"10.0.0.0/8"}),
              "felix-b-t": spec_set("felix-b-t", {"1.2.3.4/32"}), "felix-gone": spec_set("felix-gone", ())}
    desired = {"felix-a": spec_set("felix-a", {"10.0.0.0/8"}), "felix-b": spec_set("felix-b", {"10.0.0.0/9"}),
               "felix-c": spec_set("felix-c", {"10.0.0.0/8"})}
    plan = ipset_writer.plan_sets(kernel, desired)
    assert [s.name for s in plan.creates] == ["felix-c"]
    assert [s.name for s in plan.replaces] == ["felix-b"]
    assert plan.stale_temps == ["felix-b-t"]
    assert ipset_writer.unused_sets(kernel, desired) == ["felix-b-t", "felix-gone"]
    assert ipset_writer.plan_sets(desired, desired).is_empty()


def test_restore_input_fills_new_sets_directly_and_swaps_existing_ones():
    plan = ipset_writer.SetPlan(
        creates=[spec_set("felix-new", {("10.0.0.0/8", 6, 22)}, HASH_NET_PORT)],
        replaces=[spec_set("felix-old", {"fd00::/64"}, version=6)],
        stale_temps=["felix-old-t"])
    assert ipset_writer.restore_input(plan, ["felix-gone"]).splitlines() == [
        "destroy felix-old-t",
        "create felix-new hash:net,port family inet",
        "add felix-new 10.0.0.0/8,tcp:22",
        "create felix-old-t hash:net family inet6",
        "add felix-old-t fd00::/64",
        "swap felix-old-t felix-old",
        "destroy felix-old-t",
        "destroy felix-gone",
    ]


def test_big_sets_get_a_bigger_maxelem():
    assert ipset_writer.maxelem(spec_set("s", {f"10.0.{i // 256}.{i % 256}/32" for i in range(10)})) == 65536
    big = spec_set("s", {f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(70000)})
    assert ipset_writer.maxelem(big) == 131072
