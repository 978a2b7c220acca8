"""The ACL manager's pure core: per-endpoint ACLs from groups."""

import logging

import pytest

from calico.acl_manager.network_store import GroupSpec, parse_group_update
from calico.acl_manager.rule_processor import EMPTY_ACLS, RuleProcessor, rule_for_family
from calico.common.datafiles import default_group_rules
from calico.common.rules import Rule, parse_rule_list


def spec(name, members, inbound=None, outbound=None):
    """A group; rules in the cluster file's text syntax, default rules when omitted."""
    defaults = default_group_rules(name)
    return GroupSpec(
        name=name,
        members={ep: tuple(ips) for ep, ips in members.items()},
        inbound=tuple(parse_rule_list(inbound)) if inbound is not None else defaults.inbound,
        outbound=tuple(parse_rule_list(outbound)) if outbound is not None else defaults.outbound,
    )


def wire(rule_texts):
    return [parse_rule_list(t)[0].to_wire() for t in rule_texts]


def acls_wire(v4_in=(), v4_out=(), v6_in=(), v6_out=()):
    def family(inbound, outbound):
        return {"inbound": wire(inbound), "outbound": wire(outbound),
                "inbound_default": "deny", "outbound_default": "deny"}
    return {"v4": family(v4_in, v4_out), "v6": family(v6_in, v6_out)}


def test_default_rules_expand_members_per_family_including_self():
    proc = RuleProcessor()
    changes = proc.set_group("web", spec("web", {"a": ["192.168.1.1", "fd00::1"], "b": ["192.168.1.2"]}))
    assert set(changes) == {"a", "b"}
    assert changes["a"].to_wire() == acls_wire(
        v4_in=["192.168.1.1/32", "192.168.1.2/32"],
        v4_out=["0.0.0.0/0", "192.168.1.1/32", "192.168.1.2/32"],
        v6_in=["fd00::1/128"],
        v6_out=["::/0", "fd00::1/128"],
    )
    # Every member of a group gets the same ACLs.
    assert changes["b"] == changes["a"]
    for family in ("v4", "v6"):
        for direction in ("inbound", "outbound"):
            for rule in changes["a"].to_wire()[family][direction]:
                assert rule["group"] is None and rule["cidr"]


def test_union_of_groups_with_ports_and_cidrs():
    proc = RuleProcessor()
    proc.set_group("ops", spec("ops", {"o1": ["10.0.0.1"]}, inbound="group:ops", outbound="0.0.0.0/0"))
    changes = proc.set_group("web", spec(
        "web", {"w1": ["192.168.1.1"], "o1": ["10.0.0.1"]},
        inbound="0.0.0.0/0 tcp 80; group:ops tcp 8000-8080; 2001:db8::/32 udp 53",
        outbound="group:web"))
    # o1 is in both groups: the union; w1 only web's rules.
    assert changes["o1"].to_wire() == acls_wire(
        v4_in=["0.0.0.0/0 tcp 80", "10.0.0.1/32", "10.0.0.1/32 tcp 8000-8080"],
        v4_out=["0.0.0.0/0", "10.0.0.1/32", "192.168.1.1/32"],
        v6_in=["2001:db8::/32 udp 53"],
    )
    assert changes["w1"].to_wire() == acls_wire(
        v4_in=["0.0.0.0/0 tcp 80", "10.0.0.1/32 tcp 8000-8080"],
        v4_out=["10.0.0.1/32", "192.168.1.1/32"],
        v6_in=["2001:db8::/32 udp 53"],
    )


def test_duplicate_rules_across_groups_are_merged():
    proc = RuleProcessor()
    proc.set_group("a", spec("a", {"e": ["10.0.0.1"]}, inbound="0.0.0.0/0 tcp 22", outbound=""))
    changes = proc.set_group("b", spec("b", {"e": ["10.0.0.1"]}, inbound="0.0.0.0/0 tcp 22; 0.0.0.0/0 tcp 22",
                                       outbound=""))
    assert "e" not in changes  # union unchanged: nothing to publish
    assert proc.acls["e"].to_wire() == acls_wire(v4_in=["0.0.0.0/0 tcp 22"])


