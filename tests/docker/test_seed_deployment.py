"""The seed's two-host deployment with real Docker, end to end.

conftest.py builds the images, starts a dockerd per host namespace and runs
the seed's "Start the containers" lines.  Here, as in the seed's "Create
some container endpoints": util containers started with ``--net=none`` on
both hosts, each networked with ``network_container.sh`` (run in its host's
namespace against its host's dockerd), host 2's endpoint files copied into
host 1's data directory (the seed's scp step), then ping and TCP between
every pair, which must work if and only if the two share a group -- with
Docker's own iptables rules (FORWARD policy DROP) in place on both hosts.
Every test runs twice (conftest.py): Docker's rules in legacy, then in nft
(the hosts' ``iptables`` left on Debian 12's default); Felix, on its
default ``IptablesBackend = auto``, must program the same backend.

The time from ``network_container.sh`` returning (for a host-2 container)
to the first cross-host ping answered is measured and printed in the test
summary; it is a figure, not an assertion.
"""

from __future__ import annotations

import functools
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import polling
from seedcluster import FIGURES, SeedCluster

TCP_PORT = 7777
wait_until = functools.partial(polling.wait_until, interval=0.2)
# name (the seed names util containers by IP): (host, ip, group)
UTIL = {
    "192_168_1_1": (1, "192.168.1.1", "web"),
    "192_168_1_2": (1, "192.168.1.2", "db"),
    "192_168_2_1": (2, "192.168.2.1", "web"),
    "192_168_2_2": (2, "192.168.2.2", "db"),
}


def bgp_established(cluster: SeedCluster, index: int) -> bool:
    result = cluster.hosts[index].docker("exec", "bird", "birdc", "show", "protocols", check=False)
    return result.returncode == 0 and "Established" in result.stdout


