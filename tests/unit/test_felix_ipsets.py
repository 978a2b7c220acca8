"""Felix's desired ipsets and their plans (pure; no kernel)."""

import hashlib

from calico.common.rules import Rule
from calico.felix import host_layout, ipset_writer, ipsets
from calico.felix.ipset_writer import SetEdit
from calico.felix.ipsets import HASH_NET, HASH_NET_PORT, SetMatch, SetSpec
from calico.felix.state import AclRules, Acls, EndpointSpec

MAC = "02:00:00:00:00:01"


def endpoint(inbound=(), outbound=(), inbound6=(), outbound6=(), addrs=("10.0.0.1",), eid="endpoint-one-long"):
    return EndpointSpec(eid, MAC, addrs, acls=Acls(AclRules(tuple(inbound), tuple(outbound)),
                                                   AclRules(tuple(inbound6), tuple(outbound6))))


def sets_of(spec, versions=(4, 6)):
    return ipsets.endpoint_sets(spec, versions)


def matches_of(*specs):
    """Every chain's set matches, endpoint by endpoint (what the chains are built from)."""
    return {key: matches for spec in specs for key, matches in sets_of(spec).matches.items()}


def host_sets(*specs):
    """The sets one dataplane pass over these endpoints creates (``host_layout``, as the pass computes them)."""
    layouts = [host_layout.endpoint_layout(spec, (4, 6)) for spec in specs]
    return host_layout.desired_state(layouts, (4, 6)).sets


def content_name(set_type, version, *members):
    """The documented name of the set holding ``members``, written as ``ipset
    restore`` spells them: felix-<4|6>s- and the first 19 hex characters of
    the sha256 of the set type and the sorted members, one a line."""
    text = "\n".join([set_type, *sorted(members)])
    return f"felix-{version}s-{hashlib.sha256(text.encode()).hexdigest()[:19]}"


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
    net = content_name(HASH_NET, 4, "10.1.0.0/16")
    port = content_name(HASH_NET_PORT, 4, "10.2.0.0/16,tcp:80", "10.2.0.0/16,udp:53", "10.3.0.0/16,icmp:8/0",
                        "10.4.0.0/16,47:0")
    assert desired.sets[net] == SetSpec(net, HASH_NET, 4, frozenset({"10.1.0.0/16"}))
    assert desired.sets[port] == SetSpec(port, HASH_NET_PORT, 4, frozenset({
        ("10.2.0.0/16", 6, 80), ("10.2.0.0/16", 17, 53), ("10.3.0.0/16", 1, 8 << 8), ("10.4.0.0/16", 47, 0)}))
    matches = desired.matches[("endpoint-one-long", 4, "in")]
    assert matches[:2] == (SetMatch(net, HASH_NET), SetMatch(port, HASH_NET_PORT))
    # classes in (protocol number, kind) order: icmp any, icmp type 3, tcp any, tcp range
    classes = {cidr: content_name(HASH_NET, 4, cidr) for cidr in ("10.7.0.0/16", "10.8.0.0/16", "10.5.0.0/16",
                                                                   "10.6.0.0/16")}
    assert matches[2:] == (
        SetMatch(classes["10.7.0.0/16"], HASH_NET, "icmp"),
        SetMatch(classes["10.8.0.0/16"], HASH_NET, "icmp", icmp_type=3),
        SetMatch(classes["10.5.0.0/16"], HASH_NET, "tcp"),
        SetMatch(classes["10.6.0.0/16"], HASH_NET, "tcp", ports=(1000, 2000)),
    )
    for cidr, name in classes.items():
        assert desired.sets[name] == SetSpec(name, HASH_NET, 4, frozenset({cidr}))
    assert set(desired.sets) == {net, port, *classes.values()}
    assert desired.matches[("endpoint-one-long", 4, "out")] == ()
    assert not desired.warnings