@pytest.mark.parametrize("rule_text, v4, v6", [
    ("group:g icmp", "10.0.0.1/32 icmp", "fd00::1/128 icmpv6"),
    ("group:g icmp 8", "10.0.0.1/32 icmp 8", "fd00::1/128 icmpv6 128"),
    ("group:g icmp 0/0", "10.0.0.1/32 icmp 0/0", "fd00::1/128 icmpv6 129/0"),
    ("group:g icmp 3/1", "10.0.0.1/32 icmp 3/1", None),      # codes differ between families
    ("group:g icmp 13", "10.0.0.1/32 icmp 13", None),        # timestamp: no ICMPv6 counterpart
    ("group:g icmpv6", None, "fd00::1/128 icmpv6"),
    ("group:g icmpv6 135", None, "fd00::1/128 icmpv6 135"),
    ("group:g 47", "10.0.0.1/32 47", "fd00::1/128 47"),
    ("group:g udp 53", "10.0.0.1/32 udp 53", "fd00::1/128 udp 53"),
    ("::/0 icmp", None, "::/0 icmpv6"),
    ("0.0.0.0/0 icmpv6", None, None),
])
def test_icmp_and_protocols_per_family(rule_text, v4, v6):
    proc = RuleProcessor()
    changes = proc.set_group("g", spec("g", {"e": ["10.0.0.1", "fd00::1"]}, inbound=rule_text, outbound=""))
    acls = changes["e"].to_wire()
    assert acls["v4"]["inbound"] == (wire([v4]) if v4 else [])
    assert acls["v6"]["inbound"] == (wire([v6]) if v6 else [])


def test_rule_for_family_keeps_rule_objects_valid():
    rule = rule_for_family(Rule(group="g", protocol="icmp", icmp_type=8, icmp_code=0), 6)
    assert rule == Rule(group="g", protocol="icmpv6", icmp_type=128, icmp_code=0)


def test_reference_to_unknown_group_expands_to_nothing_until_it_appears():
    proc = RuleProcessor()
    changes = proc.set_group("web", spec("web", {"w": ["10.0.0.1"]}, inbound="group:ops tcp 22", outbound=""))
    assert changes["w"] == EMPTY_ACLS and proc.acls["w"] == EMPTY_ACLS
    changes = proc.set_group("ops", spec("ops", {"o": ["10.0.0.9"]}, inbound="", outbound=""))
    assert changes["w"].to_wire() == acls_wire(v4_in=["10.0.0.9/32 tcp 22"])
    assert changes["o"] == EMPTY_ACLS


def test_bad_rule_is_skipped_once_logged_and_rest_of_group_stands(caplog):
    msg = {"type": "GROUPUPDATE", "group": "web", "members": {"w": ["10.0.0.1"]},
           "rules": {"inbound": [{"group": None, "cidr": "10.0.0.0/8", "protocol": "tcp", "port": 99999},
                                 {"group": None, "cidr": "0.0.0.0/0", "protocol": "tcp", "port": 80}],
                     "outbound": [{"group": "web", "cidr": "1.2.3.4/32", "protocol": None, "port": None}],
                     "inbound_default": "deny", "outbound_default": "deny"}}
    from calico.acl_manager.network_store import BadRuleReporter
    reporter = BadRuleReporter()
    with caplog.at_level(logging.DEBUG, logger="calico.acl_manager"):
        group = parse_group_update(msg, reporter)
        parse_group_update(msg, reporter)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per bad rule, not repeated on the second announcement
    assert "group web: inbound rule" in warnings[0] and "99999" in warnings[0]
    assert "group web: outbound rule" in warnings[1]
    proc = RuleProcessor()
    assert proc.set_group("web", group)["w"].to_wire() == acls_wire(v4_in=["0.0.0.0/0 tcp 80"])


def big_cluster():
    """Three groups of 4 with default rules; 'ops' is referenced by 'db'."""
    proc = RuleProcessor()
    proc.set_group("web", spec("web", {f"w{i}": [f"10.0.1.{i}"] for i in range(4)}))
    proc.set_group("db", spec("db", {f"d{i}": [f"10.0.2.{i}"] for i in range(4)},
                              inbound="group:db; group:ops tcp 5432", outbound="group:db"))
    proc.set_group("ops", spec("ops", {f"o{i}": [f"10.0.3.{i}"] for i in range(4)}))
    return proc


def test_join_recomputes_only_the_group_and_publishes_only_changes():
    proc = big_cluster()
    web_before = proc.acls["w0"]
    members = dict(proc.groups["ops"].members, o9=("10.0.3.9",))
    changes = proc.set_group("ops", spec("ops", members))
    # ops members (their group:ops rules grew) and db members (group:ops tcp 5432).
    assert set(changes) == {f"o{i}" for i in range(4)} | {"o9"} | {f"d{i}" for i in range(4)}
    assert proc.recomputed == 9
    assert proc.acls["w0"] is web_before
    assert "10.0.3.9/32 tcp 5432" in [str(r) for r in changes["d0"].v4_inbound]


def test_join_of_group_nobody_references_touches_only_the_newcomer():
    proc = RuleProcessor()
    proc.set_group("g", spec("g", {"a": ["10.0.0.1"], "b": ["10.0.0.2"]}, inbound="0.0.0.0/0 tcp 80", outbound=""))
    changes = proc.set_group("g", spec("g", {"a": ["10.0.0.1"], "b": ["10.0.0.2"], "c": ["10.0.0.3"]},
                                       inbound="0.0.0.0/0 tcp 80", outbound=""))
    assert list(changes) == ["c"]
    assert proc.recomputed == 1


