"""The ACL manager's pure core: per-endpoint ACLs from groups.

Group rules stay references to the group (in both families): an endpoint's
ACLs depend only on its own groups' rules, never on who is in a group
(members travel separately, ``test_acl_memberships``)."""

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


def test_default_rules_name_the_group_in_both_families_and_expand_no_member():
    proc = RuleProcessor()
    changes = proc.set_group("web", spec("web", {"a": ["192.168.1.1", "fd00::1"], "b": ["192.168.1.2"]}))
    assert set(changes) == {"a", "b"}
    assert changes["a"].to_wire() == acls_wire(
        v4_in=["group:web"],
        v4_out=["0.0.0.0/0", "group:web"],
        v6_in=["group:web"],
        v6_out=["::/0", "group:web"],
    )
    # Every member of a group gets the same ACLs, and no member's address is in them.
    assert changes["b"] == changes["a"]
    assert b"192.168.1" not in changes["a"].wire_json and b"fd00::1" not in changes["a"].wire_json
    assert changes["a"].to_wire()["v4"]["inbound"] == [{"group": "web", "cidr": None, "protocol": None,
                                                        "port": None}]


def test_union_of_groups_with_ports_and_cidrs():
    proc = RuleProcessor()
    proc.set_group("ops", spec("ops", {"o1": ["10.0.0.1"]}, inbound="group:ops", outbound="0.0.0.0/0"))
    changes = proc.set_group("web", spec(
        "web", {"w1": ["192.168.1.1"], "o1": ["10.0.0.1"]},
        inbound="0.0.0.0/0 tcp 80; group:ops tcp 8000-8080; 2001:db8::/32 udp 53",
        outbound="group:web"))
    # o1 is in both groups: the union; w1 only web's rules.  CIDR rules sort
    # before group rules; group rules apply to both families.
    assert changes["o1"].to_wire() == acls_wire(
        v4_in=["0.0.0.0/0 tcp 80", "group:ops", "group:ops tcp 8000-8080"],
        v4_out=["0.0.0.0/0", "group:web"],
        v6_in=["2001:db8::/32 udp 53", "group:ops", "group:ops tcp 8000-8080"],
        v6_out=["group:web"],
    )
    assert changes["w1"].to_wire() == acls_wire(
        v4_in=["0.0.0.0/0 tcp 80", "group:ops tcp 8000-8080"],
        v4_out=["group:web"],
        v6_in=["2001:db8::/32 udp 53", "group:ops tcp 8000-8080"],
        v6_out=["group:web"],
    )


def test_duplicate_rules_across_groups_are_merged():
    proc = RuleProcessor()
    proc.set_group("a", spec("a", {"e": ["10.0.0.1"]}, inbound="0.0.0.0/0 tcp 22", outbound=""))
    changes = proc.set_group("b", spec("b", {"e": ["10.0.0.1"]}, inbound="0.0.0.0/0 tcp 22; 0.0.0.0/0 tcp 22",
                                       outbound=""))
    assert "e" not in changes  # union unchanged: nothing to publish
    assert proc.acls["e"].to_wire() == acls_wire(v4_in=["0.0.0.0/0 tcp 22"])


