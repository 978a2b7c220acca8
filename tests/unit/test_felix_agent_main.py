"""calico-felix's start-up: config file plus flag overrides, and its errors."""

import pytest

from calico.common.netns import owned_addresses
from calico.felix import main as felix_main

GOOD = """[global]
PluginAddress = 127.0.0.1
ACLAddress = 127.0.0.2
FelixHostname = host-1.example.com
[connection]
ConnectionTimeoutMillis = 3000
"""


@pytest.fixture(autouse=True)
def no_environment(monkeypatch, tmp_path):
    for var in ("CALICO_PLUGIN_ADDRESS", "CALICO_ACL_ADDRESS", "CALICO_FELIX_HOSTNAME", "CALICO_HOSTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CALICO_CLUSTER_FILE", str(tmp_path / "no-such-cluster-file"))


def write(tmp_path, text):
    path = tmp_path / "felix.cfg"
    path.write_text(text)
    return str(path)


def test_config_file_and_overrides(tmp_path):
    config = felix_main.load(["--config-file", write(tmp_path, GOOD), "--acl-address", "127.0.0.9",
                              "--keepalive-ms", "250", "--endpoint-retry-ms", "100", "--resync-interval-secs", "5",
                              "--local-address", "127.0.0.1", "--log-file", "/tmp/x.log"])
    assert (config.plugin_address, config.acl_address) == ("127.0.0.1", "127.0.0.9")
    assert config.felix_hostname == "host-1"  # compared up to the first dot
    assert config.connection_timeout_millis == 3000
    assert config.connection_keepalive_interval_millis == 250
    assert config.endpoint_retry_time_millis == 100
    assert config.resync_interval_secs == 5
    assert config.local_address == "127.0.0.1" and config.log_file_path == "/tmp/x.log"


def test_hostname_flag_is_shortened(tmp_path):
    config = felix_main.load(["--config-file", write(tmp_path, GOOD), "--hostname", "node7.lab"])
    assert config.felix_hostname == "node7"


@pytest.mark.parametrize("args, key", [
    (["--connection-timeout-ms", "soon"], "ConnectionTimeoutMillis"),
    (["--keepalive-ms", "0"], "ConnectionKeepaliveIntervalMillis"),
    (["--plugin-address", "10.0.0.300"], "PluginAddress"),
    (["--hostname", "bad host"], "FelixHostname"),
    (["--log-severity-file", "LOUD"], "LogSeverityFile"),
])
def test_bad_flag_is_one_line_naming_the_key(tmp_path, capsys, args, key):
    assert felix_main.main(["--config-file", write(tmp_path, GOOD), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err and err.startswith("calico-felix: ")


def test_bad_file_value_is_one_line_naming_the_key(tmp_path, capsys):
    path = write(tmp_path, GOOD + "[log]\nLogSeverityScreen = shouty\n")
    assert felix_main.main(["--config-file", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LogSeverityScreen" in err and path in err


def test_missing_peer_address_is_named(tmp_path, capsys):
    assert felix_main.main(["--config-file", write(tmp_path, "[global]\nFelixHostname = h\n")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PluginAddress" in err


def test_missing_config_file(tmp_path, capsys):
    assert felix_main.main(["--config-file", str(tmp_path / "nope.cfg")]) == 2
    assert "nope.cfg" in capsys.readouterr().err


def test_owned_addresses_lists_this_hosts_addresses():
    assert "127.0.0.1" in owned_addresses()


def test_endpoint_settings_defaults(tmp_path):
    config = felix_main.load(["--config-file", write(tmp_path, GOOD)])
    assert config.default_endpoint_to_host_action == "DROP"
    assert config.max_endpoints == 5000
    # No cluster file readable (see no_environment): the defaults.
    assert config.ip_pool == ("192.168.0.0/16",) and config.ip_pool6 == ("fd80:24e2:f998:72d6::/64",)


def test_endpoint_settings_from_the_file_case_insensitive_and_canonical(tmp_path):
    text = GOOD.replace("[connection]", "DefaultEndpointToHostAction = Return\nIpPool = 10.1.2.3/8, 172.16.0.0/12\n"
                        "IpPool6 = FD00::/64\nMaxEndpoints = 20\n[connection]")
    config = felix_main.load(["--config-file", write(tmp_path, text)])
    assert config.default_endpoint_to_host_action == "RETURN"
    assert config.ip_pool == ("10.0.0.0/8", "172.16.0.0/12") and config.ip_pool6 == ("fd00::/64",)
    assert config.max_endpoints == 20
    flags = felix_main.load(["--config-file", write(tmp_path, GOOD), "--endpoint-to-host-action", "accept",
                             "--max-endpoints", "7", "--ip-pool", "10.5.0.0/16"])
    assert (flags.default_endpoint_to_host_action, flags.max_endpoints, flags.ip_pool) == ("ACCEPT", 7,
                                                                                         ("10.5.0.0/16",))


def test_iptables_backend_defaults_to_auto_and_takes_legacy_or_nft_in_any_case(tmp_path):
    assert felix_main.load(["--config-file", write(tmp_path, GOOD)]).iptables_backend == "auto"
    text = GOOD.replace("[connection]", "IptablesBackend = NFT\n[connection]")
    assert felix_main.load(["--config-file", write(tmp_path, text)]).iptables_backend == "nft"
    flags = felix_main.load(["--config-file", write(tmp_path, text), "--iptables-backend", "Legacy"])
    assert flags.iptables_backend == "legacy"


def test_empty_pools_come_from_the_cluster_file(tmp_path, monkeypatch):
    cluster = tmp_path / "felix.txt"
    cluster.write_text("[global]\npool = 10.20.0.0/16\npool6 = fd00:20::/64\n\n"
                       "[felix host-1]\nip = 127.0.0.1\nhost = host-1\n")
    monkeypatch.setenv("CALICO_CLUSTER_FILE", str(cluster))
    config = felix_main.load(["--config-file", write(tmp_path, GOOD)])
    assert config.ip_pool == ("10.20.0.0/16",) and config.ip_pool6 == ("fd00:20::/64",)
    mixed = felix_main.load(["--config-file", write(tmp_path, GOOD), "--ip-pool", "10.9.0.0/16"])
    assert mixed.ip_pool == ("10.9.0.0/16",) and mixed.ip_pool6 == ("fd00:20::/64",)


@pytest.mark.parametrize("line, key", [
    ("DefaultEndpointToHostAction = REJECT", "DefaultEndpointToHostAction"),
    ("IpPool = fd00::/64", "IpPool"),
    ("IpPool6 = 10.0.0.0/8", "IpPool6"),
    ("IpPool = 10.0.0.0/33", "IpPool"),
    ("MaxEndpoints = 0", "MaxEndpoints"),
    ("MaxEndpoints = lots", "MaxEndpoints"),
    ("IptablesBackend = nftables", "IptablesBackend"),
])
def test_bad_endpoint_setting_is_one_line_naming_the_key(tmp_path, capsys, line, key):
    path = write(tmp_path, GOOD.replace("[connection]", line + "\n[connection]"))
    assert felix_main.main(["--config-file", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"[global] {key} = " in err and path in err
