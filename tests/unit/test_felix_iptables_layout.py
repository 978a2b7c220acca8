"""Felix's iptables layout and the table plans made from it (pure; no kernel)."""

import hashlib

import pytest

from calico.common.rules import Rule
from calico.felix import host_layout
from calico.felix import iptables_layout as layout
from calico.felix import iptables_writer as writer
from calico.felix.state import AclRules, Acls, EndpointSpec

MAC = "02:00:00:00:00:0a"


def chains_for(endpoints, version=4, action="DROP"):
    """One family's filter table as a dataplane pass over these endpoints computes it."""
    layouts = [host_layout.endpoint_layout(spec, (4, 6)) for spec in endpoints]
    return host_layout.desired_state(layouts, (4, 6), action).chains[version]


def content_name(set_type, version, *members):
    """The documented name of the set holding ``members`` (as ``ipset restore``
    spells them): felix-<4|6>s- and the first 19 hex characters of the sha256
    of the set type and the sorted members, one a line."""
    text = "\n".join([set_type, *sorted(members)])
    return f"felix-{version}s-{hashlib.sha256(text.encode()).hexdigest()[:19]}"


ANYWHERE = content_name("hash:net", 4, "0.0.0.0/1", "128.0.0.0/1")  # 0.0.0.0/0, as its two halves


def open_endpoint(eid="web-1-abcdefgh", addrs=("10.0.0.1",), inbound=(), outbound=(), inbound6=(), outbound6=()):
    return EndpointSpec(eid, MAC, addrs, acls=Acls(AclRules(tuple(inbound), tuple(outbound)),
                                                   AclRules(tuple(inbound6), tuple(outbound6))))


def test_open_endpoint_chains_check_conntrack_mac_spoofing_then_sets():
    spec = open_endpoint(inbound=[Rule(cidr="10.0.0.0/24"), Rule(cidr="0.0.0.0/0", protocol="tcp", port=(80, 90))],
                         outbound=[Rule(cidr="0.0.0.0/0")])
    chains = chains_for([spec])
    # No DHCP exception here: the from-chain is shared with FORWARD, and a
    # DHCP-shaped packet returned before the MAC and source checks could go
    # anywhere.  DHCP is allowed only on the way to the host (felix-TO-HOST).
    assert chains["felix-from-web-1-abcde"] == (
        "-m conntrack --ctstate INVALID -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-m mac ! --mac-source {MAC} -j DROP",
        "! -s 10.0.0.1/32 -j DROP",
        f"-m set --match-set {ANYWHERE} dst -j RETURN",
        "-j DROP",
    )
    assert chains["felix-to-web-1-abcde"] == (
        "-m conntrack --ctstate INVALID -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-m set --match-set {content_name('hash:net', 4, '10.0.0.0/24')} src -j RETURN",
        # the port range's CIDRs are the outbound set's: the two rules test the one set
        f"-p tcp -m multiport --dports 80:90 -m set --match-set {ANYWHERE} src -j RETURN",
        "-j DROP",
    )
    assert chains[layout.FROM_ENDPOINT] == ("-i tapweb-1-abcde -g felix-from-web-1-abcde", "-j DROP")
    assert chains[layout.TO_ENDPOINT] == ("-o tapweb-1-abcde -g felix-to-web-1-abcde", "-j DROP")
    assert chains[layout.FORWARD_CHAIN][-2:] == ("-i tap+ -j ACCEPT", "-o tap+ -j ACCEPT")


def test_port_sets_match_destination_port_in_both_directions():
    spec = open_endpoint(inbound=[Rule(cidr="10.0.0.0/8", protocol="tcp", port=22)],
                         outbound=[Rule(cidr="10.0.0.0/8", protocol="udp", port=53)])
    chains = chains_for([spec])
    ssh_in = content_name("hash:net,port", 4, "10.0.0.0/8,tcp:22")
    dns_out = content_name("hash:net,port", 4, "10.0.0.0/8,udp:53")
    assert f"-m set --match-set {ssh_in} src,dst -j RETURN" in chains["felix-to-web-1-abcde"]
    assert f"-m set --match-set {dns_out} dst,dst -j RETURN" in chains["felix-from-web-1-abcde"]


def test_several_addresses_use_a_spoof_chain():
    spec = open_endpoint(addrs=("10.0.0.2", "10.0.0.1"))
    chains = chains_for([spec])
    assert chains["felix-sp-web-1-abcde"] == ("-s 10.0.0.1/32 -j RETURN", "-s 10.0.0.2/32 -j RETURN", "-j DROP")
    assert "-j felix-sp-web-1-abcde" in chains["felix-from-web-1-abcde"]


