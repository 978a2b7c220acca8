"""Felix's bookkeeping: endpoint table, ACLUPDATE parsing, resync counting."""

from calico.common import messages
from calico.common.rules import Rule
from calico.felix.endpoints import Change, EndpointTable, Resync, acls_from_wire, spec_from_message
from calico.felix.state import AclRules, Acls


def endpoint_msg(endpoint_id="ep1", addrs=("192.168.1.1",), mac="AA:BB:CC:DD:EE:01", state="enabled"):
    raw = messages.encode(messages.make(messages.ENDPOINTCREATED, endpoint_id=endpoint_id, mac=mac, state=state,
                                        addrs=[{"addr": a} for a in addrs]))
    return messages.decode_request(raw, {messages.ENDPOINTCREATED})


def test_spec_from_message_is_canonical():
    spec = spec_from_message(endpoint_msg(addrs=("fd00::0001", "192.168.1.2", "192.168.1.1", "192.168.1.2")))
    assert spec.mac == "aa:bb:cc:dd:ee:01"
    assert spec.addrs == ("192.168.1.1", "192.168.1.2", "fd00::1")
    assert spec.enabled and spec.acls is None
    assert spec.interface == "tapep1"
    assert not spec_from_message(endpoint_msg(state="disabled")).enabled


def test_reordered_addresses_are_not_a_change():
    table = EndpointTable()
    assert table.upsert(spec_from_message(endpoint_msg(addrs=("192.168.1.1", "192.168.1.2")))) is Change.CREATED
    assert table.upsert(spec_from_message(endpoint_msg(addrs=("192.168.1.2", "192.168.1.1")))) is Change.UNCHANGED


def test_update_keeps_acls_and_reports_changes():
    table = EndpointTable()
    table.upsert(spec_from_message(endpoint_msg()))
    acls = Acls(v4=AclRules(inbound=(Rule(cidr="10.0.0.0/8"),)))
    assert table.set_acls("ep1", acls)
    assert not table.set_acls("ep1", acls)
    assert table.upsert(spec_from_message(endpoint_msg(state="disabled"))) is Change.UPDATED
    spec = table.desired()["ep1"]
    assert spec.acls == acls and not spec.enabled and not spec.open_for_traffic
    assert table.without_acls() == []


def test_acls_for_unknown_endpoint_are_not_recorded():
    table = EndpointTable()
    assert not table.set_acls("nope", Acls())
    assert "nope" not in table


def test_desired_is_a_snapshot():
    table = EndpointTable()
    table.upsert(spec_from_message(endpoint_msg()))
    snapshot = table.desired()
    table.remove("ep1")
    assert list(snapshot) == ["ep1"] and len(table) == 0
    assert not table.remove("ep1")


def test_acls_from_wire_keeps_valid_rules():
    acls, problems = acls_from_wire({
        "v4": {"inbound": [{"cidr": "10.0.0.1", "protocol": "tcp", "port": 80},
                           {"cidr": "10.0.0.0/8", "protocol": "icmp", "icmp_type": 8}],
               "outbound": [{"cidr": "0.0.0.0/0"}],
               "inbound_default": "deny", "outbound_default": "deny"},
        "v6": {"inbound": [{"cidr": "fd00::/64", "protocol": "udp", "port": [1000, 2000]}], "outbound": []},
    })
    assert problems == []
    assert acls.v4.inbound == (Rule(cidr="10.0.0.1/32", protocol="tcp", port=80),
                               Rule(cidr="10.0.0.0/8", protocol="icmp", icmp_type=8))
    assert acls.v4.outbound == (Rule(cidr="0.0.0.0/0"),)
    assert acls.v6.inbound == (Rule(cidr="fd00::/64", protocol="udp", port=(1000, 2000)),)
    assert acls.v6.outbound == ()


def test_acls_from_wire_skips_bad_and_wrong_family_rules():
    acls, problems = acls_from_wire({
        "v4": {"inbound": [{"cidr": "10.0.0.300"},                   # bad address
                           {"cidr": "10.0.0.2", "protocol": "tcp", "port": 99999},  # bad port
                           {"group": "web", "cidr": "10.0.0.9"},    # both a group and a CIDR
                           {"cidr": "fd00::1"},                      # v6 in the v4 list
                           "not a rule",
                           {"cidr": "10.0.0.3", "colour": "blue"},  # unknown field
                           {"group": "bad name"},                    # bad group name
                           {"cidr": "10.0.0.4", "protocol": "tcp", "port": 22}],
               "outbound": []},
        "v6": {"inbound": [{"cidr": "10.0.0.5"}], "outbound": [{"cidr": "fd00::2"}]},
    })
    assert acls.v4.inbound == (Rule(cidr="10.0.0.4/32", protocol="tcp", port=22),)
    assert acls.v6.inbound == ()
    assert acls.v6.outbound == (Rule(cidr="fd00::2/128"),)
    assert acls.groups == frozenset()
    assert len(problems) == 8
    assert problems[0].startswith("v4 inbound rule 0 ") and "10.0.0.300" in problems[0]
    assert problems[2].startswith("v4 inbound rule 2 ") and "exactly one of group and cidr" in problems[2]
    assert "IPv6 CIDR in the v4 list" in problems[3]
    assert problems[6].startswith("v4 inbound rule 6 ") and "bad group name" in problems[6]
    assert problems[7].startswith("v6 inbound rule 0 ")