def test_zero_prefix_is_stored_as_two_halves_in_every_set_type():
    spec = endpoint(outbound=[Rule(cidr="0.0.0.0/0"), Rule(cidr="0.0.0.0/0", protocol="tcp", port=443)],
                    outbound6=[Rule(cidr="::/0", protocol="icmpv6")], addrs=("10.0.0.1", "fd00::1"))
    desired = sets_of(spec)
    assert desired.sets[content_name(HASH_NET, 4, "0.0.0.0/1", "128.0.0.0/1")].members == {"0.0.0.0/1",
                                                                                            "128.0.0.0/1"}
    port = content_name(HASH_NET_PORT, 4, "0.0.0.0/1,tcp:443", "128.0.0.0/1,tcp:443")
    assert desired.sets[port].members == {("0.0.0.0/1", 6, 443), ("128.0.0.0/1", 6, 443)}
    v6 = desired.sets[content_name(HASH_NET, 6, "::/1", "8000::/1")]
    assert (v6.version, v6.members) == (6, frozenset({"::/1", "8000::/1"}))
    assert len(desired.sets) == 3


def test_fail_closed_and_missing_family_get_no_sets():
    closed = EndpointSpec("closed", MAC, ("10.0.0.1",), acls=None)
    disabled = EndpointSpec("off", MAC, ("10.0.0.2",), enabled=False,
                            acls=Acls(AclRules((Rule(cidr="0.0.0.0/0"),), ())))
    v4_only = endpoint(inbound6=[Rule(cidr="::/0")])
    assert host_sets(closed, disabled, v4_only) == {}
    matches = matches_of(closed, disabled, v4_only)
    assert ("closed", 4, "in") not in matches and ("off", 4, "in") not in matches
    assert matches[(v4_only.endpoint_id, 4, "in")] == ()
    assert (v4_only.endpoint_id, 6, "in") not in matches


def test_rules_that_cannot_apply_are_skipped_with_a_warning_and_never_widen():
    good = [Rule(cidr="10.1.0.0/16", protocol="tcp", port=22)]
    bad = ["0.0.0.0/0", Rule(group="web", protocol="icmpv6"), Rule(cidr="fd00::/64"),
           Rule(cidr="0.0.0.0/0", protocol="icmpv6"), None]
    with_bad = sets_of(endpoint(inbound=good + bad))
    only_good = sets_of(endpoint(inbound=good))
    assert with_bad.sets == only_good.sets
    assert with_bad.matches == only_good.matches
    assert len(with_bad.warnings) == len(bad)
    assert all("skipped" in w and "endpoint-one-long" in w for w in with_bad.warnings)
    assert with_bad.groups == set()  # the skipped group rule names no set


# --- sets named by their content, shared by endpoints whose rules hold the same CIDRs ---

def test_endpoints_whose_rules_hold_the_same_cidrs_share_one_set_and_a_change_is_a_new_one():
    anywhere = [Rule(cidr="0.0.0.0/0")]  # the seed's default "out to anywhere"
    a = endpoint(inbound=[Rule(cidr="10.1.0.0/16"), Rule(cidr="10.2.0.0/16")], outbound=anywhere, eid="a")
    b = endpoint(inbound=[Rule(cidr="10.2.0.0/16"), Rule(cidr="10.1.0.0/16")], outbound=anywhere, eid="b",
                 addrs=("10.0.0.2",))  # a's CIDRs in another order
    c = endpoint(inbound=[Rule(cidr="10.1.0.0/16")], outbound=anywhere, eid="c", addrs=("10.0.0.3",))
    sets, matches = host_sets(a, b, c), matches_of(a, b, c)
    out = content_name(HASH_NET, 4, "0.0.0.0/1", "128.0.0.0/1")
    both = content_name(HASH_NET, 4, "10.1.0.0/16", "10.2.0.0/16")
    one = content_name(HASH_NET, 4, "10.1.0.0/16")
    assert len({out, both, one}) == 3
    for eid in "abc":
        assert matches[(eid, 4, "out")] == (SetMatch(out, HASH_NET),)
    assert matches[("a", 4, "in")] == matches[("b", 4, "in")] == (SetMatch(both, HASH_NET),)
    assert matches[("c", 4, "in")] == (SetMatch(one, HASH_NET),)
    assert sets == {
        out: SetSpec(out, HASH_NET, 4, frozenset({"0.0.0.0/1", "128.0.0.0/1"})),
        both: SetSpec(both, HASH_NET, 4, frozenset({"10.1.0.0/16", "10.2.0.0/16"})),
        one: SetSpec(one, HASH_NET, 4, frozenset({"10.1.0.0/16"})),
    }

    # b's inbound rules change: b names a new set; a's set and matches stay exactly as they were.
    b2 = endpoint(inbound=[Rule(cidr="10.2.0.0/16")], outbound=anywhere, eid="b", addrs=("10.0.0.2",))
    after_sets, after_matches = host_sets(a, b2, c), matches_of(a, b2, c)
    two = content_name(HASH_NET, 4, "10.2.0.0/16")
    assert after_matches[("b", 4, "in")] == (SetMatch(two, HASH_NET),)
    assert after_matches[("a", 4, "in")] == matches[("a", 4, "in")]
    assert after_sets[both] == sets[both]
    assert after_sets[two] == SetSpec(two, HASH_NET, 4, frozenset({"10.2.0.0/16"}))
    assert set(after_sets) == {out, both, one, two}