def test_fail_closed_endpoints_drop_everything_but_are_dispatched():
    no_acls = EndpointSpec("waiting", MAC, ("10.0.0.3",))
    disabled = open_endpoint(eid="disabled", addrs=("10.0.0.4",), inbound=[Rule(cidr="0.0.0.0/0")])
    disabled = EndpointSpec(disabled.endpoint_id, MAC, disabled.addrs, False, disabled.acls)
    chains = chains_for([no_acls, disabled])
    for eid in ("waiting", "disabled"):
        assert chains[f"felix-from-{eid}"] == ("-j DROP",)
        assert chains[f"felix-to-{eid}"] == ("-j DROP",)
    assert chains[layout.FROM_ENDPOINT] == ("-i tapdisabled -g felix-from-disabled",
                                            "-i tapwaiting -g felix-from-waiting", "-j DROP")


def test_ipv6_chains_exist_only_for_v6_endpoints_and_hold_no_early_exceptions():
    dual = open_endpoint(eid="dual", addrs=("10.0.0.5", "fd00::5"),
                         inbound6=[Rule(cidr="::/0", protocol="icmpv6", icmp_type=128)])
    v4_only = open_endpoint(eid="v4only")
    chains = chains_for([dual, v4_only], version=6)
    assert "felix-from-v4only" not in chains
    assert chains[layout.FROM_ENDPOINT] == ("-i tapdual -g felix-from-dual", "-j DROP")
    from_chain = chains["felix-from-dual"]
    assert from_chain[2] == f"-m mac ! --mac-source {MAC} -j DROP"  # right after conntrack
    assert not any("icmpv6-type 13" in rule or "546" in rule for rule in from_chain)
    assert "! -s fd00::5/128 -j DROP" in from_chain
    anywhere6 = content_name("hash:net", 6, "::/1", "8000::/1")
    assert (f"-p ipv6-icmp -m icmp6 --icmpv6-type 128 -m set --match-set {anywhere6} src -j RETURN"
            in chains["felix-to-dual"])


TO_HOST_COMMON = {
    4: ("-m conntrack --ctstate INVALID -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-d 127.0.0.0/8 -j DROP",
        "-p udp -m udp --sport 68 --dport 67 -j ACCEPT"),
    6: ("-m conntrack --ctstate INVALID -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-d ::1/128 -j DROP",
        "-p ipv6-icmp -m icmp6 --icmpv6-type 133 -j ACCEPT",
        "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT",
        "-p ipv6-icmp -m icmp6 --icmpv6-type 136 -j ACCEPT",
        "-p udp -m udp --sport 546 --dport 547 -j ACCEPT"),
}


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("action, tail", [
    ("DROP", ("-j DROP",)),
    ("RETURN", ("-j felix-FROM-ENDPOINT", "-j RETURN")),
    ("ACCEPT", ("-j felix-FROM-ENDPOINT", "-j ACCEPT")),
])
def test_endpoint_to_host_traffic_meets_conntrack_loopback_dhcp_nd_then_the_setting(version, action, tail):
    chains = chains_for([], version, action)
    assert chains[layout.INPUT_CHAIN] == ("-i tap+ -g felix-TO-HOST",)
    assert chains[layout.TO_HOST] == TO_HOST_COMMON[version] + tail


def test_endpoint_to_host_action_defaults_to_drop_and_refuses_others():
    assert chains_for([])[layout.TO_HOST][-1] == "-j DROP"
    with pytest.raises(ValueError):
        layout.to_host_rules(4, "drop")  # the config parser upper-cases; the layout takes only its values


def test_chain_names_fit_iptables_limit():
    spec = open_endpoint(eid="z" * 64, addrs=("10.0.0.1", "10.0.0.2"))
    assert all(len(name) <= 28 for name in chains_for([spec]))


def test_a_malformed_rule_never_widens_the_chains():
    good = [Rule(cidr="10.1.0.0/16", protocol="tcp", port=22)]
    with_bad = open_endpoint(inbound=good + [Rule(group="all", protocol="icmpv6"), "0.0.0.0/0", Rule(cidr="::/0")])
    assert chains_for([with_bad]) == chains_for([open_endpoint(inbound=good)])


