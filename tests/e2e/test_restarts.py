"""Any component may die and come back: the cluster converges to the same state.

After each kill and restart the matrix is the same as before and every
host's routes, iptables rules and ipsets are exactly what they were (no
duplicates, no leftovers).
"""

import pytest

from calico.lab import hosts, processes
from e2e_lab import (
    add_all,
    assert_kernel_converges_to,
    assert_matrix_converges,
    assert_no_duplicates,
    kernel_snapshot,
    running_lab,
    wait_until,
)

CONTAINERS = [("web1", "host-1", "192.168.1.1", "web"), ("db1", "host-1", "192.168.1.2", "db"),
              ("web2", "host-2", "192.168.2.1", "web"), ("db2", "host-2", "192.168.2.2", "db")]


@pytest.fixture(scope="module")
def lab():
    with running_lab("te2er-", 2) as layout:
        add_all(layout, CONTAINERS)
        yield layout


@pytest.fixture(scope="module")
def baseline(lab):
    matrix = assert_matrix_converges(lab)
    snapshot = kernel_snapshot(lab)
    assert_no_duplicates(snapshot)
    return matrix, snapshot


def restart(lab, index, component):
    label = hosts.label(index, component)
    assert processes.kill(lab, label) is not None, f"{label} was not running"
    hosts.start_component(lab, index, component)
    wait_until(lambda: processes.alive(lab, label), what=f"{label} to run again")


@pytest.mark.parametrize("index, components", [
    (2, ("felix",)),
    (1, ("felix",)),
    (1, ("bird",)),
    (2, ("bird",)),
    (1, ("plugin-ep", "plugin-network", "acl-manager")),
])
def test_kill_and_restart_converges_back(lab, baseline, index, components):
    matrix, snapshot = baseline
    for component in components:
        restart(lab, index, component)
    if "bird" in components:
        assert hosts.wait_for_bgp(lab, 2), "BGP sessions did not come back"
    assert assert_matrix_converges(lab) == matrix
    assert_kernel_converges_to(lab, snapshot)