# --- group rules: one shared set per group and family --------------------------------

def test_group_set_names_are_the_group_or_a_hash_of_a_long_one():
    assert ipsets.group_set_name("web", 4) == "felix-4g-web"
    assert ipsets.group_set_name("web", 6) == "felix-6g-web"
    assert ipsets.group_set_name("abcdefghijklmnopqrs", 4) == "felix-4g-abcdefghijklmnopqrs"  # 19: fits
    assert ipsets.group_set_name("frontend-web-servers-eu", 4) == "felix-4h-8cdb4031d714e37859a"
    assert ipsets.group_set_name("frontend-web-servers-eu", 6) == "felix-6h-8cdb4031d714e37859a"
    for group in ("g", "x" * 19, "x" * 20, "y" * 64):
        assert len(ipsets.temp_name(ipsets.group_set_name(group, 6))) <= 31
        assert ipsets.is_felix_set(ipsets.group_set_name(group, 4))


def test_no_groups_set_is_another_groups_temporary_twin():
    """Group names may end in "-t" (1-64 of A-Z a-z 0-9 _ . -), and a replaced
    set is filled as <name>-t: group web-t's set must not be web's twin."""
    for group in ("web", "a", "x" * 17, "x" * 19, "frontend-web-servers-eu"):
        for version in (4, 6):
            twin = ipsets.temp_name(ipsets.group_set_name(group, version))
            assert ipsets.group_set_name(group + "-t", version) != twin, group


def test_only_group_sets_are_group_sets():
    for name in ("felix-4g-web", "felix-6g-web", "felix-4h-8cdb4031d714e37859a"):
        assert ipsets.is_group_set(name), name
    for name in (content_name(HASH_NET, 4, "10.0.0.0/8"), content_name(HASH_NET_PORT, 6, "::/1,tcp:80"),
                 "other-4g-web", "felix-4gweb", "felix-", ""):
        assert not ipsets.is_group_set(name), name


def test_a_group_set_holds_the_host_routes_of_its_familys_addresses():
    addrs = {"10.0.0.1", "10.0.0.2", "fd00::1"}
    assert ipsets.group_set("web", 4, addrs) == SetSpec("felix-4g-web", HASH_NET, 4,
                                                        frozenset({"10.0.0.1/32", "10.0.0.2/32"}))
    assert ipsets.group_set("web", 6, addrs) == SetSpec("felix-6g-web", HASH_NET, 6, frozenset({"fd00::1/128"}))
    assert ipsets.group_set("web", 6, {"10.0.0.1"}) == SetSpec("felix-6g-web", HASH_NET, 6, frozenset())