def test_group_rules_test_the_shared_group_set_after_the_endpoints_own_sets():
    spec = open_endpoint(inbound=[Rule(group="web", protocol="tcp", port=80), Rule(cidr="10.0.0.0/24"),
                                  Rule(group="ops")],
                         outbound=[Rule(group="db", protocol="udp", port=(5000, 5010))])
    chains = chains_for([spec])
    assert chains["felix-to-web-1-abcde"] == (
        "-m conntrack --ctstate INVALID -j DROP",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-m set --match-set {content_name('hash:net', 4, '10.0.0.0/24')} src -j RETURN",
        "-p tcp -m multiport --dports 80 -m set --match-set felix-4g-web src -j RETURN",
        "-m set --match-set felix-4g-ops src -j RETURN",
        "-j DROP",
    )
    assert chains["felix-from-web-1-abcde"][-2:] == (
        "-p udp -m multiport --dports 5000:5010 -m set --match-set felix-4g-db dst -j RETURN",
        "-j DROP",
    )


def test_group_rules_of_every_protocol_kind_render_as_iptables_save_prints_them():
    dual = open_endpoint(eid="dual", addrs=("10.0.0.5", "fd00::5"),
                         inbound=[Rule(group="g", protocol="icmp", icmp_type=8, icmp_code=0),
                                  Rule(group="g", protocol="icmp", icmp_type=3),
                                  Rule(group="g", protocol="icmp"),
                                  Rule(group="g", protocol=47)],
                         inbound6=[Rule(group="g", protocol="icmpv6", icmp_type=128, icmp_code=0),
                                   Rule(group="g", protocol="sctp")])
    v4 = chains_for([dual])["felix-to-dual"]
    assert v4[2:-1] == (
        "-p icmp -m icmp --icmp-type 8/0 -m set --match-set felix-4g-g src -j RETURN",
        "-p icmp -m icmp --icmp-type 3 -m set --match-set felix-4g-g src -j RETURN",
        "-p icmp -m set --match-set felix-4g-g src -j RETURN",
        "-p 47 -m set --match-set felix-4g-g src -j RETURN",
    )
    v6 = chains_for([dual], version=6)["felix-to-dual"]
    assert v6[2:-1] == (
        "-p ipv6-icmp -m icmp6 --icmpv6-type 128/0 -m set --match-set felix-6g-g src -j RETURN",
        "-p sctp -m set --match-set felix-6g-g src -j RETURN",
    )


def test_set_match_rule_renders_a_single_port_without_a_range_and_a_range_with_one():
    from calico.felix.ipsets import HASH_NET, SetMatch

    assert layout.set_match_rule(SetMatch("s", HASH_NET, "tcp", ports=(443, 443)), "in", 4) == \
        "-p tcp -m multiport --dports 443 -m set --match-set s src -j RETURN"
    assert layout.set_match_rule(SetMatch("s", HASH_NET, "tcp", ports=(1, 1024)), "out", 6) == \
        "-p tcp -m multiport --dports 1:1024 -m set --match-set s dst -j RETURN"
    assert layout.set_match_rule(SetMatch("s", HASH_NET, "icmpv6", icmp_type=135), "in", 6) == \
        "-p ipv6-icmp -m icmp6 --icmpv6-type 135 -m set --match-set s src -j RETURN"


# -- plans ----------------------------------------------------------------------

def kernel(chains, builtins=None):
    return writer.KernelTable({k: list(v) for k, v in chains.items()},
                              builtins or {"INPUT": ["-j felix-INPUT"], "FORWARD": ["-j felix-FORWARD"]})


def test_equal_state_plans_nothing():
    desired = layout.static_chains(4, "DROP")
    assert writer.plan_table(kernel(desired), desired).is_empty()


def test_one_new_endpoint_is_one_insert_per_dispatch_chain():
    rules = [f"-i tap{i:04d} -g felix-from-{i:04d}" for i in range(0, 1000, 2)] + ["-j DROP"]
    have = {"felix-FROM-ENDPOINT": rules}
    want = {"felix-FROM-ENDPOINT": tuple(sorted(rules[:-1] + ["-i tap0001 -g felix-from-0001"]) + ["-j DROP"])}
    plan = writer.plan_table(kernel(have), want)
    assert plan.edits == [writer.Edit("I", "felix-FROM-ENDPOINT", 1, "-i tap0001 -g felix-from-0001")]
    assert plan.rules_to_build() == 1 and not plan.rewrites


def test_edits_apply_back_to_front_and_give_the_desired_list():
    have = ["a", "b", "c", "d", "e"]
    want = ("a", "x", "c", "e", "y")
    result = list(have)
    for edit in writer.plan_table(kernel({"felix-c": have}), {"felix-c": want}).edits:
        if edit.chain != "felix-c":
            continue
        if edit.op == "D":
            del result[edit.index]
        else:
            result.insert(edit.index, edit.rule)
    assert tuple(result) == want


