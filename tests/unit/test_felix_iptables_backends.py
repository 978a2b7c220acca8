"""The iptables writer on either backend (legacy, nft), with a fake runner (no kernel).

tests/dataplane runs the same against the real kernel, both backends.
"""

import subprocess

import pytest

from calico.felix import iptables_layout as layout
from calico.felix import iptables_writer as writer
from calico.felix.kernel_writes import WriteCounter

EMPTY = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


def recording_runner(saved=EMPTY):
    calls = []

    def run(argv, **kwargs):
        calls.append((argv, kwargs.get("input")))
        return subprocess.CompletedProcess(argv, 0, saved if argv[0].endswith("-save") else "", "")
    return run, calls


@pytest.mark.parametrize("backend, version, save, restore", [
    ("legacy", 4, "iptables-legacy-save", "iptables-legacy-restore"),
    ("legacy", 6, "ip6tables-legacy-save", "ip6tables-legacy-restore"),
    ("nft", 4, "iptables-nft-save", "iptables-nft-restore"),
    ("nft", 6, "ip6tables-nft-save", "ip6tables-nft-restore"),
])
def test_each_backend_reads_and_writes_with_its_own_tools(backend, version, save, restore):
    run, calls = recording_runner()
    counter = WriteCounter()
    iptables = writer.IptablesWriter(version, counter, writer.RESTORE, runner=run, backend=backend)
    iptables.sync(layout.static_chains(version, "DROP"))
    assert [argv for argv, _ in calls] == [[save, "-t", "filter"], [restore, "--noflush", "--wait", "10"]]
    assert counter.iptables_commits == 1
    # Nothing changed: nothing written, nothing read (the commit is trusted).
    iptables.sync(layout.static_chains(version, "DROP"))
    assert len(calls) == 2 and counter.iptables_commits == 1


def test_nft_never_uses_python_iptables():
    run, calls = recording_runner()
    # auto (a few rules: python-iptables on legacy) means iptables-nft-restore with nft.
    iptables = writer.IptablesWriter(4, WriteCounter(), writer.AUTO, runner=run, backend="nft")
    assert iptables.mode == writer.RESTORE
    iptables.sync({"felix-INPUT": ("-j DROP",)})
    assert calls[-1][0][0] == "iptables-nft-restore"
    with pytest.raises(ValueError, match="legacy backend only"):
        writer.IptablesWriter(4, WriteCounter(), writer.LIBRARY, backend="nft")
    with pytest.raises(ValueError):
        writer.IptablesWriter(4, WriteCounter(), backend="nftables")


def test_jumps_in_built_in_chains_are_deleted_by_their_text_in_restore_input():
    """A rule inserted before Felix's jump since Felix last read the chain
    (Docker's DOCKER-USER jump at a restart) cannot be deleted in its place."""
    kernel = writer.KernelTable({}, {"FORWARD": ["-j DOCKER-USER", "-j felix-FORWARD", "-j felix-FORWARD"],
                                     "INPUT": []})
    desired = layout.static_chains(4, "DROP")
    plan = writer.plan_table(kernel, desired)
    lines = writer.restore_input(plan).splitlines()
    edits = [line for line in lines if line.startswith(("-D", "-I"))]
    assert edits == ["-I INPUT 1 -j felix-INPUT", "-D FORWARD -j felix-FORWARD", "-D FORWARD -j felix-FORWARD",
                     "-I FORWARD 1 -j felix-FORWARD"]
    assert plan.after.builtins["FORWARD"] == ["-j felix-FORWARD", "-j DOCKER-USER"]
    # Felix's own chains: only Felix writes them, so positions are safe and exact.
    kernel = writer.KernelTable({"felix-FROM-ENDPOINT": ["-i tapa -g felix-from-a", "-i tapb -g felix-from-b",
                                                         "-i tapc -g felix-from-c", "-j DROP"]},
                                {"INPUT": ["-j felix-INPUT"], "FORWARD": ["-j felix-FORWARD"]})
    plan = writer.plan_table(kernel, {"felix-FROM-ENDPOINT": ("-i tapa -g felix-from-a", "-i tapc -g felix-from-c",
                                                              "-j DROP")})
    assert [line for line in writer.restore_input(plan).splitlines() if line.startswith("-D")] == \
        ["-D felix-FROM-ENDPOINT 2"]


@pytest.mark.parametrize("printed, number", [("esp", 50), ("ah", 51), ("mh", 135), ("ipencap", 4), ("gre", 47)])
def test_protocols_written_by_number_compare_equal_however_iptables_prints_them(printed, number):
    """Felix writes any protocol but tcp, udp, udplite, sctp, icmp and
    ipv6-icmp by number; iptables (both backends) prints 50, 51 and 135 by
    names of its own, and others by their /etc/protocols names."""
    rule = f"-p {number} -m set --match-set felix-4g-ops src -j RETURN"
    saved = f"*filter\n:felix-to-x - [0:0]\n-A felix-to-x {rule.replace(str(number), printed, 1)}\nCOMMIT\n"
    parsed = writer.parse_save(saved, protocols={"ipencap": 4, "gre": 47, "esp": 50})
    assert parsed.chains["felix-to-x"] == [rule]
    for name in ("tcp", "udp", "udplite", "sctp", "icmp", "ipv6-icmp"):
        kept = f"-p {name} -m set --match-set felix-4g-ops src -j RETURN"
        assert writer.parse_save(f"*filter\n:felix-to-x - [0:0]\n-A felix-to-x {kept}\nCOMMIT\n",
                                 protocols={"tcp": 6}).chains["felix-to-x"] == [kept]
