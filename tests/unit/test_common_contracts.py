"""Contracts two parts of Calico share, held once in calico.common, seen
from both sides: what one writes, the other reads back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from calico import bird
from calico.common import cluster_env, config
from calico.common.datafiles import Cluster, GlobalSettings, Host
from calico.common.iptables_backends import felix_table
from calico.common.kernel_names import CHAIN_PREFIX, IFACE_PREFIX, ROUTE_PROTO, interface_name
from calico.felix import iptables_layout

REPO = Path(__file__).resolve().parents[2]


def test_bird_learns_the_routes_felix_stamps_and_ignores_the_taps():
    cluster = Cluster([Host("host_1", "10.99.0.1"), Host("host_2", "10.99.0.2")], GlobalSettings(), {})
    text = bird.render(cluster, cluster.hosts[0])
    assert f"krt_source = {ROUTE_PROTO} &&" in text
    assert f'interface -"{IFACE_PREFIX}*", -"tunl0", "*";' in text


def test_felix_chains_and_taps_carry_the_shared_names():
    assert interface_name("0123456789abcdef") == "tap0123456789a"
    assert iptables_layout.from_chain("0123456789abcdef") == "felix-from-0123456789a"
    assert iptables_layout.is_felix_chain(CHAIN_PREFIX + "anything")
    assert iptables_layout.TAP_WILDCARD == "tap+"


def test_a_bad_calico_hosts_is_the_config_error_the_components_catch():
    assert cluster_env.ConfigError is config.ConfigError
    with pytest.raises(config.ConfigError, match="environment CALICO_HOSTS item 'x': want name=ip"):
        cluster_env.hosts_from_env({"CALICO_HOSTS": "x"})


def test_the_bird_images_modules_import_without_zeromq():
    """The bird image carries python3, netaddr and pyroute2 only (bird/Dockerfile)."""
    code = ("import sys; sys.modules['zmq'] = None\n"
            "import calico.bird, calico.bird_runner, calico.status, calico.common.health\n"
            "import calico.common.bird_socket, calico.common.cluster_env\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr


SAVE_WITH_FELIX = "*filter\n:INPUT ACCEPT [0:0]\n:felix-INPUT - [0:0]\n-A INPUT -j felix-INPUT\nCOMMIT\n"
SAVE_WITHOUT = "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"


def saving(outputs: dict[str, tuple[int, str]]):
    def run(argv, **kwargs):
        code, out = outputs[argv[0]]
        return subprocess.CompletedProcess(argv, code, out, "boom" if code else "")
    return run


@pytest.mark.parametrize("outputs, expected", [
    ({"iptables-legacy-save": (0, SAVE_WITHOUT), "iptables-nft-save": (0, "*mangle\nCOMMIT\n" + SAVE_WITH_FELIX)},
     ("nft", SAVE_WITH_FELIX)),
    ({"iptables-legacy-save": (1, SAVE_WITH_FELIX), "iptables-nft-save": (0, SAVE_WITHOUT)}, (None, "")),
    ({"iptables-legacy-save": (0, SAVE_WITH_FELIX), "iptables-nft-save": (0, SAVE_WITH_FELIX)},
     ("legacy", SAVE_WITH_FELIX)),
])
def test_felix_table_finds_the_backend_holding_felixs_chains(outputs, expected):
    assert felix_table(4, runner=saving(outputs), which=lambda command: command) == expected


def test_felix_table_skips_a_backend_whose_tools_are_missing():
    outputs = {"ip6tables-nft-save": (0, SAVE_WITH_FELIX)}
    found = felix_table(6, runner=saving(outputs), which=lambda c: c if c in outputs else None)
    assert found == ("nft", SAVE_WITH_FELIX)
