"""The [health] settings of every component: file keys, flags, environment, defaults, bad values."""

import pytest

from calico.common.config import ConfigError, config_keys, load_config
from calico.common.health import health_url
from calico.felix import main as felix_main
from calico.plugin import main as plugin_main

HEALTH_ENV = ("CALICO_HEALTH_ENABLED", "CALICO_HEALTH_HOST", "CALICO_HEALTH_PORT", "CALICO_HEALTH_TIMEOUT_SECS",
              "CALICO_PROMETHEUS_METRICS_ENABLED")


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    for var in HEALTH_ENV:
        monkeypatch.delenv(var, raising=False)


def cfg(tmp_path, text, name="c.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_loopback_and_metrics_off(tmp_path):
    config = load_config(None, env={})
    assert (config.health_enabled, config.health_host, config.health_port, config.health_timeout_secs,
            config.prometheus_metrics_enabled) == (True, "127.0.0.1", 9099, 90, False)
    assert ("health", "HealthPort", 9099) in config_keys()
    # Where calico-health (the images' HEALTHCHECK) looks for each one.
    assert health_url("felix", ["--config-file", cfg(tmp_path, "")]) == "http://127.0.0.1:9099"
    assert health_url("acl-manager", ["--config-file", cfg(tmp_path, "")]) == "http://127.0.0.1:9096"
    assert health_url("plugin-ep", ["ep"]) == "http://127.0.0.1:9097"
    assert health_url("plugin-network", ["network"]) == "http://127.0.0.1:9098"


def test_file_then_environment(tmp_path):
    path = cfg(tmp_path, "[health]\nHealthHost = ::\nHealthPort = 19099\nPrometheusMetricsEnabled = yes\n"
                         "HealthTimeoutSecs = 5\n")
    config = load_config(path, env={"CALICO_HEALTH_PORT": "1", "CALICO_HEALTH_ENABLED": "false"})
    assert (config.health_host, config.health_port, config.prometheus_metrics_enabled,
            config.health_timeout_secs) == ("::", 19099, True, 5)
    assert config.health_enabled is False  # the file left it out: the environment's
    empty = load_config(cfg(tmp_path, "[health]\nHealthPort =\n", "e.cfg"),
                        env={"CALICO_HEALTH_PORT": "9300", "CALICO_PROMETHEUS_METRICS_ENABLED": "1",
                             "CALICO_HEALTH_HOST": "0.0.0.0"})
    assert (empty.health_port, empty.prometheus_metrics_enabled, empty.health_host) == (9300, True, "0.0.0.0")


def test_flags_win(tmp_path):
    path = cfg(tmp_path, "[health]\nHealthPort = 19099\n")
    assert health_url("felix", ["--config-file", path, "--health-port", "29099", "--health-host",
                                "10.1.2.3"]) == "http://10.1.2.3:29099"
    assert health_url("acl-manager", ["--config-file", path, "--health-port", "29096"]) == "http://127.0.0.1:29096"
    assert health_url("acl-manager", ["--config-file", path, "--health-enabled", "false"]) is None


def test_plugin_flags_then_environment(monkeypatch):
    monkeypatch.setenv("CALICO_HEALTH_PORT", "19097")
    monkeypatch.setenv("CALICO_PROMETHEUS_METRICS_ENABLED", "true")
    args = plugin_main.parse_args(["ep"])
    assert (args.health_port, args.prometheus_metrics_enabled) == (19097, True)
    args = plugin_main.parse_args(["network", "--health-port", "29098", "--prometheus-metrics-enabled", "no"])
    assert (args.health_port, args.prometheus_metrics_enabled, args.health_host) == (29098, False, "127.0.0.1")


@pytest.mark.parametrize("key, value", [
    ("HealthPort", "0"), ("HealthPort", "65536"), ("HealthPort", "http"), ("HealthHost", "localhost"),
    ("HealthHost", "224.0.0.1"), ("HealthHost", "1.2.3.4/32"), ("HealthEnabled", "maybe"),
    ("HealthTimeoutSecs", "0"), ("PrometheusMetricsEnabled", "2"),
])
def test_bad_values_are_one_line_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as err:
        load_config(cfg(tmp_path, f"[health]\n{key} = {value}\n"), env={})
    assert f"[health] {key} = " in str(err.value) and "\n" not in str(err.value)


def test_bad_flags(tmp_path, capsys):
    assert felix_main.main(["--config-file", cfg(tmp_path, ""), "--health-port", "99999"]) == 2
    assert "--health-port ([health] HealthPort)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plugin_main.parse_args(["ep", "--health-host", "not-an-ip"])
    assert "--health-host" in capsys.readouterr().err


def test_bad_environment(monkeypatch, capsys):
    monkeypatch.setenv("CALICO_HEALTH_PORT", "ninety")
    with pytest.raises(ConfigError) as err:
        load_config(None)
    assert "CALICO_HEALTH_PORT" in str(err.value)
    with pytest.raises(SystemExit):
        plugin_main.parse_args(["ep"])
    assert "environment CALICO_HEALTH_PORT" in capsys.readouterr().err
