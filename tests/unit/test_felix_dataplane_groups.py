"""The dataplane's shared group sets: one per (group, family) some open chain names (no kernel).

The real Dataplane and the real IpsetWriter (``ipset restore`` mode, its
input recorded instead of run); routes, iptables and the cluster writers are
recording fakes.  So what is asserted is the exact ``ipset restore`` input a
pass would feed the kernel, and the chains it would commit.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from calico.common.rules import Rule
from calico.felix import ipset_writer
from calico.felix.dataplane import Dataplane
from calico.felix.kernel_writes import WriteCounter
from calico.felix.state import AclRules, Acls, EndpointSpec


class Events(list):
    """What the pass did, in order: ("ipset", restore input) and ("iptables", version, chains)."""


class FakeRoutes:
    def __init__(self, missing: set[str]) -> None:
        self.missing = missing

    def sync(self, endpoints, unrouted=frozenset()):
        return self.missing & set(endpoints)

    def delete_unused(self): pass
    def forget(self): pass
    def close(self): pass


class FakeIptables:
    def __init__(self, version: int, events: Events) -> None:
        self.version, self.events = version, events

    def sync(self, chains):
        self.events.append(("iptables", self.version, dict(chains)))

    def forget(self): pass


class FakeCluster:
    def sets(self): return {}
    def input_rules(self, version): return ()
    def sync(self): pass
    def forget(self): pass
    def close(self): pass


@pytest.fixture
def dp():
    events = Events()

    def runner(argv, **kwargs):
        assert argv == ["ipset", "restore"]
        events.append(("ipset", kwargs["input"]))
        return subprocess.CompletedProcess(argv, 0, "", "")

    dataplane = Dataplane(ip_versions=(4, 6), ipset_mode=ipset_writer.RESTORE)
    if dataplane.versions != (4, 6):
        dataplane.close()
        pytest.skip("IPv6 is disabled in this kernel")
    dataplane.ipsets = ipset_writer.IpsetWriter(WriteCounter(), ipset_writer.RESTORE, runner=runner)
    dataplane.ipsets.kernel = {}  # an empty host; never read through netlink
    dataplane.routes = FakeRoutes(set())
    dataplane.iptables.writers = {v: FakeIptables(v, events) for v in (4, 6)}
    dataplane.cluster = FakeCluster()
    dataplane.events = events
    try:
        yield dataplane
    finally:
        dataplane.close()


def ipset_inputs(dp) -> list[str]:
    return [e[1] for e in dp.events if e[0] == "ipset"]


def last_chains(dp, version: int) -> dict:
    return [e[2] for e in dp.events if e[0] == "iptables" and e[1] == version][-1]


def content_name(set_type, version, *members):
    """The documented name of the set holding ``members`` (as ``ipset restore``
    spells them): felix-<4|6>s- and the first 19 hex characters of the sha256
    of the set type and the sorted members, one a line."""
    text = "\n".join([set_type, *sorted(members)])
    return f"felix-{version}s-{hashlib.sha256(text.encode()).hexdigest()[:19]}"


def spec(eid, n, v6=False, inbound=(), outbound=(), inbound6=(), outbound6=(), acls=True):
    addrs = (f"10.0.0.{n}",) + ((f"fd00::{n}",) if v6 else ())
    return EndpointSpec(eid, f"02:00:00:00:00:{n:02x}", addrs,
                        acls=Acls(AclRules(tuple(inbound), tuple(outbound)),
                                  AclRules(tuple(inbound6), tuple(outbound6))) if acls else None)


WEB = frozenset({"10.1.0.1", "10.1.0.2", "fd00:1::1"})
DB = frozenset({"10.2.0.1"})
# Big enough that one join or leave is an edit (a change of more than half a set's new size replaces it).
BIG = frozenset({f"10.1.0.{i}" for i in range(1, 11)} | {f"fd00:1::{i}" for i in range(1, 11)})


def two_endpoints():
    # a: IPv4 only, so its IPv6 rule naming ops needs no set; b: both families.
    a = spec("a", 1, inbound=[Rule(group="web")], inbound6=[Rule(group="ops")])
    b = spec("b", 2, v6=True, inbound6=[Rule(group="web", protocol="tcp", port=443)],
             outbound=[Rule(group="db")])
    return {"a": a, "b": b}


def test_one_set_per_group_and_family_that_an_open_endpoints_chain_names(dp):
    dp.apply(two_endpoints(), {"web": WEB, "db": DB, "ops": frozenset({"10.3.0.1"})})
    assert ipset_inputs(dp) == ["\n".join([
        "create felix-4g-db hash:net family inet",
        "add felix-4g-db 10.2.0.1/32",
        "create felix-4g-web hash:net family inet",
        "add felix-4g-web 10.1.0.1/32",
        "add felix-4g-web 10.1.0.2/32",
        "create felix-6g-web hash:net family inet6",
        "add felix-6g-web fd00:1::1/128",
    ]) + "\n"]


def test_chains_name_the_shared_sets(dp):
    dp.apply(two_endpoints(), {"web": WEB, "db": DB})
    assert "-m set --match-set felix-4g-web src -j RETURN" in last_chains(dp, 4)["felix-to-a"]
    assert "-m set --match-set felix-4g-db dst -j RETURN" in last_chains(dp, 4)["felix-from-b"]
    assert ("-p tcp -m multiport --dports 443 -m set --match-set felix-6g-web src -j RETURN"
            in last_chains(dp, 6)["felix-to-b"])


def test_a_join_is_one_ipset_add_and_no_chain_changes(dp):
    desired = two_endpoints()
    dp.apply(desired, {"web": BIG, "db": DB})
    chains = {v: last_chains(dp, v) for v in (4, 6)}
    dp.events.clear()
    dp.apply(desired, {"web": BIG | {"10.1.0.99"}, "db": DB})
    assert ipset_inputs(dp) == ["add felix-4g-web 10.1.0.99/32\n"]
    assert {v: last_chains(dp, v) for v in (4, 6)} == chains  # the iptables writer has nothing to do


def test_a_leave_is_one_ipset_del(dp):
    desired = two_endpoints()
    dp.apply(desired, {"web": BIG, "db": DB})
    dp.events.clear()
    dp.apply(desired, {"web": BIG - {"fd00:1::7"}, "db": DB})
    assert ipset_inputs(dp) == ["del felix-6g-web fd00:1::7/128\n"]


def test_a_group_set_losing_its_last_member_is_refilled_whole_rather_than_edited(dp):
    desired = two_endpoints()
    dp.apply(desired, {"web": WEB, "db": DB})
    dp.events.clear()
    dp.apply(desired, {"web": WEB - {"fd00:1::1"}, "db": DB})
    assert ipset_inputs(dp) == ["create felix-6g-web-t hash:net family inet6\n"
                                "swap felix-6g-web-t felix-6g-web\ndestroy felix-6g-web-t\n"]


def test_unchanged_groups_write_nothing_and_reuse_the_set_they_built(dp):
    built = []
    real_sync = dp.ipsets.sync

    def sync(wanted):
        built.append(wanted.get("felix-4g-web"))
        return real_sync(wanted)

    dp.ipsets.sync = sync
    desired = two_endpoints()
    groups = {"web": WEB, "db": DB}
    dp.apply(desired, groups)
    dp.events.clear()
    dp.apply(desired, dict(groups))  # the same address sets
    assert ipset_inputs(dp) == []
    assert built[1] is built[0]
    dp.apply(desired, {"web": frozenset(set(WEB)), "db": DB})  # equal, but a new object: rebuilt, still no write
    assert ipset_inputs(dp) == []
    assert built[2] == built[0] and built[2] is not built[0]


def test_a_set_no_open_chain_names_is_destroyed_after_the_chains_stop_naming_it(dp):
    desired = two_endpoints()
    dp.apply(desired, {"web": WEB, "db": DB})
    dp.events.clear()
    desired["b"] = spec("b", 2, v6=True, inbound6=[Rule(cidr="::/0")])  # names no group now
    dp.apply(desired, {"web": WEB})
    kinds = [(e[0], e[1]) if e[0] == "iptables" else e for e in dp.events]
    anywhere6 = content_name("hash:net", 6, "::/1", "8000::/1")
    assert kinds == [
        ("ipset", f"create {anywhere6} hash:net family inet6\nadd {anywhere6} 8000::/1\nadd {anywhere6} ::/1\n"),
        ("iptables", 4), ("iptables", 6),
        ("ipset", "destroy felix-4g-db\ndestroy felix-6g-web\n"),
    ]


def test_endpoints_with_the_default_rule_share_one_set_destroyed_once_no_chain_names_it(dp):
    anywhere = content_name("hash:net", 4, "0.0.0.0/1", "128.0.0.0/1")
    default = [Rule(cidr="0.0.0.0/0")]  # the seed's "out to anywhere"
    desired = {"a": spec("a", 1, outbound=default), "b": spec("b", 2, outbound=default)}
    dp.apply(desired)
    assert ipset_inputs(dp) == [f"create {anywhere} hash:net family inet\n"
                                f"add {anywhere} 0.0.0.0/1\nadd {anywhere} 128.0.0.0/1\n"]  # one set for both
    for eid in ("a", "b"):
        assert f"-m set --match-set {anywhere} dst -j RETURN" in last_chains(dp, 4)[f"felix-from-{eid}"]

    # a's rules change: a new set for a, taken into use by the chains; b's set is left as it is.
    dp.events.clear()
    tens = content_name("hash:net", 4, "10.0.0.0/8")
    desired["a"] = spec("a", 1, outbound=[Rule(cidr="10.0.0.0/8")])
    dp.apply(desired)
    assert ipset_inputs(dp) == [f"create {tens} hash:net family inet\nadd {tens} 10.0.0.0/8\n"]
    chains = last_chains(dp, 4)
    assert f"-m set --match-set {tens} dst -j RETURN" in chains["felix-from-a"]
    assert not any(anywhere in rule for rule in chains["felix-from-a"])
    assert f"-m set --match-set {anywhere} dst -j RETURN" in chains["felix-from-b"]

    # b follows: it takes a's set as it is, and the shared set no chain names any more goes after the commits.
    dp.events.clear()
    desired["b"] = spec("b", 2, outbound=[Rule(cidr="10.0.0.0/8")])
    dp.apply(desired)
    kinds = [(e[0], e[1]) if e[0] == "iptables" else e for e in dp.events]
    assert kinds == [("iptables", 4), ("iptables", 6), ("ipset", f"destroy {anywhere}\n")]
    chains = last_chains(dp, 4)
    assert f"-m set --match-set {tens} dst -j RETURN" in chains["felix-from-b"]
    assert not any(anywhere in rule for rules in chains.values() for rule in rules)


def test_fail_closed_and_interfaceless_endpoints_name_no_group_set(dp):
    dp.routes.missing = {"gone"}
    desired = {"closed": spec("closed", 3, acls=False),
               "gone": spec("gone", 4, inbound=[Rule(group="db")]),
               "off": EndpointSpec("off", "02:00:00:00:00:05", ("10.0.0.5",), enabled=False,
                                   acls=Acls(AclRules((Rule(group="web"),), ())))}
    dp.apply(desired, {"web": WEB, "db": DB})
    assert ipset_inputs(dp) == []
    assert last_chains(dp, 4)["felix-to-closed"] == ("-j DROP",)
    assert "felix-to-gone" not in last_chains(dp, 4)


def test_a_group_whose_members_are_not_given_gets_an_empty_set_never_a_wider_one(dp):
    dp.apply({"a": spec("a", 1, inbound=[Rule(group="web")])}, {})
    assert ipset_inputs(dp) == ["create felix-4g-web hash:net family inet\n"]
    dp.events.clear()
    dp.apply({"a": spec("a", 1, inbound=[Rule(group="web")])})  # groups left out altogether
    assert ipset_inputs(dp) == []


def test_a_long_group_name_gets_its_hashed_set_name(dp):
    dp.apply({"a": spec("a", 1, inbound=[Rule(group="frontend-web-servers-eu")])},
             {"frontend-web-servers-eu": frozenset({"10.1.0.1"})})
    assert ipset_inputs(dp) == ["create felix-4h-8cdb4031d714e37859a hash:net family inet\n"
                                "add felix-4h-8cdb4031d714e37859a 10.1.0.1/32\n"]
    assert "-m set --match-set felix-4h-8cdb4031d714e37859a src -j RETURN" in last_chains(dp, 4)["felix-to-a"]


def test_a_group_named_like_another_groups_temporary_twin_keeps_its_set(dp):
    """Groups web and web-t (a valid group name): refilling web's set whole
    (fill <name>-t and swap) must leave web-t's set, which b's chain names, alone."""
    desired = {"a": spec("a", 1, inbound=[Rule(group="web")]), "b": spec("b", 2, inbound=[Rule(group="web-t")])}
    dp.apply(desired, {"web": frozenset({"10.1.0.1", "10.1.0.2"}), "web-t": frozenset({"10.7.0.1"})})
    dp.events.clear()
    dp.apply(desired, {"web": frozenset({"10.1.0.8", "10.1.0.9"}), "web-t": frozenset({"10.7.0.1"})})
    restore = "\n".join(ipset_inputs(dp)).splitlines()
    b_set = [r for r in last_chains(dp, 4)["felix-to-b"] if "--match-set" in r][0].split()[3]
    assert f"destroy {b_set}" not in restore, restore
    assert not any(line.startswith(f"create {b_set} ") or line.startswith(f"swap {b_set} ") for line in restore)
