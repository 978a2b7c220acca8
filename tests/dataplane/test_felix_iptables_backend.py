"""IptablesBackend = auto against real namespaces: which backend Felix picks, and why.

Namespaces (``tdp-ibk-...``) holding Docker-like rules in the legacy
backend, in nft, in both, or nothing at all; each is read with the real
save commands, as Felix does at start.  Then the scenario of issue 11 in
small: an earlier Felix's chains in legacy, Docker's FORWARD DROP in nft,
so containers cannot talk; a Felix on auto moves to nft, removes its old
legacy chains, leaves everything else alone, and traffic flows.
"""

from __future__ import annotations

import logging

import pytest

from calico import netns
from calico.felix import backend_check
from calico.felix.dataplane import Dataplane
from felix_dp_helpers import Lab, acls, felix_chains_in, iptables_tool, sh, spec

A, B = "aaaa51", "bbbb52"
ADDRS = {A: ("10.65.0.1", "fd00::1"), B: ("10.65.0.2", "fd00::2")}
MACS = {A: "02:00:00:00:05:01", B: "02:00:00:00:05:02"}
OPEN = acls(inbound=["0.0.0.0/0"], outbound=["0.0.0.0/0"], inbound6=["::/0"], outbound6=["::/0"])
# What dockerd 20.10 makes in the filter table (trimmed), for both families.
DOCKER_RULES = (("-N", "DOCKER"), ("-N", "DOCKER-USER"), ("-N", "DOCKER-ISOLATION-STAGE-1"),
                ("-A", "DOCKER-USER", "-j", "RETURN"), ("-A", "DOCKER-ISOLATION-STAGE-1", "-j", "RETURN"),
                ("-A", "FORWARD", "-j", "DOCKER-USER"), ("-A", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1"),
                ("-A", "FORWARD", "-o", "docker0", "-j", "DOCKER"), ("-P", "FORWARD", "DROP"))


def add(ns: str, backend: str, rules, versions=(4, 6)) -> None:
    for version in versions:
        for rule in rules:
            sh(ns, iptables_tool(backend, version), *rule)


@pytest.fixture
def space():
    """A bare namespace, removed afterwards (with every rule in it)."""
    lab = Lab("ibk")
    try:
        yield lab.host
    finally:
        lab.close()


def detect(ns: str, setting: str = "auto") -> backend_check.BackendChoice:
    with netns.entered(ns):
        return backend_check.detect_backend(setting)


def test_nothing_anywhere_means_the_iptables_commands_own_backend(space):
    choice = detect(space)
    expected, version = backend_check.command_backend()
    assert choice.backend == expected
    assert "no rules in either backend" in choice.reason and version in choice.reason
    # Reading created nothing: no legacy table, no nft table.
    assert sh(space, "cat", "/proc/net/ip_tables_names").split() == []
    assert sh(space, "iptables-nft-save").strip() == ""


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_dockers_chains_in_one_backend_decide(space, backend):
    add(space, backend, DOCKER_RULES)
    other = "nft" if backend == "legacy" else "legacy"
    add(space, other, [("-N", "SOMETHING"), *[("-A", "SOMETHING", "-s", f"192.0.2.{n}/32", "-j", "DROP")
                                             for n in range(1, 20)]], versions=(4,))  # more rules, not Docker's
    choice = detect(space)
    assert choice.backend == backend
    assert f"Docker's chains (DOCKER, DOCKER-ISOLATION-STAGE-1, DOCKER-USER) are in {backend} only" in choice.reason


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_without_docker_the_backend_holding_rules_wins(space, backend):
    add(space, backend, [("-N", "HOST-FIREWALL"), ("-A", "INPUT", "-j", "HOST-FIREWALL"),
                         ("-A", "HOST-FIREWALL", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")], versions=(4,))
    choice = detect(space)
    assert choice.backend == backend
    assert f"{backend} holds more rules (2, against 0 in " in choice.reason


def test_both_backends_holding_dockers_chains_go_by_rule_count_and_warn_about_the_other(space, caplog):
    """A host that switched backends without a reboot: Docker's chains in both."""
    add(space, "legacy", DOCKER_RULES)
    add(space, "nft", DOCKER_RULES)
    add(space, "nft", [("-A", "DOCKER", "-d", "172.17.0.2/32", "-j", "ACCEPT")], versions=(4,))
    choice = detect(space)
    assert choice.backend == "nft" and "Docker's chains are in both" in choice.reason, choice.reason
    with caplog.at_level(logging.WARNING), netns.entered(space):
        warnings = backend_check.other_backend_warnings("nft")
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("the legacy iptables backend has a FORWARD chain with policy DROP and 3 rule(s) "
                                  "for IPv4; Docker's chains are there too")


def test_kubernetes_hint_chains_come_first(space):
    add(space, "nft", DOCKER_RULES)
    add(space, "legacy", [("-t", "mangle", "-N", "KUBE-IPTABLES-HINT")])
    choice = detect(space)
    assert choice.backend == "legacy" and "KUBE-IPTABLES-HINT" in choice.reason


def test_an_explicit_setting_wins_and_reads_nothing(space):
    add(space, "nft", DOCKER_RULES)
    assert detect(space, "legacy") == backend_check.BackendChoice("legacy", "IptablesBackend = legacy")


@pytest.fixture
def lab():
    lab = Lab("ibkmv")
    try:
        for eid in (A, B):
            lab.add_endpoint(eid, ADDRS[eid], MACS[eid])
        yield lab
    finally:
        lab.close()


def desired() -> dict:
    return {eid: spec(eid, ADDRS[eid], MACS[eid], OPEN) for eid in (A, B)}


def test_auto_moves_felix_to_dockers_backend_and_removes_its_old_chains(lab, caplog):
    host = lab.host
    # An earlier Felix on legacy, Docker on nft with FORWARD DROP: Felix's
    # ACCEPT is in one backend, Docker's DROP in the other.
    with netns.entered(host):
        old = Dataplane(iptables_backend="legacy")
    try:
        old.start()
        old.apply(desired())
    finally:
        old.close()
    add(host, "nft", DOCKER_RULES)
    add(host, "legacy", [("-N", "OTHER-CHAIN"), ("-A", "OTHER-CHAIN", "-s", "192.0.2.1/32", "-j", "DROP"),
                         ("-A", "FORWARD", "-j", "OTHER-CHAIN")], versions=(4,))
    assert not lab.ping(B, "10.65.0.1", expect=False)  # the bug of issue 11
    legacy_before = sh(host, "iptables-legacy-save", "-t", "filter")

    with caplog.at_level(logging.INFO, logger="calico.felix"), netns.entered(host):
        felix = Dataplane()
    try:
        assert felix.iptables_backend == "nft"
        felix.start()
        assert felix.apply(desired()) == set()
    finally:
        felix.close()
    messages = [r.getMessage() for r in caplog.records]
    assert ("iptables backend: nft (IptablesBackend = auto: Docker's chains (DOCKER, DOCKER-ISOLATION-STAGE-1, "
            "DOCKER-USER) are in nft only)") in messages
    removed = [m for m in messages if m.startswith("removed Felix's chains left in the legacy backend")]
    assert len(removed) == 2 and "IPv4 filter" in removed[0] and "IPv6 filter" in removed[1], removed
    # A rule of someone else's in legacy FORWARD may still drop: one warning, IPv4 only (Felix's
    # own old jumps do not count).
    warned = [m for m in messages if "iptables backend has a FORWARD chain" in m]
    assert len(warned) == 1 and warned[0].startswith("the legacy iptables backend has a FORWARD chain with 1 rule(s) "
                                                     "for IPv4: every packet passes both backends"), warned

    assert felix_chains_in(host, "legacy") == set()
    legacy_after = sh(host, "iptables-legacy-save", "-t", "filter")
    def not_felix(text):
        return [line for line in text.splitlines() if not line.startswith("#") and "felix-" not in line]
    assert not_felix(legacy_after) == not_felix(legacy_before)  # only Felix's chains and jumps went
    assert "-A FORWARD -j OTHER-CHAIN" in legacy_after
    nft = sh(host, "iptables-nft-save", "-t", "filter")
    assert ":FORWARD DROP" in nft and nft.count("-A FORWARD -j felix-FORWARD") == 1
    assert [line for line in nft.splitlines() if line.startswith("-A FORWARD")][0] == "-A FORWARD -j felix-FORWARD"
    assert lab.ping(B, "10.65.0.1") and lab.ping(A, "fd00::2")