def test_unchanged_group_and_unchanged_acls_are_not_republished():
    proc = big_cluster()
    assert proc.set_group("web", spec("web", {f"w{i}": [f"10.0.1.{i}"] for i in range(4)})) == {}
    # Rules reordered and duplicated: same ACLs, so nothing to publish.
    changes = proc.set_group("db", spec("db", {f"d{i}": [f"10.0.2.{i}"] for i in range(4)},
                                        inbound="group:ops tcp 5432; group:db; group:db", outbound="group:db"))
    assert changes == {}
    # An address change of a member of a group nobody names (web names itself: its members change).
    members = dict(proc.groups["web"].members, w3=("10.0.1.33",))
    changes = proc.set_group("web", spec("web", members))
    assert set(changes) == {"w0", "w1", "w2", "w3"}


def test_leaving_every_group_publishes_empty_acls_once_then_forgets():
    proc = big_cluster()
    members = {ep: ips for ep, ips in proc.groups["web"].members.items() if ep != "w3"}
    changes = proc.set_group("web", spec("web", members))
    assert changes["w3"] == EMPTY_ACLS
    assert EMPTY_ACLS.to_wire() == acls_wire()
    assert proc.acls_for("w3") is None
    assert [r.cidr for r in changes["w0"].v4_inbound] == ["10.0.1.0/32", "10.0.1.1/32", "10.0.1.2/32"]


def test_group_deletion_by_empty_members_and_by_none():
    proc = big_cluster()
    changes = proc.set_group("ops", spec("ops", {}))
    assert {ep for ep, acls in changes.items() if acls == EMPTY_ACLS} == {f"o{i}" for i in range(4)}
    # db's rule naming ops expands to nothing now.
    assert [str(r) for r in changes["d0"].v4_inbound] == [f"10.0.2.{i}/32" for i in range(4)]
    changes = proc.set_group("db", None)
    assert set(changes) == {f"d{i}" for i in range(4)}
    assert sorted(proc.acls) == [f"w{i}" for i in range(4)]
    assert proc.set_group("db", None) == {}


def test_endpoint_leaving_one_of_two_groups_keeps_the_other():
    proc = RuleProcessor()
    proc.set_group("a", spec("a", {"e": ["10.0.0.1"]}, inbound="0.0.0.0/0 tcp 22", outbound=""))
    proc.set_group("b", spec("b", {"e": ["10.0.0.1"]}, inbound="0.0.0.0/0 tcp 80", outbound=""))
    changes = proc.set_group("b", spec("b", {"f": ["10.0.0.2"]}, inbound="0.0.0.0/0 tcp 80", outbound=""))
    assert changes["e"].to_wire() == acls_wire(v4_in=["0.0.0.0/0 tcp 22"])


def test_incremental_equals_from_scratch():
    proc = big_cluster()
    members = dict(proc.groups["ops"].members, w1=("10.0.1.1",))
    proc.set_group("ops", spec("ops", members))
    proc.set_group("web", spec("web", {"w0": ["10.0.1.0"], "w1": ["10.0.1.1"]}, inbound="group:ops icmp"))
    fresh = RuleProcessor()
    fresh.load(proc.groups.values())
    assert fresh.acls == proc.acls


def test_allow_default_from_any_group_wins_in_the_union():
    proc = RuleProcessor()
    proc.set_group("a", GroupSpec("a", {"e": ("10.0.0.1",)}, inbound_default="allow"))
    changes = proc.set_group("b", GroupSpec("b", {"e": ("10.0.0.1",)}))
    assert changes == {}
    assert proc.acls["e"].to_wire()["v4"]["inbound_default"] == "allow"
    assert proc.acls["e"].to_wire()["v6"]["outbound_default"] == "deny"


def test_batch_update_equals_one_by_one_and_reports_each_endpoint_once():
    specs = {
        "web": spec("web", {"w1": ["10.0.1.1"], "both": ["10.0.9.9"]}, inbound="group:web; group:db tcp 80"),
        "db": spec("db", {"d1": ["10.0.2.1"], "both": ["10.0.9.9"]}, inbound="group:web tcp 5432"),
    }
    one_by_one = RuleProcessor()
    for name, group in specs.items():
        one_by_one.set_group(name, group)
    batched = RuleProcessor()
    changes = batched.update(specs)
    assert batched.acls == one_by_one.acls
    assert set(changes) == {"w1", "d1", "both"} and batched.recomputed == 3
    # A batch deleting one group and changing another.
    changes = batched.update({"db": None, "web": spec("web", {"w1": ["10.0.1.1"]})})
    assert changes["d1"] == EMPTY_ACLS and changes["both"] == EMPTY_ACLS
    assert [str(r) for r in changes["w1"].v4_inbound] == ["10.0.1.1/32"]