def host_links(cluster: SeedCluster, index: int) -> set[str]:
    out = cluster.hosts[index].in_netns("ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def data_files(cluster: SeedCluster, index: int) -> dict[str, str]:
    directory = cluster.hosts[index].data_dir
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def container_id(cluster: SeedCluster, name: str) -> str:
    host = cluster.hosts[UTIL[name][0]]
    return host.docker("inspect", "--format", "{{.Id}}", name).stdout.strip()


def probe(cluster: SeedCluster, source: str, targets: list[str]) -> dict[tuple[str, str], bool]:
    """{(target ip, "icmp"|"tcp"): answered} from inside ``source``, all at once."""
    script = (
        'for dst in "$@"; do '
        '( ping -c 1 -W 2 -q "$dst" >/dev/null 2>&1 && echo "$dst icmp yes" || echo "$dst icmp no" ) & '
        f'( nc -z -w 2 "$dst" {TCP_PORT} >/dev/null 2>&1 && echo "$dst tcp yes" || echo "$dst tcp no" ) & '
        'done; wait')
    host = cluster.hosts[UTIL[source][0]]
    out = host.docker("exec", source, "sh", "-c", script, "probe", *targets, timeout=60).stdout
    results = {}
    for line in out.split("\n"):
        if line.strip():
            dst, proto, answer = line.split()
            results[(dst, proto)] = answer == "yes"
    return results


def expected_matrix() -> dict[tuple[str, str, str], bool]:
    return {(src, UTIL[dst][1], proto): UTIL[src][2] == UTIL[dst][2]
            for src in UTIL for dst in UTIL if src != dst for proto in ("icmp", "tcp")}


def actual_matrix(cluster: SeedCluster, pairs: set[tuple[str, str]] | None = None
                  ) -> dict[tuple[str, str, str], bool]:
    """Every (source, target ip, protocol) -> answered; sources probe in parallel."""
    pairs = pairs or {(src, dst) for src in UTIL for dst in UTIL if src != dst}
    targets = {src: sorted(UTIL[dst][1] for s, dst in pairs if s == src) for src, _ in pairs}
    with ThreadPoolExecutor(len(targets)) as pool:
        results = {src: pool.submit(probe, cluster, src, ips) for src, ips in targets.items()}
    return {(src, dst_ip, proto): ok for src, future in results.items()
            for (dst_ip, proto), ok in future.result().items()}


def describe(matrix: dict[tuple[str, str, str], bool], expected: dict[tuple[str, str, str], bool]) -> str:
    wrong = [f"{src} -> {dst} {proto}: {'answered' if matrix.get((src, dst, proto)) else 'no answer'}, "
             f"want {'answer' if want else 'none'}"
             for (src, dst, proto), want in sorted(expected.items()) if matrix.get((src, dst, proto)) != want]
    return "\n".join(wrong)


@pytest.fixture(scope="module")
def attached(seed_cluster: SeedCluster):
    """The util containers, networked and (host 2's) copied to host 1."""
    cluster = seed_cluster
    for index in cluster.hosts:
        wait_until(lambda: bgp_established(cluster, index), f"BGP Established on host-{index}", 90,
                   interval=0.5, on_timeout=cluster.diagnostics)
    for name, (index, _ip, _group) in UTIL.items():
        # The seed's `docker run -i -t --net=none --name=192_168_1_1 calico:util`, detached.
        cluster.hosts[index].docker("run", "-d", "-i", "-t", "--net=none", f"--name={name}", "calico:util")
    for name, (index, ip, group) in UTIL.items():
        host = cluster.hosts[index]
        cid = container_id(cluster, name)
        start = time.monotonic()
        result = host.network_container(cid, ip, group)
        returned = time.time()
        assert result.returncode == 0, f"network_container.sh {name}: {result.stderr.strip()}"
        FIGURES[f"[{cluster.backend}] network_container.sh {name} (host-{index})"] = \
            f"{time.monotonic() - start:.2f} s"
        host.docker("exec", "-d", name, "nc", "-l", "-k", str(TCP_PORT))
        if index == 2:
            # The seed's `scp host2:/opt/plugin/data/192_168_2_1.txt /opt/plugin/data` on host 1.
            stem = ip.replace(".", "_") + ".txt"
            shutil.copy(host.data_dir / stem, cluster.hosts[1].data_dir / stem)
            if name == "192_168_2_1":
                _measure_first_ping(cluster, returned)
    return cluster


def _measure_first_ping(cluster: SeedCluster, returned: float) -> None:
    """Seconds from network_container.sh returning (host 2) to 192.168.1.1's first answered ping."""
    # One ping at a time, each waiting 0.2 s: `ping -w` would give up at the
    # first ICMP error (host 1 answers "unreachable" until BIRD has the route).
    result = cluster.hosts[1].docker(
        "exec", "192_168_1_1", "timeout", "60", "sh", "-c",
        "until ping -c 1 -W 0.2 -q 192.168.2.1 >/dev/null 2>&1; do sleep 0.02; done; date +%s.%N",
        timeout=90, check=False)
    if result.returncode != 0:
        pytest.fail("192.168.1.1 never reached 192.168.2.1 (same group, across hosts) within 60 s\n"
                    + cluster.diagnostics())
    FIGURES[f"[{cluster.backend}] network_container.sh returned -> first cross-host ping answered"] = \
        f"{float(result.stdout.strip()) - returned:.2f} s"


def other_backend(backend: str) -> str:
    return "nft" if backend == "legacy" else "legacy"


def test_docker_keeps_forward_policy_drop_and_felix_comes_first(seed_cluster: SeedCluster):
    """The precondition that makes the matrix below meaningful: Docker's FORWARD
    DROP is there, in the backend of the hosts' iptables, and Felix's jump is
    first in that backend, which it chose itself and says so."""
    backend = seed_cluster.backend
    for index in seed_cluster.hosts:
        host = seed_cluster.hosts[index]

        def forward_rules():
            out = host.in_netns(f"iptables-{backend}", "-S", "FORWARD").stdout
            return out if "-j felix-FORWARD" in out else None

        rules = wait_until(forward_rules, f"Felix's FORWARD jump in {backend} on host-{index}", 60,
                           on_timeout=seed_cluster.diagnostics).splitlines()
        assert "-P FORWARD DROP" in rules, rules
        assert any("DOCKER" in rule for rule in rules), rules
        appended = [rule for rule in rules if rule.startswith("-A FORWARD")]
        assert appended[0] == "-A FORWARD -j felix-FORWARD", appended
        # Docker used only the hosts' backend (dockerhost.py), and Felix only that one.
        # (save without -t: it reads only the tables that exist, and creates none.)
        other = host.in_netns(f"iptables-{other_backend(backend)}-save", check=False).stdout
        assert ":FORWARD DROP" not in other and "felix-" not in other and "DOCKER" not in other, other
        logs = host.logs("felix", lines=1000)
        assert (f"iptables backend: {backend} (IptablesBackend = auto: Docker's chains (DOCKER, "
                f"DOCKER-ISOLATION-STAGE-1") in logs, logs
        assert f"are in {backend} only)" in logs, logs
        assert "iptables backend has a FORWARD chain" not in logs, logs


def test_bird_sessions_established_on_both_hosts(attached: SeedCluster):
    for index in attached.hosts:
        out = attached.hosts[index].docker("exec", "bird", "birdc", "show", "protocols").stdout
        assert "Established" in out, out


def test_routes_spread_between_hosts(attached: SeedCluster):
    def routes(index: int) -> str:
        return attached.hosts[index].in_netns("ip", "route", "show", "root", "192.168.0.0/16").stdout

    for index, other in ((1, 2), (2, 1)):
        for name, (owner, ip, _group) in UTIL.items():
            if owner == index:
                want = f"{ip} dev tap"
            else:
                want = f"{ip} via {attached.hosts[other].ip} dev fab0 proto bird"
            wait_until(lambda: want in routes(index), f"route '{want}' on host-{index}", 30,
                       on_timeout=lambda: routes(index))


def test_connectivity_iff_same_group(attached: SeedCluster):
    expected = expected_matrix()
    allowed = {(src, dst) for src in UTIL for dst in UTIL if src != dst and UTIL[src][2] == UTIL[dst][2]}
    # Wait until everything allowed works (ACLs and routes settle), then check all of it once.
    wait_until(lambda: all(actual_matrix(attached, allowed).values()),
               "every same-group pair to answer", 60, interval=0.5,
               on_timeout=lambda: describe(actual_matrix(attached), expected) + "\n" + attached.diagnostics())
    matrix = actual_matrix(attached)
    assert matrix == expected, describe(matrix, expected)


def test_troubleshooting_commands_from_the_docs(attached: SeedCluster):
    """README.md, "Troubleshooting": each command shows what it says it shows."""
    h1 = attached.hosts[1]
    cid = container_id(attached, "192_168_1_1")
    iptables = f"iptables-{attached.backend}"  # the backend Felix's log names
    assert f"iptables backend: {attached.backend} (" in h1.logs("felix", lines=1000)
    chain = h1.in_netns(iptables, "-S", "felix-FORWARD").stdout
    assert "-A felix-FORWARD -i tap+ -j felix-FROM-ENDPOINT" in chain, chain
    assert h1.docker("exec", "felix", iptables, "-S", "felix-FORWARD").stdout == chain
    if attached.backend == "nft":  # the image's iptables is Debian's default, nft
        assert h1.docker("exec", "felix", "iptables", "-S", "felix-FORWARD").stdout == chain
    assert f"felix-from-{cid[:11]}" in h1.in_netns(iptables, "-S").stdout
    sets = h1.in_netns("ipset", "list").stdout
    assert "Name: felix-" in sets
    names = h1.docker("exec", "felix", "ipset", "list", "-n").stdout.split()
    assert names and all(name.startswith("felix-") for name in names), names
    assert "192.168.2.1/32" in h1.docker("exec", "bird", "birdc", "show", "route").stdout
    for name in ("felix.log", "acl_manager.log", "plugin_ep.log", "plugin_net.log"):
        assert h1.path(f"/var/log/calico/{name}").stat().st_size > 0, name
    assert h1.path("/var/log/bird/bird.log").stat().st_size > 0
    assert h1.logs("felix").strip()


@pytest.mark.parametrize("args, reason", [
    (("no-such-container", "192.168.1.9", "web"), "no container 'no-such-container'"),
    (("{spare}", "192.168.1.300", "web"), "bad IP '192.168.1.300'"),
    (("{spare}", "192.168.1.9", "bad group!"), "bad group name 'bad group!'"),
    (("{spare}", "10.9.9.9", "web"), "outside the pool"),
    (("{spare}", "192.168.1.1", "web"), "192_168_1_1.txt already exists"),
    (("{spare}", "192.168.1.9,192.168.1.1", "web"), "IP 192.168.1.1 is already used by endpoint"),
    (("{bridged}", "192.168.1.9", "web"), "was started with --net=default"),
    (("{stopped}", "192.168.1.9", "web"), "is not running"),
])
def test_network_container_refusals_change_nothing(attached: SeedCluster, refusal_containers, args, reason):
    args = tuple(arg.format(**refusal_containers) for arg in args)
    before = (data_files(attached, 1), host_links(attached, 1))
    result = attached.hosts[1].network_container(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("network_container.sh: error: ") and reason in lines[0], lines
    assert (data_files(attached, 1), host_links(attached, 1)) == before
    spare = refusal_containers["spare"]
    out = attached.hosts[1].docker("exec", spare, "ip", "-o", "link", "show").stdout
    assert "eth0" not in out


@pytest.fixture(scope="module")
def refusal_containers(attached: SeedCluster):
    host = attached.hosts[1]
    host.docker("run", "-d", "--net=none", "--name=spare", "calico:util", "sleep", "infinity")
    host.docker("run", "-d", "--name=bridged", "calico:util", "sleep", "infinity")
    host.docker("create", "--net=none", "--name=stopped", "calico:util")
    return {"spare": "spare", "bridged": "bridged", "stopped": "stopped"}


def test_detach_takes_the_container_off_the_network(attached: SeedCluster):
    """Runs last: detaches both db containers (one per host) and checks they are gone everywhere."""
    h1, h2 = attached.hosts[1], attached.hosts[2]
    cid_12 = container_id(attached, "192_168_1_2")
    result = h1.network_container("--detach", "192_168_1_2")
    assert result.returncode == 0, result.stderr
    assert f"tap{cid_12[:11]}" in result.stdout and "192_168_1_2.txt" in result.stdout
    assert f"tap{cid_12[:11]}" not in host_links(attached, 1)
    assert "192_168_1_2.txt" not in data_files(attached, 1)
    out = h1.docker("exec", "192_168_1_2", "ip", "-o", "link", "show").stdout
    assert "eth0" not in out

    # A host-2 container: detach there, then remove host 1's copy by id prefix
    # (host 1's dockerd does not know the container).
    cid_22 = container_id(attached, "192_168_2_2")
    assert h2.network_container("--detach", cid_22[:12]).returncode == 0
    assert "192_168_2_2.txt" not in data_files(attached, 2)
    result = h1.network_container("--detach", cid_22[:12])
    assert result.returncode == 0, result.stderr
    assert "192_168_2_2.txt" not in data_files(attached, 1)

    def gone(index: int, ip: str) -> bool:
        return ip not in attached.hosts[index].in_netns("ip", "route").stdout

    for index, ip in ((1, "192.168.1.2"), (2, "192.168.1.2"), (1, "192.168.2.2"), (2, "192.168.2.2")):
        wait_until(lambda: gone(index, ip), f"route to {ip} withdrawn on host-{index}", 30)
    # The web pair is untouched.
    assert probe(attached, "192_168_1_1", ["192.168.2.1"]) == {("192.168.2.1", "icmp"): True,
                                                              ("192.168.2.1", "tcp"): True}


def test_key_step_made_one_private_secret_for_both_images(seed_cluster: SeedCluster):
    """README, the key step: one command on host 1, the scp line for host 2."""
    tree = seed_cluster.tree
    felix_secret = (tree / "felix" / "cluster.secret").read_text()
    assert (tree / "plugin" / "cluster.secret").read_text() == felix_secret
    assert len(felix_secret) == 65 and int(felix_secret, 16) >= 0
    assert f"scp -p {tree}/felix/cluster.secret root@{seed_cluster.hosts[2].ip}:{tree}/felix/" \
        in seed_cluster.key_step_output
    host = seed_cluster.hosts[1]
    for image in ("calico:felix", "calico:plugin"):
        listing = host.docker("run", "--rm", "--net=none", image, "sh", "-c",
                              "stat -c '%a %U' /etc/calico/cluster.secret && cat /etc/calico/cluster.secret").stdout
        assert listing.splitlines() == ["600 root", felix_secret.strip()], (image, listing)


@pytest.mark.parametrize("image, command", [
    ("calico:felix", ["calico-felix", "--config-file=/etc/calico/felix.cfg"]),
    ("calico:felix", ["calico-acl-manager", "--config-file=/etc/calico/acl_manager.cfg"]),
    ("calico:plugin", ["python", "/opt/scripts/plugin.py", "ep"]),
])
def test_without_the_secret_a_component_refuses_to_start(seed_cluster: SeedCluster, image, command):
    """The seed's command with the secret pointed elsewhere: one line, exit 2 (before any dataplane work)."""
    result = seed_cluster.hosts[1].docker("run", "--rm", "--net=none", "-e", "CALICO_SECRET_FILE=/etc/calico/none",
                                          image, *command, check=False)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster secret /etc/calico/none: no such file" in lines[0], lines
    assert "make_secret.sh" in lines[0]
