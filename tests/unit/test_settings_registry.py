"""The settings registry (calico.common.settings): complete, unique, strict,
honest about where each value came from, and the source of the command
lines, the lab's config files and the README's table."""

import argparse
import configparser
import logging
import os
import re
import subprocess

import pytest

from calico.common import settings
from calico.common.config import ConfigError, load_config, read_settings
from calico.acl_manager import main as acl_main
from calico.felix import main as felix_main
from calico.plugin import main as plugin_main

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

# The flags each component took before the registry (felix's OVERRIDES, the
# ACL manager's and the plugin's argparse): the seed's command lines and
# every script written since rely on them.
FLAGS_BEFORE = {
    settings.FELIX: {
        "--config-file", "--plugin-address", "--acl-address", "--hostname", "--local-address", "--log-file",
        "--log-severity-file", "--log-severity-screen", "--connection-timeout-ms", "--keepalive-ms",
        "--resync-interval-secs", "--endpoint-retry-ms", "--max-message-bytes", "--secret-file", "--insecure",
        "--endpoint-to-host-action", "--ip-pool", "--ip-pool6", "--max-endpoints", "--health-enabled",
        "--health-host", "--health-port", "--health-timeout-secs", "--prometheus-metrics-enabled",
        "--iptables-backend"},
    settings.ACL_MANAGER: {
        "--config-file", "--plugin-address", "--bind", "--log-file", "--connection-timeout-ms", "--keepalive-ms",
        "--health-enabled", "--health-host", "--health-port", "--health-timeout-secs",
        "--prometheus-metrics-enabled"},
    settings.PLUGIN_EP: {
        "--data-dir", "--bind", "--log-file", "--log-level", "--connection-timeout-ms", "--keepalive-ms", "--watch",
        "--poll-interval-ms", "--max-message-bytes", "--secret-file", "--insecure", "--health-enabled",
        "--health-host", "--health-port", "--health-timeout-secs", "--prometheus-metrics-enabled"},
}


@pytest.fixture(autouse=True)
def no_calico_environment(monkeypatch):
    for var in list(os.environ):
        if var.startswith("CALICO_"):
            monkeypatch.delenv(var)


def parser_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {option: action.dest for action in parser._actions for option in action.option_strings
            if option not in ("-h", "--help")}


def component_parser(component: str) -> argparse.ArgumentParser:
    captured = {}

    class Captured(Exception):
        pass

    def capture(self, args=None, namespace=None):
        captured["parser"] = self
        raise Captured

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(Captured):
            {settings.FELIX: lambda: felix_main._arguments([]),
             settings.ACL_MANAGER: lambda: acl_main.parse_args([]),
             settings.PLUGIN_EP: lambda: plugin_main.parse_args(["ep"])}[component]()
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


# --- complete and unique ---------------------------------------------------------

def test_every_setting_is_described_and_unique():
    names = [s.name for s in settings.SETTINGS]
    assert len(names) == len(set(names))
    keys = [(s.section, s.key) for s in settings.FILE_SETTINGS]
    assert len(keys) == len(set(keys))
    envs = [s.env for s in settings.SETTINGS if s.env]
    assert len(envs) == len(set(envs))
    for s in settings.SETTINGS:
        assert s.description and "\n" not in s.description, s.name
        assert s.components, s.name
        assert bool(s.section) == bool(s.key), s.name
        assert s.env or s.key or s.flags, f"{s.name}: neither a key, a variable nor a flag"
    for component in settings.DAEMONS:
        flags = [f.name for s in settings.SETTINGS for f in s.flags if component in f.components]
        assert len(flags) == len(set(flags)), component