def test_very_different_chains_are_rewritten_and_stale_ones_deleted():
    plan = writer.plan_table(kernel({"felix-x": ["a", "b"], "felix-old": ["c"]}),
                             {"felix-x": ("p", "q", "r"), "felix-new": ("s",)})
    assert plan.rewrites == {"felix-new": ("s",), "felix-x": ("p", "q", "r")}
    assert plan.new_chains == ["felix-new"]
    assert plan.dead_chains == ["felix-old"]


def test_top_jumps_end_up_first_and_once():
    builtins = {"INPUT": ["-j DOCKER", "-j felix-INPUT", "-j other", "-j felix-INPUT"],
                "FORWARD": ["-j felix-FORWARD", "-j DOCKER-USER"]}
    plan = writer.plan_table(kernel({}, builtins), {})
    assert plan.after.builtins["INPUT"] == ["-j felix-INPUT", "-j DOCKER", "-j other"]
    assert plan.after.builtins["FORWARD"] == builtins["FORWARD"]
    assert [e for e in plan.edits if e.chain == "FORWARD"] == []
    missing = writer.plan_table(kernel({}, {"INPUT": ["-j x"], "FORWARD": []}), {})
    assert writer.Edit("I", "FORWARD", 0, "-j felix-FORWARD") in missing.edits


def test_restore_input_names_only_felix_chains_and_the_jumps():
    plan = writer.plan_table(kernel({"felix-a": ["x"], "felix-old": ["y"]}, {"INPUT": [], "FORWARD": []}),
                             {"felix-a": ("x", "z"), "felix-b": ("w",)})
    assert writer.restore_input(plan).splitlines() == [
        "*filter",
        ":felix-b - [0:0]",
        "-A felix-b w",
        "-I felix-a 2 z",
        "-I INPUT 1 -j felix-INPUT",
        "-I FORWARD 1 -j felix-FORWARD",
        "-F felix-old",
        "-X felix-old",
        "COMMIT",
    ]


def test_parse_save_keeps_felix_chains_and_top_level_rules():
    text = "\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", "-A PREROUTING -j felix-nat", "COMMIT",
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":DOCKER - [0:0]", ":felix-a - [0:0]", ":felix-empty - [0:0]",
        "-A INPUT -j felix-INPUT", "-A FORWARD -j DOCKER", "-A DOCKER -j DROP", "-A felix-a -s 10.0.0.1/32 -j DROP",
        "COMMIT"])
    table = writer.parse_save(text)
    assert table.chains == {"felix-a": ["-s 10.0.0.1/32 -j DROP"], "felix-empty": []}
    assert table.builtins == {"INPUT": ["-j felix-INPUT"], "FORWARD": ["-j DOCKER"]}


def test_start_up_rewrites_the_endpoint_to_host_chains_and_keeps_endpoint_chains():
    """An upgraded or reconfigured Felix closes the host at once, while the
    endpoint chains of its previous run stay until its first full pass."""
    import subprocess

    from calico.felix.kernel_writes import WriteCounter

    saved = "\n".join(["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":felix-INPUT - [0:0]",
                       ":felix-from-old - [0:0]", "-A INPUT -j felix-INPUT", "-A FORWARD -j felix-FORWARD",
                       "-A felix-INPUT -i tap+ -j felix-FROM-ENDPOINT", "-A felix-INPUT -i tap+ -j ACCEPT",
                       "-A felix-from-old -j DROP", "COMMIT", ""])
    restored = []

    def runner(argv, **kwargs):
        if argv[0].endswith("-save"):
            return subprocess.CompletedProcess(argv, 0, saved, "")
        restored.append(kwargs["input"])
        return subprocess.CompletedProcess(argv, 0, "", "")

    iptables = writer.IptablesWriter(4, WriteCounter(), writer.RESTORE, runner=runner)
    iptables.ensure_present(layout.static_chains(4, "DROP"), force=layout.HOST_CHAINS)
    lines = restored[0].splitlines()
    assert ":felix-INPUT - [0:0]" in lines and "-A felix-INPUT -i tap+ -g felix-TO-HOST" in lines
    assert "-A felix-TO-HOST -j DROP" in lines
    assert not any("felix-from-old" in line for line in lines)
    assert iptables.kernel.chains["felix-from-old"] == ["-j DROP"]
