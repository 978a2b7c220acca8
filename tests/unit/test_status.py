"""calico-status without a cluster: BIRD's replies to tables, component views to lines.

``bird_replies/`` holds what BIRD 2.0.12 said in the lab (its control
socket's coded lines, ``*.raw``, and birdc's printout, ``*.birdc``): a full
mesh with every session up, a route reflector with one client's BIRD
stopped, and a reflector client.  A fake BIRD on a Unix socket checks the
conversation itself; fake HTTP getters stand in for the components.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import threading

import pytest

from calico import status
from calico.status import BgpRow, Targets, bgp_rows, format_bgp, format_table, parse_protocols

REPLIES = pathlib.Path(__file__).parent / "bird_replies"


def reply(name: str) -> str:
    return (REPLIES / name).read_text()


# --- BIRD's replies ------------------------------------------------------------------

def test_mesh_with_every_session_up():
    protocols = parse_protocols(reply("mesh_up.raw"))
    assert [p.name for p in protocols] == ["device1", "direct1", "kernel_ipv4", "kernel_ipv6", "peer_host_2"]
    peer = protocols[-1]
    assert (peer.proto, peer.state, peer.since, peer.info) == ("BGP", "up", peer.since, "Established")
    assert peer.details["Neighbor address"] == "10.240.0.12"
    assert peer.details["BGP state"] == "Established"
    assert peer.details["Description"] == "host-2"
    rows = bgp_rows(protocols)
    assert rows == [BgpRow("10.240.0.12", "node-to-node mesh", "up", peer.since.split(".")[0], "Established")]
    assert all(r.established for r in rows)


def test_birdc_printout_reads_the_same_as_the_socket():
    assert bgp_rows(parse_protocols(reply("mesh_up.birdc"))) == bgp_rows(parse_protocols(reply("mesh_up.raw")))


def test_reflector_with_one_client_down():
    rows = bgp_rows(parse_protocols(reply("rr_reflector_one_client_down.raw")))
    assert rows == [
        BgpRow("10.240.0.12", "rr client", "start", "23:32:07", "Active Socket: Connection refused"),
        BgpRow("10.240.0.13", "rr client", "up", "23:32:07", "Established"),
    ]
    assert [r.established for r in rows] == [False, True]


def test_client_of_a_reflector():
    rows = bgp_rows(parse_protocols(reply("rr_client.raw")))
    assert [(r.peer_address, r.peer_type, r.info) for r in rows] == [("10.240.0.11", "route reflector", "Established")]


def test_show_protocols_without_all_names_the_protocol_instead_of_the_address():
    rows = bgp_rows(parse_protocols(reply("rr_reflector_one_client_down.birdc")))
    assert [(r.peer_address, r.state, r.info) for r in rows] == [
        ("(peer_host_2)", "start", "Active Socket: Connection refused"), ("(peer_host_3)", "up", "Established")]


def test_since_with_a_date_and_other_protocols_ignored():
    text = ("2002-Name       Proto      Table      State  Since         Info\n"
            "1002-kernel1    Kernel     master4    up     2026-01-02 10:11:12  \n"
            " peer_a     BGP        ---        up     2026-01-02 10:11:12  Established\n"
            "1006-  Description:    a\n"
            "   Neighbor address: 10.0.0.2\n"
            "0000 \n")
    assert bgp_rows(parse_protocols(text)) == [
        BgpRow("10.0.0.2", "node-to-node mesh", "up", "2026-01-02 10:11:12", "Established")]


def test_table_is_calicoctls():
    rows = bgp_rows(parse_protocols(reply("rr_reflector_one_client_down.raw")))
    assert format_bgp(rows) == "\n".join([
        "IPv4 BGP status",
        "+--------------+-----------+-------+----------+-----------------------------------+",
        "| PEER ADDRESS | PEER TYPE | STATE |  SINCE   |               INFO                |",
        "+--------------+-----------+-------+----------+-----------------------------------+",
        "| 10.240.0.12  | rr client | start | 23:32:07 | Active Socket: Connection refused |",
        "| 10.240.0.13  | rr client | up    | 23:32:07 | Established                       |",
        "+--------------+-----------+-------+----------+-----------------------------------+",
        "",
        "IPv6 BGP status",
        "No IPv6 peers found (the IPv4 sessions carry IPv6 routes too).",
    ])


def test_table_centres_headers_as_calicoctl_does():
    assert format_table(["INFO"], [["Established"]]).splitlines()[1] == "|    INFO     |"
    assert format_table(["AB"], [["x"]]).splitlines()[1] == "| AB |"


def test_no_peers():
    assert format_bgp([]).splitlines()[:2] == ["IPv4 BGP status", "No IPv4 peers found."]


# --- BIRD's control socket ---------------------------------------------------------

class FakeBird(threading.Thread):
    """Greets, takes ``restrict`` and one command, answers from ``replies``."""

    def __init__(self, path: str, replies: dict[str, str]):
        super().__init__(daemon=True)
        self.path, self.replies, self.heard = path, replies, []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen()

    def run(self):
        conn, _ = self.sock.accept()
        with conn:
            reader = conn.makefile("rb")
            conn.sendall(b"0001 BIRD 2.0.12 ready.\n")
            while True:
                line = reader.readline()
                if not line:
                    return
                command = line.decode().strip()
                self.heard.append(command)
                conn.sendall(self.replies.get(command, "9001 syntax error\n").encode())


def test_bird_conversation_is_restricted_and_read_whole(tmp_path):
    path = str(tmp_path / "bird.ctl")
    bird = FakeBird(path, {"restrict": "0016 Access restricted\n", "show protocols all": reply("mesh_up.raw")})
    bird.start()
    view = status.query_bird(path)
    assert bird.heard == ["restrict", "show protocols all"]
    assert view.error is None and [r.peer_address for r in view.rows] == ["10.240.0.12"] and view.ok


def test_bird_errors_are_one_line(tmp_path):
    path = str(tmp_path / "bird.ctl")
    FakeBird(path, {"restrict": "0016 Access restricted\n", "show protocols all": "8003 No protocols match\n"}).start()
    view = status.query_bird(path)
    assert view.error == f"BIRD is not answering on {path} (No protocols match)"


def test_bird_not_running(tmp_path, monkeypatch):
    monkeypatch.setattr(status, "in_container", lambda: False)
    missing = str(tmp_path / "bird.ctl")
    assert status.query_bird(missing).error == f"BIRD is not running (no control socket at {missing})"
    assert status.query_bird(None, (missing,)).error == f"BIRD is not running here (no control socket at {missing})"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(missing)
    stale.close()  # the file stays, nobody listens: what a killed BIRD leaves
    assert status.query_bird(missing).error == f"BIRD is not answering on {missing} (Connection refused)"
    monkeypatch.setattr(status, "in_container", lambda: True)  # docker exec felix calico-status
    assert status.query_bird(None, (str(tmp_path / "none"),)).error.endswith(
        "; in a container other than BIRD's, run calico-status in the bird container, or give both containers "
        "-v /run/bird:/run/bird")


# --- components -------------------------------------------------------------------

NOW = 1_800_000_000.0
FELIX = {"component": "felix", "live": True, "liveness": "live", "ready": True, "readiness": "ready", "now": NOW,
         "host": "host-1", "endpoints": {"programmed": 2, "fail-closed": 1, "waiting-for-acls": 0,
                                         "interface-missing": 1, "disabled": 0},
         "endpoint_count": 4,
         "last_pass": {"at": NOW - 3, "seconds": 0.0452, "ok": True, "endpoints": 4, "error": None},
         "resync": {"first_completed": NOW - 60, "in_progress": False, "started": 1},
         "plugin": {"address": "tcp://10.0.0.1:9901", "connected": True},
         "endpoint_api": {"address": "tcp://10.0.0.2:9902", "last_request": NOW - 1.5},
         "acl_manager": {"requests": "tcp://10.0.0.1:9905", "requests_connected": True,
                         "publications": "tcp://10.0.0.1:9906", "hearing": True, "last_heard": NOW - 0.2}}


def getter(answers: dict[str, tuple[int, str] | Exception]):
    def get(url, timeout):
        for prefix, answer in answers.items():
            if url.startswith(prefix):
                if isinstance(answer, Exception):
                    raise answer
                return answer
        raise ConnectionRefusedError(111, "Connection refused")
    return get


def test_felix_lines():
    view = status.query_component("felix", "http://127.0.0.1:9099",
                                  getter({"http://127.0.0.1:9099": (200, json.dumps(FELIX))}))
    lines = status.describe_felix(view)
    assert lines[0] == "Felix (http://127.0.0.1:9099): live, ready"
    assert lines[1] == "  endpoints: 4 (programmed 2, waiting for ACLs 0, fail-closed 1, interface missing 1)"
    assert lines[2].startswith("  last dataplane pass: ") and lines[2].endswith(
        "(3.0 s ago), took 45 ms, 4 endpoints, ok")
    assert "plugin tcp://10.0.0.1:9901: connected" in lines[4]
    assert lines[5] == ("  ACL manager tcp://10.0.0.1:9905: connected; publications on tcp://10.0.0.1:9906: "
                        "arriving (last 0.2 s ago)")


def test_felix_not_ready_says_why():
    sick = dict(FELIX, ready=False, readiness="not hearing the ACL manager (nothing on tcp://10.0.0.1:9906)",
                acl_manager=dict(FELIX["acl_manager"], hearing=False))
    view = status.query_component("felix", "http://x", getter({"http://x": (200, json.dumps(sick))}))
    assert status.describe_felix(view)[0] == \
        "Felix (http://x): live, NOT READY (not hearing the ACL manager (nothing on tcp://10.0.0.1:9906))"
    assert not view.ok


def test_felix_not_running_is_one_line():
    view = status.query_component("felix", "http://127.0.0.1:9099", getter({}))
    assert status.describe_felix(view) == [
        "Felix: not running (nothing answers on http://127.0.0.1:9099: Connection refused)"]


def test_something_else_on_the_port():
    view = status.query_component("felix", "http://x", getter({"http://x": (200, "<html>")}))
    assert view.error.startswith("/status is not JSON")


def test_host_report_plugin_host_with_bird_down(tmp_path):
    plugin_ep = {"live": True, "ready": True, "now": NOW, "data_dir": "/opt/plugin/data", "watch": "inotify",
                 "files": 5, "bad_files": 1, "hosts": 2, "endpoints": 3, "groups": 1,
                 "api": {"felixes": {"host_1": {"address": "tcp://1.2.3.4:9902", "connected": True, "queued": 0,
                                                "resyncs": 1},
                                     "host_2": {"address": "tcp://2.3.4.5:9902", "connected": False, "queued": 3,
                                                "resyncs": 0}}}}
    targets = Targets(felix="http://f", bird_socket=str(tmp_path / "bird.ctl"), plugin_ep="http://ep",
                      plugin_network="http://net", acl_manager="http://acl", plugin_host=True)
    report = status.host_report(targets, getter({"http://f": (200, json.dumps(FELIX)),
                                                 "http://ep": (200, json.dumps(plugin_ep))}))
    text = report.text.splitlines()
    assert f"BGP: BIRD is not running (no control socket at {tmp_path / 'bird.ctl'})" in text
    assert "Plugin, endpoint API (http://ep): live, ready" in text
    assert ("  data directory /opt/plugin/data (inotify): 5 files (1 bad), 2 hosts, 3 endpoints, 1 group"
            in text)
    assert "  felix host_2 tcp://2.3.4.5:9902: NOT ANSWERING, 3 queued, 0 resyncs" in text
    assert "Plugin, network API: not running (nothing answers on http://net: Connection refused)" in text
    assert "ACL manager: not running (nothing answers on http://acl: Connection refused)" in text
    assert not report.ok


def test_host_report_elsewhere_and_unknown(tmp_path):
    targets = Targets(felix=None, bird_socket=str(tmp_path / "none"), plugin_ep="http://ep",
                      plugin_network="http://net", acl_manager="http://acl")
    text = status.host_report(targets, getter({})).text
    assert text.splitlines()[-1] == ("Plugin and ACL manager: not running on this host (nothing answers on "
                                     "http://ep, http://net, http://acl; they run on the plugin host only)")
    targets.plugin_host, targets.plugin_host_name = False, "host_1 (1.2.3.4)"
    assert status.host_report(targets, getter({})).text.splitlines()[-1] == \
        "Plugin and ACL manager: they run on the plugin host host_1 (1.2.3.4), not on this one"


def test_addresses_from_the_components_settings(tmp_path):
    cfg = tmp_path / "felix.cfg"
    cfg.write_text("[global]\nLocalAddress = *\n[health]\nHealthPort = 9199\n")
    assert status._config_address(str(cfg), "felix", {}) == "http://127.0.0.1:9199"
    assert status._config_address(str(cfg), "felix", {"CALICO_HEALTH_HOST": "10.0.0.5"}) == "http://10.0.0.5:9199"
    assert status._config_address(str(tmp_path / "none"), "acl-manager", {}) == "http://127.0.0.1:9096"
    assert status._config_address(str(tmp_path / "none"), "acl-manager", {"CALICO_HEALTH_PORT": "9300"}) == \
        "http://127.0.0.1:9300"
    cfg.write_text("[health]\nHealthEnabled = false\n")
    assert status._config_address(str(cfg), "felix", {}) is None


def test_the_plugin_host_from_calico_hosts(monkeypatch):
    monkeypatch.setattr(status, "_local_addresses", lambda: {"127.0.0.1", "2.3.4.5"})
    assert status._plugin_host({"CALICO_HOSTS": "host_1=1.2.3.4 host_2=2.3.4.5"}) == (False, "host_1 (1.2.3.4)")
    assert status._plugin_host({"CALICO_HOSTS": "host_2=2.3.4.5 host_1=1.2.3.4"}) == (True, "host_2 (2.3.4.5)")
    assert status._plugin_host({"CALICO_HOSTS": "HOST1=IP1 HOST2=IP2",
                                "CALICO_CLUSTER_FILE": os.devnull})[0] is None