def test_a_group_rule_matches_the_groups_set_with_its_protocol_port_or_icmp():
    cases = [
        (Rule(group="web"), 4, SetMatch("felix-4g-web", HASH_NET)),
        (Rule(group="web", protocol="tcp", port=80), 4, SetMatch("felix-4g-web", HASH_NET, "tcp", ports=(80, 80))),
        (Rule(group="web", protocol="udp", port=(1000, 2000)), 6,
         SetMatch("felix-6g-web", HASH_NET, "udp", ports=(1000, 2000))),
        (Rule(group="web", protocol="sctp"), 4, SetMatch("felix-4g-web", HASH_NET, "sctp")),
        (Rule(group="web", protocol=6, port=22), 4, SetMatch("felix-4g-web", HASH_NET, "tcp", ports=(22, 22))),
        (Rule(group="web", protocol="icmp"), 4, SetMatch("felix-4g-web", HASH_NET, "icmp")),
        (Rule(group="web", protocol="icmp", icmp_type=8, icmp_code=0), 4,
         SetMatch("felix-4g-web", HASH_NET, "icmp", icmp_type=8, icmp_code=0)),
        (Rule(group="web", protocol="icmpv6", icmp_type=128), 6,
         SetMatch("felix-6g-web", HASH_NET, "icmpv6", icmp_type=128)),
        (Rule(group="web", protocol=47), 6, SetMatch("felix-6g-web", HASH_NET, "47")),
    ]
    for rule, version, match in cases:
        assert ipsets.group_match(rule, version) == match, rule


def test_a_group_rule_of_the_other_familys_icmp_is_a_warning():
    assert "icmpv6" in ipsets.group_match(Rule(group="web", protocol="icmpv6"), 4)
    assert "icmp" in ipsets.group_match(Rule(group="web", protocol="icmp", icmp_type=8), 6)


def test_group_rules_match_after_the_endpoints_own_sets_in_rule_order_and_make_no_set_of_their_own():
    spec = endpoint(inbound=[Rule(group="web", protocol="tcp", port=80), Rule(cidr="10.1.0.0/16"),
                             Rule(group="db"), Rule(group="web", protocol="tcp", port=80)],
                    inbound6=[Rule(group="web")], outbound6=[Rule(group="ops", protocol="icmpv6", icmp_type=128)],
                    addrs=("10.0.0.1", "fd00::1"))
    desired = sets_of(spec)
    net = content_name(HASH_NET, 4, "10.1.0.0/16")
    assert desired.matches[("endpoint-one-long", 4, "in")] == (
        SetMatch(net, HASH_NET),
        SetMatch("felix-4g-web", HASH_NET, "tcp", ports=(80, 80)),
        SetMatch("felix-4g-db", HASH_NET),
    )
    assert desired.matches[("endpoint-one-long", 6, "in")] == (SetMatch("felix-6g-web", HASH_NET),)
    assert desired.matches[("endpoint-one-long", 6, "out")] == (
        SetMatch("felix-6g-ops", HASH_NET, "icmpv6", icmp_type=128),)
    assert set(desired.sets) == {net}  # group sets are shared: the dataplane makes them
    assert desired.groups == {("web", 4), ("db", 4), ("web", 6), ("ops", 6)}
    assert not desired.warnings


def test_desired_groups_are_collected_over_endpoints_and_closed_ones_name_none():
    a = endpoint(inbound=[Rule(group="web")], eid="a")
    b = endpoint(outbound=[Rule(group="db")], eid="b", addrs=("10.0.0.2",))
    closed = EndpointSpec("c", MAC, ("10.0.0.3",), acls=None)
    layouts = [host_layout.endpoint_layout(spec, (4, 6)) for spec in (a, b, closed)]
    assert host_layout.groups_named(layouts) == {("web", 4), ("db", 4)}


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


# --- group sets are edited in place, member by member -----------------------------------

