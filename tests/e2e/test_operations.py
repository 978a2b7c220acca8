"""Operating a lab cluster: health, metrics and calico-status, as an operator meets them.

A 3-host lab (prefix ``ops-``): every component answers /readiness 200 once
converged; a scrape of each metrics port shows the counters moving when a
container is added; ``calico-status`` (the real console script, run inside
a host's namespace, and ``calico-lab status``) shows every BGP session
Established; with one host's BIRD stopped, the other hosts show that
session down and the stopped host says BIRD is not running.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from calico import netns
from calico.lab import containers, control, hosts, processes
from e2e_lab import running_lab, wait_until

CALICO_STATUS = os.path.join(os.path.dirname(sys.executable), "calico-status")
CALICO_LAB = os.path.join(os.path.dirname(sys.executable), "calico-lab")
PORTS = {"felix": 9099, "plugin-ep": 9097, "plugin-network": 9098, "acl-manager": 9096}


@pytest.fixture(scope="module")
def lab():
    with running_lab("ops-", 3) as layout:
        yield layout


def ask(layout, index, component, path):
    try:
        return control.http_get_in(layout, index)(f"http://127.0.0.1:{PORTS[component]}{path}", 5.0)
    except OSError:
        return None


def scrape(layout, index, component) -> dict[tuple, float]:
    code, text = ask(layout, index, component, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def components(index):
    return ("felix", "plugin-ep", "plugin-network", "acl-manager") if index == 1 else ("felix",)


def test_every_component_ready_once_converged(lab):
    for index in (1, 2, 3):
        for component in components(index):
            wait_until(lambda: ask(lab, index, component, "/readiness") == (200, "ready\n"),
                       what=f"host-{index} {component} ready",)
            assert ask(lab, index, component, "/liveness") == (200, "live\n")


def test_metrics_move_when_a_container_is_added(lab):
    test_every_component_ready_once_converged(lab)
    before = {(i, c): scrape(lab, i, c) for i in (1, 2, 3) for c in components(i)}
    containers.add(lab, "m1", "host-2", ["192.168.2.21"], ["ops"])
    containers.add(lab, "m2", "host-3", ["192.168.3.21"], ["ops"])

    def felix_programmed(index, count):
        return scrape(lab, index, "felix").get(("felix_local_endpoints", (("state", "programmed"),))) == count
    wait_until(lambda: felix_programmed(2, 1) and felix_programmed(3, 1), what="each Felix programs its container")
    after = {(i, c): scrape(lab, i, c) for i in (1, 2, 3) for c in components(i)}

    def grew(key, name, **labels):
        sample = (name, tuple(sorted(labels.items())))
        return after[key].get(sample, 0) > before[key].get(sample, 0)
    for index in (2, 3):
        key = (index, "felix")
        assert grew(key, "felix_int_dataplane_apply_time_seconds_count")
        assert grew(key, "felix_active_local_endpoints")
        assert grew(key, "felix_kernel_writes_total", kind="route_requests")
        assert grew(key, "felix_kernel_writes_total", kind="iptables_commits")
        assert grew(key, "felix_endpoint_requests_total", type="ENDPOINTCREATED")
        assert grew(key, "felix_acl_publications_total", type="ACLUPDATE")
    assert grew((1, "plugin-ep"), "calico_plugin_files")
    assert grew((1, "plugin-ep"), "calico_plugin_messages_sent_total", felix="host-2", type="ENDPOINTCREATED")
    assert grew((1, "plugin-ep"), "calico_plugin_change_to_message_seconds_count")
    assert grew((1, "plugin-network"), "calico_plugin_group_updates_published_total")
    assert grew((1, "acl-manager"), "calico_acl_manager_acl_updates_published_total")
    assert grew((1, "acl-manager"), "calico_acl_manager_membership_messages_published_total", type="GROUPMEMBERS")
    assert grew((1, "acl-manager"), "calico_acl_manager_compute_seconds_count")
    assert after[(1, "acl-manager")][("calico_acl_manager_endpoints", ())] == 2


def run_status(lab, index, *extra):
    """The real calico-status, inside host ``index``'s namespace, with the lab's BIRD socket."""
    return subprocess.run(netns.argv(lab.host_ns(index), [CALICO_STATUS, "--bird-socket", lab.bird_socket(index),
                                                          *extra]),
                          capture_output=True, text=True, timeout=60)


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| 10.240.")]


def test_calico_status_with_bgp_up_then_one_bird_stopped(lab):
    assert hosts.wait_for_bgp(lab, 3)
    test_every_component_ready_once_converged(lab)
    result = run_status(lab, 1, "--plugin-host", "yes")
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Felix (http://127.0.0.1:9099): live, ready"
    assert "| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |" in lines
    rows = table_rows(result.stdout)
    assert [row.split("|")[1].strip() for row in rows] == ["10.240.0.12", "10.240.0.13"]
    assert all("| node-to-node mesh | up    |" in row and row.endswith("| Established |") for row in rows)
    for title in ("Plugin, endpoint API", "Plugin, network API", "ACL manager"):
        assert any(line.startswith(f"{title} (http://127.0.0.1:") and line.endswith("live, ready") for line in lines)
    # A host that runs no plugin: one line says so.
    other = run_status(lab, 2, "--plugin-host", "no")
    assert other.returncode == 0, other.stdout
    assert other.stdout.splitlines()[-1] == "Plugin and ACL manager: they run on the plugin host, not on this one"

    assert processes.stop(lab, hosts.label(2, "bird"))
    try:
        def host1_sees_it_down():
            rows = table_rows(run_status(lab, 1, "--plugin-host", "yes").stdout)
            return any(row.startswith("| 10.240.0.12 ") and "Established" not in row for row in rows)
        wait_until(host1_sees_it_down, what="host-1's table showing host-2's session down")
        down = run_status(lab, 1, "--plugin-host", "yes")
        assert down.returncode == 1
        row = next(r for r in table_rows(down.stdout) if r.startswith("| 10.240.0.12 "))
        assert row.split("|")[3].strip() in ("start", "down") and "Established" not in row.split("|")[5]
        assert any(r.startswith("| 10.240.0.13 ") and r.split("|")[5].strip() == "Established"
                   for r in table_rows(down.stdout))
        stopped = run_status(lab, 2, "--plugin-host", "no")
        assert stopped.returncode == 1
        assert f"BGP: BIRD is not running (no control socket at {lab.bird_socket(2)})" in stopped.stdout
        assert stopped.stdout.splitlines()[0] == "Felix (http://127.0.0.1:9099): live, ready"  # Felix is fine

        # calico-lab status prints the same per host.
        lab_status = subprocess.run([CALICO_LAB, "--lab-dir", lab.lab_dir, "--prefix", lab.prefix, "status"],
                                    capture_output=True, text=True, timeout=120)
        assert lab_status.returncode == 0, lab_status.stderr
        assert f"BGP: BIRD is not running (no control socket at {lab.bird_socket(2)})" in lab_status.stdout
        assert lab_status.stdout.count("Felix (http://127.0.0.1:9099): live, ready") == 3
    finally:
        hosts.start_component(lab, 2, "bird")
    assert hosts.wait_for_bgp(lab, 3), "BGP did not come back"
    wait_until(lambda: run_status(lab, 2, "--plugin-host", "no").returncode == 0, what="host-2 all well again")


def test_a_stopped_felix_is_one_line(lab):
    label = hosts.label(3, "felix")
    assert processes.stop(lab, label)
    try:
        result = run_status(lab, 3, "--plugin-host", "no")
        assert result.returncode == 1
        assert result.stdout.splitlines()[0] == \
            "Felix: not running (nothing answers on http://127.0.0.1:9099: Connection refused)"
        assert table_rows(result.stdout)  # BGP still shown
    finally:
        hosts.start_component(lab, 3, "felix")
    wait_until(lambda: ask(lab, 3, "felix", "/readiness") == (200, "ready\n"), what="host-3 Felix ready again")