def test_acls_from_wire_keeps_group_rules_in_either_family():
    acls, problems = acls_from_wire({
        "v4": {"inbound": [{"group": "web"}, {"group": "db", "protocol": "tcp", "port": 5432}],
               "outbound": [{"group": "web", "protocol": "icmp", "icmp_type": 8, "icmp_code": 0}]},
        "v6": {"inbound": [{"group": "web", "cidr": None}], "outbound": [{"group": "ops", "protocol": "icmpv6"}]},
    })
    assert problems == []
    assert acls.v4.inbound == (Rule(group="web"), Rule(group="db", protocol="tcp", port=5432))
    assert acls.v4.outbound == (Rule(group="web", protocol="icmp", icmp_type=8, icmp_code=0),)
    assert acls.v6.inbound == (Rule(group="web"),)
    assert acls.v6.outbound == (Rule(group="ops", protocol="icmpv6"),)
    assert acls.v4.groups == {"web", "db"} and acls.v6.groups == {"web", "ops"}
    assert acls.groups == {"web", "db", "ops"}


def test_acls_name_no_group_when_they_have_only_cidr_rules():
    assert Acls(v4=AclRules(inbound=(Rule(cidr="10.0.0.0/8"),))).groups == frozenset()
    assert Acls().groups == frozenset()


def test_desired_hands_over_endpoints_naming_an_unknown_group_without_acls():
    table = EndpointTable()
    for eid, addr in (("cidr", "192.168.1.1"), ("web", "192.168.1.2"), ("both", "192.168.1.3"),
                      ("waiting", "192.168.1.4")):
        table.upsert(spec_from_message(endpoint_msg(endpoint_id=eid, addrs=(addr,))))
    cidr_only = Acls(v4=AclRules(inbound=(Rule(cidr="10.0.0.0/8"),)))
    web = Acls(v4=AclRules(inbound=(Rule(group="web"),)))
    both = Acls(v4=AclRules(inbound=(Rule(group="web"),)), v6=AclRules(outbound=(Rule(group="db"),)))
    table.set_acls("cidr", cidr_only)
    table.set_acls("web", web)
    table.set_acls("both", both)
    desired = table.desired(set())
    assert {k: v.acls for k, v in desired.items()} == {"cidr": cidr_only, "web": None, "both": None,
                                                      "waiting": None}
    desired = table.desired({"web"})
    assert {k: v.acls for k, v in desired.items()} == {"cidr": cidr_only, "web": web, "both": None,
                                                      "waiting": None}
    desired = table.desired({"web": frozenset(), "db": frozenset({"10.0.0.1"})}.keys())  # as the agent passes them
    assert desired["both"].acls == both and desired["web"].acls == web
    # Without known groups (or as the table holds it), nothing is withheld.
    assert table.desired()["web"].acls == web and table.get("web").acls == web
    assert desired["web"].addrs == ("192.168.1.2",) and desired["web"].enabled


def test_default_allow_is_allow_all_and_missing_family_allows_nothing():
    acls, problems = acls_from_wire({"v4": {"inbound": [{"cidr": "10.0.0.1"}], "outbound": [],
                                            "inbound_default": "deny", "outbound_default": "allow"}})
    assert problems == []
    assert acls.v4.outbound == (Rule(cidr="0.0.0.0/0"),)
    assert acls.v4.inbound == (Rule(cidr="10.0.0.1/32"),)
    assert acls.v6 == AclRules()
    acls, _ = acls_from_wire({"v6": {"inbound_default": "allow"}})
    assert acls.v6.inbound == (Rule(cidr="::/0"),) and acls.v6.outbound == ()


def test_duplicate_rules_collapse():
    acls, _ = acls_from_wire({"v4": {"inbound": [{"cidr": "10.0.0.1"}, {"cidr": "10.0.0.1/32"}]}})
    assert acls.v4.inbound == (Rule(cidr="10.0.0.1/32"),)


def test_resync_completes_on_distinct_announcements():
    resync = Resync("r1", "test")
    resync.announced("a", "a")
    assert not resync.complete  # no count yet
    resync.expected = 2
    resync.announced("a", "a")  # a retried message does not count twice
    assert not resync.complete
    resync.announced("b", "b")
    assert resync.complete
    assert Resync("r2", "test", expected=0).complete


def test_resync_stale_keeps_live_endpoints():
    resync = Resync("r1", "test", expected=1)
    resync.announced("a", "a")
    resync.live("c")
    resync.live("d")
    resync.destroyed("d")
    assert resync.stale(["a", "b", "c", "d"]) == ["b", "d"]
