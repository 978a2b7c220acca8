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


def test_acls_from_wire_skips_bad_group_and_wrong_family_rules():
    acls, problems = acls_from_wire({
        "v4": {"inbound": [{"cidr": "10.0.0.300"},                   # bad address
                           {"cidr": "10.0.0.2", "protocol": "tcp", "port": 99999},  # bad port
                           {"group": "web", "cidr": None},          # group rule: not in an ACL
                           {"cidr": "fd00::1"},                      # v6 in the v4 list
                           "not a rule",
                           {"cidr": "10.0.0.3", "colour": "blue"},  # unknown field
                           {"cidr": "10.0.0.4", "protocol": "tcp", "port": 22}],
               "outbound": []},
        "v6": {"inbound": [{"cidr": "10.0.0.5"}], "outbound": [{"cidr": "fd00::2"}]},
    })
    assert acls.v4.inbound == (Rule(cidr="10.0.0.4/32", protocol="tcp", port=22),)
    assert acls.v6.inbound == ()
    assert acls.v6.outbound == (Rule(cidr="fd00::2/128"),)
    assert len(problems) == 7
    assert problems[0].startswith("v4 inbound rule 0 ") and "10.0.0.300" in problems[0]
    assert "group rules are not allowed" in problems[2]
    assert "IPv6 CIDR in the v4 list" in problems[3]
    assert problems[6].startswith("v6 inbound rule 0 ")


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
