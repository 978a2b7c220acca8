"""Secure by default: no usable cluster secret, no start (one line, exit 2).

Each real component is started as a user would, with the secret missing,
malformed or given through the environment, and must stop before binding
anything with one line on stderr that says what is wrong and what to do.
Insecure mode and a secret others may read are announced with a warning at
every start (the insecure runs here bind on 127.0.4.x, this file's range).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import polling
import testkeys

BIND = "127.0.4.1"


@pytest.fixture(autouse=True)
def own_address_range(loopback_range):
    with loopback_range("127.0.4"):
        yield


def run(args, env_extra=None, timeout=30):
    env = {"PATH": "/usr/bin:/bin", "CALICO_CLUSTER_FILE": "/nonexistent/felix.txt", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env)


def plugin_args(tmp_path, *extra):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return ["calico.plugin.main", "ep", "--data-dir", str(data), "--bind", BIND,
            "--log-file", str(tmp_path / "plugin.log"), *extra]


def acl_manager_args(tmp_path, security_section):
    config = tmp_path / "acl_manager.cfg"
    config.write_text(f"[global]\nPluginAddress = {BIND}\nLocalAddress = {BIND}\n{security_section}")
    return ["calico.acl_manager.main", "--config-file", str(config), "--log-file", str(tmp_path / "acl.log")]


def felix_args(tmp_path, security_section):
    config = tmp_path / "felix.cfg"
    config.write_text(f"[global]\nPluginAddress = {BIND}\nACLAddress = {BIND}\nFelixHostname = h1\n"
                      f"LocalAddress = {BIND}\n{security_section}")
    return ["calico.felix.main", "--config-file", str(config), "--log-file", str(tmp_path / "felix.log")]


def bad_secret(tmp_path, content):
    path = tmp_path / "bad.secret"
    path.write_text(content)
    os.chmod(path, 0o600)
    return str(path)


def one_line_exit_2(result, program, *fragments):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: cluster secret "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


MISSING = "/nonexistent/cluster.secret"
WHAT_TO_DO = "make one with make_secret.sh (README: Deploying on real hosts with Docker)"


def test_plugin_without_a_secret_does_not_start(tmp_path):
    result = run(plugin_args(tmp_path, "--secret-file", MISSING))
    one_line_exit_2(result, "calico-plugin", f"{MISSING}: no such file", WHAT_TO_DO,
                    "for experiments only set --insecure (or CALICO_INSECURE=1)")
    bad = bad_secret(tmp_path, "0123456789ABCDEF" * 4 + "\n")
    one_line_exit_2(run(plugin_args(tmp_path, "--secret-file", bad)), "calico-plugin",
                    "not 64 lower-case hex digits on one line")
    # The environment names the file when the flag does not.
    one_line_exit_2(run(plugin_args(tmp_path), {"CALICO_SECRET_FILE": bad}), "calico-plugin", bad)
    # And by default it is the image's /etc/calico/cluster.secret.
    if not os.path.exists("/etc/calico/cluster.secret"):
        one_line_exit_2(run(plugin_args(tmp_path)), "calico-plugin", "/etc/calico/cluster.secret: no such file")


def test_acl_manager_without_a_secret_does_not_start(tmp_path):
    one_line_exit_2(run(acl_manager_args(tmp_path, f"[security]\nClusterSecretFile = {MISSING}\n")),
                    "calico-acl-manager", f"{MISSING}: no such file", WHAT_TO_DO,
                    "set [security] Insecure = true (or CALICO_INSECURE=1)")
    bad = bad_secret(tmp_path, "x" * 64 + "\n")
    one_line_exit_2(run(acl_manager_args(tmp_path, f"[security]\nClusterSecretFile = {bad}\n")),
                    "calico-acl-manager", "not 64 lower-case hex digits")
    # An empty key leaves it to the environment.
    one_line_exit_2(run(acl_manager_args(tmp_path, "[security]\nClusterSecretFile =\n"), {"CALICO_SECRET_FILE": bad}),
                    "calico-acl-manager", bad)


def test_felix_without_a_secret_does_not_start(tmp_path):
    # (It stops before it touches the dataplane, so this is safe outside a namespace.)
    one_line_exit_2(run(felix_args(tmp_path, f"[security]\nClusterSecretFile = {MISSING}\n")),
                    "calico-felix", f"{MISSING}: no such file", WHAT_TO_DO)
    bad = bad_secret(tmp_path, testkeys.SECRET.hex() + "\n\n")
    one_line_exit_2(run(felix_args(tmp_path, ""), {"CALICO_SECRET_FILE": bad}), "calico-felix", bad,
                    "not 64 lower-case hex digits")


def test_a_bad_insecure_setting_is_a_config_error(tmp_path):
    result = run(acl_manager_args(tmp_path, "[security]\nInsecure = maybe\n"))
    assert result.returncode == 2 and "[security] Insecure = 'maybe'" in result.stderr
    result = run(plugin_args(tmp_path), {"CALICO_INSECURE": "maybe"})
    assert result.returncode == 2 and "CALICO_INSECURE" in result.stderr


def warned_at_start(spawn, tmp_path, args, name, log_file, env_extra, text, times=1):
    """Start a component for real, wait for the warning (its ``times``-th in
    the log); stop it."""
    saved = {k: os.environ.get(k) for k in env_extra}
    os.environ.update(env_extra)
    try:
        component = spawn(["-m", *args], name, log_file)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    polling.wait_until(lambda: component.log().count(text) >= times or not component.alive,
                       what=f"{name}'s warning")
    assert component.alive, component.output()
    component.stop()
    return component.log()


INSECURE = "WARNING __main__: INSECURE (--insecure (or CALICO_INSECURE=1)): the control plane is " \
           "neither authenticated nor encrypted"


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_insecure_plugin_warns_at_every_start(spawn, tmp_path, how):
    args = plugin_args(tmp_path, "--secret-file", MISSING, *(["--insecure"] if how == "flag" else []))
    env = {"CALICO_INSECURE": "1"} if how == "environment" else {}
    for times in (1, 2):
        log = warned_at_start(spawn, tmp_path, args, f"plugin{times}", str(tmp_path / "plugin.log"), env, INSECURE,
                              times)
    assert log.count(INSECURE) == 2


def test_insecure_acl_manager_warns(spawn, tmp_path):
    log = warned_at_start(spawn, tmp_path, acl_manager_args(tmp_path, "[security]\nInsecure = true\n"),
                          "acl", str(tmp_path / "acl.log"), {}, "INSECURE ([security] Insecure = true")
    assert "WARNING calico.acl_manager: INSECURE" in log
    log = warned_at_start(spawn, tmp_path, acl_manager_args(tmp_path, ""), "acl2", str(tmp_path / "acl.log"),
                          {"CALICO_INSECURE": "1"}, "INSECURE", times=2)
    assert log.count("INSECURE") == 2


def test_a_secret_others_may_read_is_warned_about_at_start(spawn, tmp_path, cluster_secret_file):
    readable = tmp_path / "readable.secret"
    readable.write_text(open(cluster_secret_file).read())
    os.chmod(readable, 0o640)
    log = warned_at_start(spawn, tmp_path, plugin_args(tmp_path, "--secret-file", str(readable)), "plugin",
                          str(tmp_path / "plugin.log"), {}, "chmod 600")
    assert f"cluster secret {readable} has mode 0640: group or others may read it" in log