def host_routes(count, start=0):
    return {f"10.{i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(start, start + count)}


def test_a_join_into_a_1000_member_group_set_plans_exactly_one_add_and_no_replace():
    have = spec_set("felix-4g-web", host_routes(1000))
    want = spec_set("felix-4g-web", host_routes(1000) | {"10.9.9.9/32"})
    plan = ipset_writer.plan_sets({"felix-4g-web": have}, {"felix-4g-web": want})
    assert plan.edits == [SetEdit(want, removed=(), added=("10.9.9.9/32",))]
    assert plan.creates == [] and plan.replaces == [] and plan.stale_temps == []
    assert plan.operations() == 1
    assert ipset_writer.restore_input(plan) == "add felix-4g-web 10.9.9.9/32\n"


def test_a_leave_from_a_group_set_is_one_del():
    have = spec_set("felix-6g-web", {"fd00::1/128", "fd00::2/128", "fd00::3/128"}, version=6)
    want = spec_set("felix-6g-web", {"fd00::1/128", "fd00::3/128"}, version=6)
    plan = ipset_writer.plan_sets({have.name: have}, {want.name: want})
    assert plan.edits == [SetEdit(want, removed=("fd00::2/128",), added=())] and plan.replaces == []
    assert ipset_writer.restore_input(plan) == "del felix-6g-web fd00::2/128\n"


def test_a_group_set_changing_by_at_most_half_its_new_size_is_edited_and_by_more_is_replaced():
    # 9 members before, 10 after: 2 removed and 3 added, 5 changes, exactly half the new size.
    have = spec_set("felix-4g-web", host_routes(9))
    want = spec_set("felix-4g-web", host_routes(7) | host_routes(3, start=100))
    plan = ipset_writer.plan_sets({have.name: have}, {want.name: want})
    assert plan.edits == [SetEdit(want, removed=("10.0.0.7/32", "10.0.0.8/32"),
                                  added=("10.0.0.100/32", "10.0.0.101/32", "10.0.0.102/32"))]
    assert plan.replaces == []
    # 10 before, 10 after: 3 removed and 3 added, 6 changes (a resync or a gap found another membership).
    have = spec_set("felix-4g-web", host_routes(10))
    want = spec_set("felix-4g-web", host_routes(7) | host_routes(3, start=100))
    plan = ipset_writer.plan_sets({have.name: have}, {want.name: want})
    assert plan.edits == [] and plan.replaces == [want]


def test_a_replaced_group_set_first_destroys_a_stale_temporary_twin():
    have = spec_set("felix-4g-web", host_routes(10))
    want = spec_set("felix-4g-web", host_routes(4) | host_routes(7, start=100))  # 11 afterwards, 6 + 7 changes
    twin = spec_set("felix-4g-web-t", {"10.200.0.1/32"})
    plan = ipset_writer.plan_sets({have.name: have, twin.name: twin}, {want.name: want})
    assert plan.edits == [] and plan.replaces == [want] and plan.stale_temps == ["felix-4g-web-t"]


def test_the_last_member_leaving_or_the_first_joining_a_group_set_replaces_it():
    one = spec_set("felix-4g-web", {"10.0.0.1/32"})
    empty = spec_set("felix-4g-web", set())
    assert ipset_writer.plan_sets({one.name: one}, {empty.name: empty}).replaces == [empty]
    assert ipset_writer.plan_sets({empty.name: empty}, {one.name: one}).replaces == [one]


def test_an_endpoints_own_set_is_never_edited_in_place():
    name = content_name(HASH_NET, 4, "10.9.0.0/16")  # an endpoint's set, whatever the kernel holds under it
    have = spec_set(name, host_routes(1000))
    want = spec_set(name, host_routes(1001))
    plan = ipset_writer.plan_sets({have.name: have}, {want.name: want})
    assert plan.edits == [] and plan.replaces == [want]


def test_a_group_set_whose_maxelem_or_type_would_change_is_replaced():
    have = spec_set("felix-4g-big", host_routes(65536))
    want = spec_set("felix-4g-big", host_routes(65537))  # needs maxelem 131072
    plan = ipset_writer.plan_sets({have.name: have}, {want.name: want})
    assert plan.edits == [] and plan.replaces == [want]
    odd = spec_set("felix-4g-web", {("10.0.0.1/32", 6, 80)}, HASH_NET_PORT)
    want = spec_set("felix-4g-web", {"10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"})
    assert ipset_writer.plan_sets({odd.name: odd}, {want.name: want}).replaces == [want]


def test_restore_input_edits_removals_first_before_creates_and_swaps():
    plan = ipset_writer.SetPlan(
        creates=[spec_set("felix-new", {"10.0.0.0/8"})],
        replaces=[spec_set("felix-old", {"fd00::/64"}, version=6)],
        edits=[SetEdit(spec_set("felix-4g-web", {"10.0.0.2/32", "10.0.0.3/32"}),
                       removed=("10.0.0.1/32", "10.0.0.9/32"), added=("10.0.0.3/32",))],
        stale_temps=["felix-old-t"])
    assert ipset_writer.restore_input(plan).splitlines() == [
        "destroy felix-old-t",
        "del felix-4g-web 10.0.0.1/32",
        "del felix-4g-web 10.0.0.9/32",
        "add felix-4g-web 10.0.0.3/32",
        "create felix-new hash:net family inet",
        "add felix-new 10.0.0.0/8",
        "create felix-old-t hash:net family inet6",
        "add felix-old-t fd00::/64",
        "swap felix-old-t felix-old",
        "destroy felix-old-t",
    ]
    assert plan.operations() == 3 + (1 + 1) + (1 + 3) + 1


class RecordingIPSet:
    """Stands in for pyroute2's IPSet: records every request."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        def call(*args, **kwargs):
            self.calls.append((method, args, kwargs))
        return call

    def close(self):
        pass


def test_the_library_path_deletes_then_adds_each_edited_member_and_the_cache_follows():
    import socket

    from calico.felix.kernel_writes import WriteCounter

    writer = ipset_writer.IpsetWriter(WriteCounter(), ipset_writer.LIBRARY)
    have = spec_set("felix-4g-web", host_routes(10))
    want = spec_set("felix-4g-web", (host_routes(10) - {"10.0.0.3/32"}) | {"10.0.9.9/32"})
    writer.kernel = {have.name: have}
    writer._ipset = RecordingIPSet()
    plan = writer.sync({want.name: want})
    assert [e.added for e in plan.edits] == [("10.0.9.9/32",)]
    assert writer._ipset.calls == [
        ("delete", ("felix-4g-web", "10.0.0.3/32"), {"family": socket.AF_INET, "etype": "net", "exclusive": False}),
        ("add", ("felix-4g-web", "10.0.9.9/32"), {"family": socket.AF_INET, "etype": "net", "exclusive": False}),
    ]
    assert writer.kernel == {want.name: want}
    assert writer.counter.ipset_requests == 2
    assert writer.sync({want.name: want}).is_empty()  # nothing changed: nothing written


def test_the_restore_path_writes_only_the_edit():
    import subprocess

    from calico.felix.kernel_writes import WriteCounter

    fed = []

    def runner(argv, **kwargs):
        fed.append((argv, kwargs.get("input")))
        return subprocess.CompletedProcess(argv, 0, "", "")

    writer = ipset_writer.IpsetWriter(WriteCounter(), ipset_writer.RESTORE, runner=runner)
    have = spec_set("felix-4g-web", host_routes(1000))
    want = spec_set("felix-4g-web", host_routes(999))
    writer.kernel = {have.name: have}
    writer.sync({want.name: want})
    assert fed == [(["ipset", "restore"], "del felix-4g-web 10.0.3.231/32\n")]
    assert writer.kernel == {want.name: want}


def test_replacing_a_group_set_never_destroys_another_groups_set():
    web = spec_set(ipsets.group_set_name("web", 4), host_routes(10))
    web_t = spec_set(ipsets.group_set_name("web-t", 4), {"10.200.0.1/32"})
    new_web = spec_set(web.name, host_routes(10, start=100))  # a resync found another membership: a replace
    kernel = {web.name: web, web_t.name: web_t}
    plan = ipset_writer.plan_sets(kernel, {new_web.name: new_web, web_t.name: web_t})
    assert plan.replaces == [new_web]
    lines = ipset_writer.restore_input(plan).splitlines()
    assert f"destroy {web_t.name}" not in lines and not any(line.startswith(f"create {web_t.name} ") for line in lines)
