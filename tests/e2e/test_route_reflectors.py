"""Eight hosts, two route reflectors: fewer sessions, the same routes, and one reflector may stop.

host-1 and host-2 reflect; the six others peer with them only.  Every
host runs a container; the containers are in two groups and one is in both.
"""

import pytest

from calico.lab import check, control, hosts, processes, state
from e2e_lab import add_all, assert_matrix_converges, running_lab, wait_until

COUNT = 8
REFLECTORS = (1, 2)
CONTAINERS = [(f"c{i}", f"host-{i}", f"192.168.{i}.1", "red" if i % 2 else "blue") for i in range(1, COUNT)]
CONTAINERS.append((f"c{COUNT}", f"host-{COUNT}", f"192.168.{COUNT}.1", "red,blue"))


@pytest.fixture(scope="module")
def lab():
    with running_lab("te2eq-", COUNT, settings={"route_reflectors": "host-1, host-2"}) as layout:
        add_all(layout, CONTAINERS)
        yield layout


def routes(lab, index):
    return {line.split()[0]: line for line in control.kernel_state(lab, index)["routes4"].splitlines()
            if line.startswith("192.168.")}


def test_reflectors_peer_with_everyone_the_others_with_the_reflectors_only(lab):
    for index in range(1, COUNT + 1):
        sessions = hosts.bgp_sessions(lab, index)
        want = COUNT - 1 if index in REFLECTORS else len(REFLECTORS)
        assert len(sessions) == want and all("Established" in s for s in sessions.values()), (index, sessions)
    client = hosts.bgp_sessions(lab, 5)
    assert set(client) == {"peer_host_1", "peer_host_2"}


def test_every_container_reaches_every_allowed_peer(lab):
    matrix = assert_matrix_converges(lab)
    assert matrix[("c3", "c5")] == matrix[("c8", "c2")] == {"icmp": True, "tcp": True}
    assert matrix[("c3", "c4")] == {"icmp": False, "tcp": False}
    # Routes point at the container's own host, not at the reflector that passed them on.
    for index in range(1, COUNT + 1):
        table = routes(lab, index)
        for other in range(1, COUNT + 1):
            if other != index:
                assert f"via 10.240.0.{10 + other} " in table[f"192.168.{other}.1"], (index, table)


def test_stopping_one_reflectors_bird_keeps_every_route(lab):
    assert_matrix_converges(lab)
    before = {index: routes(lab, index) for index in range(2, COUNT + 1)}
    assert processes.stop(lab, hosts.label(1, "bird"))
    try:
        for index in range(3, COUNT + 1):
            wait_until(lambda: "Established" not in hosts.bgp_sessions(lab, index).get("peer_host_1", ""),
                       what=f"host-{index} to notice host-1's BIRD is gone")
        # host-1's own containers are no longer announced by anyone (as with any
        # host whose BIRD stops); every other route stays, unchanged, through host-2.
        for index in range(2, COUNT + 1):
            kept = {k: v for k, v in before[index].items() if k != "192.168.1.1"}
            wait_until(lambda: {k: v for k, v in routes(lab, index).items() if k != "192.168.1.1"} == kept,
                       what=f"host-{index}'s routes to stay as they were")
            assert "192.168.1.1" not in routes(lab, index)
        others = sorted((c for c in state.load(lab).containers.values() if c.host != 1), key=lambda c: c.name)
        ok, cells = check.wait_until_correct(lab, hosts.load_lab_cluster(lab), others, 30)
        assert ok, check.format_matrix(others, cells)
    finally:
        hosts.start_component(lab, 1, "bird")
    assert hosts.wait_for_bgp(lab, COUNT), control.status(lab)
    assert_matrix_converges(lab)
