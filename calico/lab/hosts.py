"""Lab hosts: a namespace per host, set up as the seed sets up a server.

Every component gets the lab's cluster secret (``Layout.secret_file``,
written by ``up``), so the lab's control plane is authenticated and
encrypted exactly as a real cluster's is.

Per host: forwarding on, the seed's ``unreachable`` route for the pool
(and pool6), BIRD with the config ``calico.bird`` renders for it, and Felix
with a generated felix.cfg.  Host 1 also runs the plugin (both APIs) and the
ACL manager, with the cluster file and every endpoint file in the lab's data
directory.  Components run with short keepalives and timeouts so that a
killed and restarted process is noticed and caught up within seconds.

Every process is a real console script of this package (or ``bird``)
started through ``calico.lab.processes``; labels are ``host-N-bird``,
``host-N-felix``, ``host-1-plugin-ep``, ``host-1-plugin-network`` and
``host-1-acl-manager``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from calico import bird, netns
from calico.common.datafiles import Cluster, load_cluster, write_file_atomically
from calico.lab import processes
from calico.lab.layout import LabError, Layout, host_ip, host_name

TIMEOUT_MS = 2000
KEEPALIVE_MS = 500
ENDPOINT_RETRY_MS = 100
COMPONENTS = ("bird", "felix", "plugin-ep", "plugin-network", "acl-manager")
PLUGIN_HOST_COMPONENTS = ("plugin-ep", "plugin-network", "acl-manager")


def label(index: int, component: str) -> str:
    return f"{host_name(index)}-{component}"


def components_of(index: int) -> tuple[str, ...]:
    return COMPONENTS if index == 1 else ("bird", "felix")


def _script(name: str) -> str:
    """A console script of this package, from the same environment as us."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else (shutil.which(name) or name)


def cluster_file_text(count: int, extra: str = "") -> str:
    lines = []
    for index in range(1, count + 1):
        lines += [f"[felix {host_name(index)}]", f"ip={host_ip(index)}", f"host={host_name(index)}", ""]
    return "\n".join(lines) + extra


def write_cluster_file(layout: Layout, count: int, extra: str = "") -> None:
    os.makedirs(layout.data_dir, exist_ok=True)
    write_file_atomically(layout.cluster_file, cluster_file_text(count, extra))


def prepare_host(layout: Layout, index: int, cluster: Cluster) -> None:
    """Kernel settings and the seed's unreachable routes (idempotent)."""
    ns = layout.host_ns(index)
    netns.sysctl(ns, "net.ipv4.ip_forward", "1")
    netns.sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
    for pool in (cluster.settings.pool, cluster.settings.pool6):
        family = "-6" if ":" in pool else "-4"
        netns.run(ns, ["ip", family, "route", "replace", "unreachable", pool])


def write_configs(layout: Layout, index: int, cluster: Cluster) -> None:
    os.makedirs(layout.host_dir(index), exist_ok=True)
    local = cluster.host(host_name(index))
    if local is None:
        raise LabError(f"{host_name(index)} is not in {layout.cluster_file}")
    write_file_atomically(os.path.join(layout.host_dir(index), "bird.conf"),
                          bird.render(cluster, local, log_path=layout.log_file(label(index, "bird"))))
    plugin = cluster.plugin_host.ip
    felix_cfg = "\n".join([
        "[global]",
        f"PluginAddress = {plugin}",
        f"ACLAddress = {plugin}",
        f"FelixHostname = {local.name}",
        f"LocalAddress = {local.ip}",
        f"EndpointRetryTimeMillis = {ENDPOINT_RETRY_MS}",
        "[log]",
        f"LogFilePath = {layout.log_file(label(index, 'felix'))}",
        "LogSeverityFile = INFO",
        "LogSeverityScreen = NONE",
        "[connection]",
        f"ConnectionTimeoutMillis = {TIMEOUT_MS}",
        f"ConnectionKeepaliveIntervalMillis = {KEEPALIVE_MS}",
        "[security]",
        f"ClusterSecretFile = {layout.secret_file}",
        "",
    ])
    write_file_atomically(os.path.join(layout.host_dir(index), "felix.cfg"), felix_cfg)
    if index == 1:
        acl_cfg = "\n".join([
            "[global]",
            f"PluginAddress = {plugin}",
            f"LocalAddress = {local.ip}",
            "[log]",
            f"LogFilePath = {layout.log_file(label(index, 'acl-manager'))}",
            "LogSeverityFile = INFO",
            "LogSeverityScreen = NONE",
            "[connection]",
            f"ConnectionTimeoutMillis = {TIMEOUT_MS}",
            f"ConnectionKeepaliveIntervalMillis = {KEEPALIVE_MS}",
            "[security]",
            f"ClusterSecretFile = {layout.secret_file}",
            "",
        ])
        write_file_atomically(os.path.join(layout.host_dir(index), "acl_manager.cfg"), acl_cfg)


