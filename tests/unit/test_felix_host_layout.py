"""The whole desired state of one dataplane pass, assembled from endpoint layouts (pure; no kernel)."""

from calico.common.rules import Rule
from calico.felix import host_layout
from calico.felix.ipsets import HASH_NET, SetSpec, group_set
from calico.felix.state import AclRules, Acls, EndpointSpec

ANYWHERE = Acls(AclRules((Rule(cidr="0.0.0.0/0"),), (Rule(group="web"),)))


def spec(eid, n, acls=ANYWHERE, v6=False):
    addrs = (f"10.0.0.{n}",) + ((f"fd00::{n}",) if v6 else ())
    return EndpointSpec(eid, f"02:00:00:00:00:{n:02x}", addrs, acls=acls)


def test_a_refused_endpoint_is_laid_out_fail_closed_whatever_its_rules_allow():
    refused = spec("bad", 1, v6=True)
    layout = host_layout.closed_layout(refused, (4, 6))
    assert layout.sets == () and layout.groups == frozenset()
    assert layout.chains == {4: {"felix-from-bad": ("-j DROP",), "felix-to-bad": ("-j DROP",)},
                             6: {"felix-from-bad": ("-j DROP",), "felix-to-bad": ("-j DROP",)}}
    assert host_layout.endpoint_layout(refused, (4, 6)).chains[4]["felix-to-bad"] != ("-j DROP",)


def test_an_open_layout_names_its_groups_and_holds_only_its_own_sets():
    layout = host_layout.endpoint_layout(spec("a", 1), (4, 6))
    assert layout.groups == {("web", 4)}  # no IPv6 address: no IPv6 chains, so no IPv6 group set
    assert [s.set_type for s in layout.sets] == [HASH_NET] and not layout.sets[0].name.startswith("felix-4g-")
    assert set(layout.chains) == {4}
    assert any("--match-set felix-4g-web dst" in rule for rule in layout.chains[4]["felix-from-a"])


def test_the_pass_creates_endpoint_shared_and_cluster_sets_and_dispatches_by_interface():
    layouts = [host_layout.endpoint_layout(spec(eid, n), (4, 6)) for eid, n in (("zz", 1), ("aa", 2))]
    shared = {s.name: s for s in [group_set("web", 4, {"10.1.0.1"})]}
    pools = {"felix-pools4": SetSpec("felix-pools4", HASH_NET, 4, frozenset({"10.0.0.0/16"}))}
    desired = host_layout.desired_state(layouts, (4, 6), "DROP", shared, pools)
    own = layouts[0].sets[0].name  # both endpoints' rules hold the same CIDR: one set
    assert list(desired.sets) == [own, "felix-4g-web", "felix-pools4"]
    assert desired.chains[4]["felix-FROM-ENDPOINT"] == ("-i tapaa -g felix-from-aa", "-i tapzz -g felix-from-zz",
                                                       "-j DROP")
    assert desired.chains[6]["felix-FROM-ENDPOINT"] == ("-j DROP",)  # neither has an IPv6 address
    assert "felix-from-aa" not in desired.chains[6]


def test_cluster_input_rules_come_first_in_felix_input_of_their_family_only():
    check = ("-p ipv4 -m set ! --match-set felix-hosts4 src -j DROP",)
    desired = host_layout.desired_state([], (4, 6), "DROP", input_rules={4: check, 6: ()})
    assert desired.chains[4]["felix-INPUT"] == check + ("-i tap+ -g felix-TO-HOST",)
    assert desired.chains[6]["felix-INPUT"] == ("-i tap+ -g felix-TO-HOST",)