def test_every_calico_variable_in_the_tree_is_declared():
    """A CALICO_* variable read anywhere (code, scripts, Dockerfiles, tests) is in the registry."""
    declared = {s.env for s in settings.SETTINGS if s.env}
    out = subprocess.run(["git", "grep", "-hoE", r"\bCALICO_[A-Z0-9_]+", "--", ".", ":!*.tar.gz"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    # CALICO_LAB / CALICO_STATUS are test-name prefixes, CALICO_HEALTH_ a family: not variables
    found = {name for name in out.split() if name not in ("CALICO_LAB", "CALICO_STATUS") and not name.endswith("_")}
    assert found - declared == set()


def test_test_hooks_are_declared_as_such():
    hooks = {s.env for s in settings.SETTINGS if s.test_hook}
    assert hooks == {"CALICO_DEBUG_STALL_FILE", "CALICO_REQUIRE_ROOT_TESTS", "CALICO_DOCKER_IMAGES_TAR"}


def test_the_seed_config_files_hold_only_registry_keys():
    for name in ("felix.cfg", "acl_manager.cfg"):
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str
        parser.read(os.path.join(ROOT, "felix", name))
        for section in parser.sections():
            for key in parser[section]:
                assert settings.by_key(section, key) is not None, (name, section, key)


# --- parsers -------------------------------------------------------------------------

@pytest.mark.parametrize("name, bad", [
    ("resync_interval_secs", "0"), ("resync_interval_secs", "soon"), ("health_port", "65536"),
    ("health_host", "localhost"), ("plugin_address", "10.0.0.300"), ("felix_hostname", "bad host"),
    ("log_severity_file", "LOUD"), ("insecure", "maybe"), ("ip_pool", "fd00::/64"), ("ip_pool6", "10.0.0.0/8"),
    ("max_message_bytes", "10"), ("iptables_backend", "ebpf"), ("watch", "fanotify"), ("log_level", "NONE"),
    ("default_endpoint_to_host_action", "REJECT"), ("poll_interval_ms", "-5"),
])
def test_parsers_reject_bad_values_with_one_line(name, bad):
    s = settings.setting(name)
    with pytest.raises(settings.SettingError) as err:
        settings.resolve([s], s.components[0], {}, flag_values={name: bad})
    assert "\n" not in str(err.value) and repr(bad) in str(err.value)
    if s.key:
        with pytest.raises(ConfigError) as err:
            settings.resolve([s], settings.FELIX, {}, file_values={name: bad}, file_source="f.cfg")
        assert str(err.value).startswith(f"f.cfg: [{s.section}] {s.key} = ") and "\n" not in str(err.value)


def test_defaults_parse_back_to_themselves():
    for s in settings.SETTINGS:
        for component in s.components:
            value = s.default_for(component)
            if s.parse is not settings.text_value and format_value_ok(value):
                assert s.parse(settings.format_value(value)) == value, (s.name, component)


def format_value_ok(value) -> bool:
    return value not in ("", ())  # "unset" defaults are not values of the parser


# --- origins ---------------------------------------------------------------------------

def test_origin_is_flag_then_file_then_environment_then_default(tmp_path):
    path = tmp_path / "felix.cfg"
    path.write_text("[health]\nHealthPort = 19099\nHealthHost =\n[global]\nPluginAddress = IP1\n")
    env = {"CALICO_HEALTH_HOST": "0.0.0.0", "CALICO_HEALTH_PORT": "1", "CALICO_PLUGIN_ADDRESS": "10.0.0.1",
           "CALICO_ACL_ADDRESS": "IP2"}
    config = load_config(str(path), env=env)
    assert (config.health_port, config.origins["health_port"]) == (19099, f"file {path}")
    assert (config.health_host, config.origins["health_host"]) == ("0.0.0.0", "environment CALICO_HEALTH_HOST")
    # a seed placeholder in the file, and in the environment, counts as unset
    assert (config.plugin_address, config.origins["plugin_address"]) == ("10.0.0.1",
                                                                         "environment CALICO_PLUGIN_ADDRESS")
    assert (config.acl_address, config.origins["acl_address"]) == ("", "default")
    args = felix_main._arguments(["--config-file", str(path), "--health-port", "29099"])
    config = read_settings(settings.FELIX, args, env)
    assert (config.health_port, config.origins["health_port"]) == (29099, "flag --health-port")
    assert config.origins["config_file"] == "flag --config-file"


def test_plugin_origins(monkeypatch):
    monkeypatch.setenv("CALICO_HEALTH_PORT", "19097")
    args = plugin_main.parse_args(["ep", "--keepalive-ms", "250"])
    assert args.origins["health_port"] == "environment CALICO_HEALTH_PORT"
    assert args.origins["connection_keepalive_interval_millis"] == "flag --keepalive-ms"
    assert args.origins["data_dir"] == "default" and args.data_dir == "/opt/plugin/data"
    monkeypatch.setenv("CALICO_DATA_DIR", "/elsewhere")  # calico-attach's variable, not the plugin's
    assert plugin_main.parse_args(["ep"]).data_dir == "/opt/plugin/data"


def test_each_component_logs_every_setting_once_with_its_origin(caplog):
    args = plugin_main.parse_args(["network", "--health-port", "29098"])
    with caplog.at_level(logging.INFO, logger="t"):
        settings.log_effective(logging.getLogger("t"), settings.PLUGIN_NETWORK, vars(args), args.origins, {})
    lines = [r.getMessage() for r in caplog.records]
    assert "setting [health] HealthPort = '29098' (flag --health-port)" in lines
    assert "setting --data-dir = '/opt/plugin/data' (default)" in lines
    told = [line.split(" = ")[0] for line in lines]
    assert len(told) == len(set(told)) == len([s for s in settings.of_component(settings.PLUGIN_NETWORK)
                                               if not s.test_hook])


# --- the command lines ---------------------------------------------------------------------

@pytest.mark.parametrize("component", [settings.FELIX, settings.ACL_MANAGER, settings.PLUGIN_EP])
def test_argparse_flags_match_the_registry_and_the_flags_before_it(component):
    flags = parser_flags(component_parser(component))
    assert set(flags) == FLAGS_BEFORE[component]
    # Each flag sets the setting that declares it for this component.
    assert all(settings.BY_NAME[dest].flag_for(component).name == flag for flag, dest in flags.items())


def test_plugin_insecure_is_a_switch_felix_takes_a_value():
    assert plugin_main.parse_args(["ep", "--insecure"]).insecure is True
    assert plugin_main.parse_args(["ep"]).insecure is False
    args = felix_main._arguments(["--config-file", os.devnull, "--insecure", "yes"])
    assert read_settings(settings.FELIX, args, {}).insecure is True


def test_flag_args_round_trip_through_the_plugin_parser():
    values = {"data_dir": "/d", "local_address": "10.1.2.3", "connection_timeout_millis": 2000,
              "prometheus_metrics_enabled": True, "insecure": True}
    args = plugin_main.parse_args(["ep", *settings.flag_args(settings.PLUGIN_EP, values)])
    assert {name: getattr(args, name) for name in values} == values


# --- the lab's config files and the README ----------------------------------------------------

def test_render_config_writes_what_the_lab_wrote_before():
    text = settings.render_config({
        "plugin_address": "10.240.0.11", "acl_address": "10.240.0.11", "felix_hostname": "host-1",
        "local_address": "10.240.0.11", "endpoint_retry_time_millis": 100, "log_file_path": "/l/felix.log",
        "log_severity_file": "INFO", "log_severity_screen": "NONE", "connection_timeout_millis": 2000,
        "connection_keepalive_interval_millis": 500, "cluster_secret_file": "/l/secret",
        "prometheus_metrics_enabled": True})
    assert text == "\n".join([
        "[global]", "PluginAddress = 10.240.0.11", "ACLAddress = 10.240.0.11", "FelixHostname = host-1",
        "LocalAddress = 10.240.0.11", "EndpointRetryTimeMillis = 100", "[log]", "LogFilePath = /l/felix.log",
        "LogSeverityFile = INFO", "LogSeverityScreen = NONE", "[connection]", "ConnectionTimeoutMillis = 2000",
        "ConnectionKeepaliveIntervalMillis = 500", "[security]", "ClusterSecretFile = /l/secret", "[health]",
        "PrometheusMetricsEnabled = true", ""])


def test_render_config_reads_back(tmp_path):
    values = {"ip_pool": ("10.0.0.0/8", "172.16.0.0/12"), "insecure": True, "max_endpoints": 7}
    path = tmp_path / "x.cfg"
    path.write_text(settings.render_config(values))
    config = load_config(str(path), env={})
    assert {name: getattr(config, name) for name in values} == values
    with pytest.raises(KeyError):
        settings.render_config({"watch": "poll"})


def test_readme_settings_table_is_current():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    found = re.search(r"<!-- settings-table: start [^>]*-->\n(.*)\n<!-- settings-table: end -->", text, re.S)
    assert found, "README.md has lost its settings-table markers"
    assert found.group(1) == settings.markdown_table(), "run scripts/update-settings-table.py"


def test_readme_health_table_agrees_with_the_registry():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        rows = [line for line in handle if re.match(r"\| (Health|Prometheus)\w+ \| `--", line)]
    assert len(rows) == 5
    for row in rows:
        key, flag, env = (cell.strip(" `") for cell in row.strip().strip("|").split("|")[:3])
        s = settings.by_key("health", key)
        assert s is not None and s.flags[0].name == flag and s.env == env


@pytest.mark.parametrize("given, bound", [("*", "*"), ("0.0.0.0", "0.0.0.0"), ("::", "::"), ("[::1]", "::1"),
                                          ("10.0.0.1", "10.0.0.1"), ("localhost", "localhost")])
def test_plugin_bind_takes_what_zeromq_binds_to(given, bound):
    # The plugin's --bind went to ZeroMQ as given before the registry; these
    # are the forms an operator writes.
    args = plugin_main.parse_args(["network", "--bind", given])
    assert args.local_address == bound


def test_a_bind_address_is_still_checked():
    with pytest.raises(SystemExit):
        plugin_main.parse_args(["network", "--bind", "10.0.0.999"])