def command(layout: Layout, index: int, component: str) -> list[str]:
    host_dir = layout.host_dir(index)
    if component == "bird":
        return ["bird", "-f", "-c", os.path.join(host_dir, "bird.conf"), "-s", layout.bird_socket(index)]
    if component == "felix":
        return [_script("calico-felix"), "--config-file", os.path.join(host_dir, "felix.cfg")]
    if component in ("plugin-ep", "plugin-network"):
        api = component.split("-", 1)[1]
        return [_script("calico-plugin"), api, "--data-dir", layout.data_dir, "--bind", host_ip(index),
                "--log-file", layout.log_file(label(index, component)),
                "--connection-timeout-ms", str(TIMEOUT_MS), "--keepalive-ms", str(KEEPALIVE_MS),
                "--secret-file", layout.secret_file]
    if component == "acl-manager":
        return [_script("calico-acl-manager"), "--config-file", os.path.join(host_dir, "acl_manager.cfg")]
    raise LabError(f"unknown component {component!r} (want one of {', '.join(COMPONENTS)})")


def component_env(layout: Layout) -> dict[str, str]:
    # Felix and the ACL manager may look at the cluster file to resolve peers.
    return {"CALICO_CLUSTER_FILE": layout.cluster_file, "PYTHONUNBUFFERED": "1"}


def start_component(layout: Layout, index: int, component: str) -> int:
    existing = processes.alive(layout, label(index, component))
    if existing is not None:
        return existing
    return processes.start(layout, label(index, component), layout.host_ns(index),
                           command(layout, index, component), component_env(layout))


def setup_host(layout: Layout, index: int, cluster: Cluster, components: tuple[str, ...] | None = None) -> None:
    prepare_host(layout, index, cluster)
    write_configs(layout, index, cluster)
    for component in components_of(index):
        if components is None or component in components:
            start_component(layout, index, component)


def load_lab_cluster(layout: Layout) -> Cluster:
    return load_cluster(layout.cluster_file)


def birdc(layout: Layout, index: int, *args: str) -> str:
    result = subprocess.run(["birdc", "-s", layout.bird_socket(index), *args],
                            capture_output=True, text=True, timeout=10)
    return result.stdout if result.returncode == 0 else ""


def bgp_sessions(layout: Layout, index: int) -> dict[str, str]:
    """BGP protocol name -> state/info column, from ``birdc show protocols``."""
    sessions = {}
    for line in birdc(layout, index, "show", "protocols").splitlines():
        words = line.split()
        if len(words) >= 4 and words[1] == "BGP":
            sessions[words[0]] = " ".join(words[5:]) if len(words) > 5 else words[3]
    return sessions


def wait_for_bgp(layout: Layout, count: int, timeout: float = 30.0) -> bool:
    """True once every host has every session Established."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(s) == count - 1 and all("Established" in v for v in s.values())
               for s in (bgp_sessions(layout, i) for i in range(1, count + 1))):
            return True
        time.sleep(0.2)
    return False