@pytest.mark.parametrize("rule_text, v4, v6", [
    ("group:g icmp", "group:g icmp", "group:g icmpv6"),
    ("group:g icmp 8", "group:g icmp 8", "group:g icmpv6 128"),
    ("group:g icmp 0/0", "group:g icmp 0/0", "group:g icmpv6 129/0"),
    ("group:g icmp 3/1", "group:g icmp 3/1", None),      # codes differ between families
    ("group:g icmp 13", "group:g icmp 13", None),        # timestamp: no ICMPv6 counterpart
    ("group:g icmpv6", None, "group:g icmpv6"),
    ("group:g icmpv6 135", None, "group:g icmpv6 135"),
    ("group:g 47", "group:g 47", "group:g 47"),
    ("group:g udp 53", "group:g udp 53", "group:g udp 53"),
    ("group:g tcp 8000-8080", "group:g tcp 8000-8080", "group:g tcp 8000-8080"),
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


def test_reference_to_unknown_group_is_kept_and_its_appearance_changes_no_referrer():
    proc = RuleProcessor()
    changes = proc.set_group("web", spec("web", {"w": ["10.0.0.1"]}, inbound="group:ops tcp 22", outbound=""))
    assert changes["w"].to_wire() == acls_wire(v4_in=["group:ops tcp 22"], v6_in=["group:ops tcp 22"])
    assert proc.referenced == {"ops"}
    changes = proc.set_group("ops", spec("ops", {"o": ["10.0.0.9"]}, inbound="", outbound=""))
    assert set(changes) == {"o"}  # w's ACLs already name ops: nothing to republish
    assert changes["o"] == EMPTY_ACLS
    assert proc.acls["w"].to_wire() == acls_wire(v4_in=["group:ops tcp 22"], v6_in=["group:ops tcp 22"])


def test_group_rules_sort_after_cidr_rules_then_by_group_name():
    proc = RuleProcessor()
    changes = proc.set_group("g", spec("g", {"e": ["10.0.0.1"]},
                                       inbound="group:zz; 10.0.0.0/8; group:aa tcp 80; group:aa; group:aa udp 53",
                                       outbound=""))
    assert [str(r) for r in changes["e"].v4_inbound] == [
        "10.0.0.0/8", "group:aa", "group:aa tcp 80", "group:aa udp 53", "group:zz"]
    assert [str(r) for r in changes["e"].v6_inbound] == ["group:aa", "group:aa tcp 80", "group:aa udp 53",
                                                         "group:zz"]


def test_referenced_is_the_groups_some_known_groups_rules_name():
    proc = big_cluster()
    assert proc.referenced == {"web", "db", "ops"}
    proc.set_group("db", None)  # the only group naming ops
    assert proc.referenced == {"web", "ops"}  # ops still names itself
    proc.set_group("ops", spec("ops", {}))
    assert proc.referenced == {"web"}


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


def test_join_recomputes_and_publishes_only_the_newcomer_even_into_a_named_group():
    proc = big_cluster()
    before = dict(proc.acls)
    members = dict(proc.groups["ops"].members, o9=("10.0.3.9",))
    changes = proc.set_group("ops", spec("ops", members))
    # Neither the other ops members (group:ops rules) nor db's (group:ops tcp 5432) change.
    assert list(changes) == ["o9"]
    assert proc.recomputed == 1
    assert changes["o9"] == proc.acls["o0"]
    assert all(proc.acls[ep] is acls for ep, acls in before.items())
    assert [str(r) for r in proc.acls["d0"].v4_inbound] == ["group:db", "group:ops tcp 5432"]


def test_join_into_a_group_of_thousands_costs_one_endpoint():
    proc = RuleProcessor()
    big = {f"m{i}": [f"10.1.{i // 250}.{i % 250 + 1}"] for i in range(4000)}
    proc.set_group("big", spec("big", big))
    proc.set_group("client", spec("client", {"c": ["10.2.0.1"]}, inbound="group:big tcp 443", outbound=""))
    changes = proc.set_group("big", spec("big", dict(big, joiner=["10.9.9.9"])))
    assert list(changes) == ["joiner"] and proc.recomputed == 1
    assert changes["joiner"].rule_count == 6  # the default rules: 2 inbound, 4 outbound


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
    # A member's address changes: nobody's ACLs change (the address travels
    # as a membership change instead).
    members = dict(proc.groups["web"].members, w3=("10.0.1.33",))
    assert proc.set_group("web", spec("web", members)) == {}
    # A rule change reaches every member of the group, and only them.
    changes = proc.set_group("web", spec("web", members, inbound="group:web tcp 80"))
    assert set(changes) == {"w0", "w1", "w2", "w3"}
    assert [str(r) for r in changes["w0"].v4_inbound] == ["group:web tcp 80"]


def test_leaving_every_group_publishes_empty_acls_once_then_forgets():
    proc = big_cluster()
    members = {ep: ips for ep, ips in proc.groups["web"].members.items() if ep != "w3"}
    changes = proc.set_group("web", spec("web", members))
    assert changes == {"w3": EMPTY_ACLS}  # the others' ACLs do not depend on who is in web
    assert EMPTY_ACLS.to_wire() == acls_wire()
    assert proc.acls_for("w3") is None
    assert proc.set_group("web", spec("web", members)) == {}  # once
    assert [str(r) for r in proc.acls["w0"].v4_inbound] == ["group:web"]


def test_group_deletion_by_empty_members_and_by_none():
    proc = big_cluster()
    changes = proc.set_group("ops", spec("ops", {}))
    assert changes == {f"o{i}": EMPTY_ACLS for i in range(4)}
    # db's rule still names ops (now empty): db's ACLs are unchanged.
    assert [str(r) for r in proc.acls["d0"].v4_inbound] == ["group:db", "group:ops tcp 5432"]
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
    # In both groups: the union of their rules.
    assert [str(r) for r in batched.acls["both"].v4_inbound] == ["group:db tcp 80", "group:web",
                                                                   "group:web tcp 5432"]
    # A batch deleting one group and changing another's rules (back to the defaults).
    changes = batched.update({"db": None, "web": spec("web", {"w1": ["10.0.1.1"]})})
    assert set(changes) == {"d1", "both", "w1"}
    assert changes["d1"] == EMPTY_ACLS and changes["both"] == EMPTY_ACLS
    assert [str(r) for r in changes["w1"].v4_inbound] == ["group:web"]
