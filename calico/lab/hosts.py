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
``host-1-acl-manager``, and ``host-N-tunl0`` where the kernel has no
IP-in-IP and the lab runs its user-space tunl0 (``calico.lab.ipip``).

Every component serves health and metrics (``calico.common.health``) on
its default port on the host namespace's own 127.0.0.1 (Felix 9099, plugin
9097 and 9098, ACL manager 9096), with Prometheus metrics on
(``CALICO_LAB_METRICS=0`` in the environment of ``up`` turns them off, for
measuring what they cost); ``calico-lab status`` reads them there
(``calico.status``).

Cluster settings ([global] in the cluster file) change with ``set_settings``:
it rewrites the cluster file, which Felix re-reads by itself, and renders
every host's BIRD config again and has BIRD reload it (``birdc configure``),
as an operator does on real hosts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from calico import bird, netns
from calico.common import settings
from calico.common.datafiles import Cluster, load_cluster, parse_data_text, write_file_atomically
from calico.lab import ipip, processes
from calico.lab.layout import FABRIC_PREFIXLEN, LabError, Layout, host_ip, host_name, subnet_of
from calico.lab.state import load as load_state
from calico.lab.state import save as save_state

TIMEOUT_MS = 2000
KEEPALIVE_MS = 500
ENDPOINT_RETRY_MS = 100
COMPONENTS = ("bird", "felix", "plugin-ep", "plugin-network", "acl-manager")
PLUGIN_HOST_COMPONENTS = ("plugin-ep", "plugin-network", "acl-manager")
STANDIN = "tunl0"  # the user-space tunl0 (calico.lab.ipip), before BIRD and Felix


def metrics_on() -> bool:
    """The lab's components serve Prometheus metrics unless CALICO_LAB_METRICS=0."""
    return os.environ.get("CALICO_LAB_METRICS", "1").strip().lower() not in ("0", "false", "no", "off")


def label(index: int, component: str) -> str:
    return f"{host_name(index)}-{component}"


def components_of(index: int, standin: bool = False) -> tuple[str, ...]:
    own = COMPONENTS if index == 1 else ("bird", "felix")
    return ((STANDIN,) + own) if standin else own


def _script(name: str) -> str:
    """A console script of this package, from the same environment as us."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else (shutil.which(name) or name)


def cluster_file_text(count: int, extra: str = "", subnets: int = 1,
                      settings: dict[str, str] | None = None) -> str:
    lines = []
    if settings:
        lines += ["[global]", *(f"{key} = {value}" for key, value in settings.items()), ""]
    for index in range(1, count + 1):
        lines += [f"[felix {host_name(index)}]", f"ip={host_ip(index, subnets)}", f"host={host_name(index)}", ""]
    return "\n".join(lines) + extra


def write_cluster_file(layout: Layout, count: int, extra: str = "", subnets: int = 1,
                       settings: dict[str, str] | None = None) -> None:
    os.makedirs(layout.data_dir, exist_ok=True)
    write_file_atomically(layout.cluster_file, cluster_file_text(count, extra, subnets, settings))


def with_global_settings(text: str, changes: dict[str, str]) -> str:
    """The cluster file's text with these [global] keys set (others kept)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "[global]"), None)
    if start is None:
        return "\n".join(["[global]", *(f"{k} = {v}" for k, v in changes.items()), "", *lines]) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("[")), len(lines))
    body = [line for line in lines[start + 1:end]
            if line.split("=", 1)[0].strip().lower() not in changes]
    while body and not body[-1].strip():
        body.pop()
    body += [f"{k} = {v}" for k, v in changes.items()] + [""]
    return "\n".join(lines[:start + 1] + body + lines[end:]) + "\n"


def set_settings(layout: Layout, count: int, changes: dict[str, str]) -> list[str]:
    """Change [global] settings of a running lab; returns problems (empty when all is well)."""
    with open(layout.cluster_file, encoding="utf-8") as handle:
        text = handle.read()
    new_text = with_global_settings(text, changes)
    contents = parse_data_text(new_text, "felix.txt")
    if contents.errors:
        raise LabError(contents.errors[0])
    lab = load_state(layout)
    if contents.global_settings and contents.global_settings.ipip != "never" and not lab.ipip_standin:
        # First use of IP-in-IP in a lab made without it: does the kernel have it?
        if not ipip.kernel_can_create(netns.argv(layout.host_ns(1), [])):
            lab.ipip_standin = True
            save_state(layout, lab)
    if lab.ipip_standin:  # before Felix reads the new setting, so it finds tunl0
        for index in range(1, count + 1):
            if processes.alive(layout, label(index, STANDIN)) is None:
                start_component(layout, index, STANDIN)
                _wait_for_device(layout.host_ns(index), "tunl0")
    write_file_atomically(layout.cluster_file, new_text)
    cluster = load_lab_cluster(layout)
    problems = []
    for index in range(1, count + 1):
        write_configs(layout, index, cluster)
        result = subprocess.run(["birdc", "-s", layout.bird_socket(index), "configure"],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0 or "Reconfigur" not in result.stdout:
            problems.append(f"{host_name(index)}: birdc configure: {(result.stdout + result.stderr).strip()!r}")
    return problems


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
    subnet = f"10.240.{subnet_of(index, load_state(layout).subnets)}.0/{FABRIC_PREFIXLEN}"
    write_file_atomically(os.path.join(layout.host_dir(index), "bird.conf"),
                          bird.render(cluster, local, log_path=layout.log_file(label(index, "bird")), subnet=subnet))
    plugin = cluster.plugin_host.ip
    common = {"log_severity_file": "INFO", "log_severity_screen": "NONE",
              "connection_timeout_millis": TIMEOUT_MS, "connection_keepalive_interval_millis": KEEPALIVE_MS,
              "cluster_secret_file": layout.secret_file, "prometheus_metrics_enabled": metrics_on()}
    felix_cfg = settings.render_config({
        "plugin_address": plugin, "acl_address": plugin, "felix_hostname": local.name, "local_address": local.ip,
        "endpoint_retry_time_millis": ENDPOINT_RETRY_MS, "log_file_path": layout.log_file(label(index, "felix")),
        **common})
    write_file_atomically(os.path.join(layout.host_dir(index), "felix.cfg"), felix_cfg)
    if index == 1:
        acl_cfg = settings.render_config({
            "plugin_address": plugin, "local_address": local.ip,
            "log_file_path": layout.log_file(label(index, "acl-manager")), **common})
        write_file_atomically(os.path.join(layout.host_dir(index), "acl_manager.cfg"), acl_cfg)


def command(layout: Layout, index: int, component: str) -> list[str]:
    host_dir = layout.host_dir(index)
    if component == STANDIN:
        return [sys.executable, "-m", "calico.lab.ipip", layout.lab_dir]
    if component == "bird":
        return ["bird", "-f", "-c", os.path.join(host_dir, "bird.conf"), "-s", layout.bird_socket(index)]
    if component == "felix":
        return [_script("calico-felix"), "--config-file", os.path.join(host_dir, "felix.cfg")]
    if component in ("plugin-ep", "plugin-network"):
        api = component.split("-", 1)[1]
        bind = host_ip(index, load_state(layout).subnets)
        return [_script("calico-plugin"), api, *settings.flag_args(component, {
            "data_dir": layout.data_dir, "local_address": bind, "log_file_path": layout.log_file(label(index, component)),
            "connection_timeout_millis": TIMEOUT_MS, "connection_keepalive_interval_millis": KEEPALIVE_MS,
            "cluster_secret_file": layout.secret_file, "prometheus_metrics_enabled": metrics_on()})]
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


def setup_host(layout: Layout, index: int, cluster: Cluster, components: tuple[str, ...] | None = None,
               standin: bool = False) -> None:
    prepare_host(layout, index, cluster)
    write_configs(layout, index, cluster)
    if standin:
        start_component(layout, index, STANDIN)
        _wait_for_device(layout.host_ns(index), "tunl0")
    for component in components_of(index):
        if components is None or component in components:
            start_component(layout, index, component)


def load_lab_cluster(layout: Layout) -> Cluster:
    return load_cluster(layout.cluster_file)


def birdc(layout: Layout, index: int, *args: str) -> str:
    result = subprocess.run(["birdc", "-s", layout.bird_socket(index), *args],
                            capture_output=True, text=True, timeout=10)
    return result.stdout if result.returncode == 0 else ""


def _wait_for_device(ns: str, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while netns.run(ns, ["ip", "link", "show", name], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise LabError(f"{name} did not appear in {ns}")
        time.sleep(0.05)


def bgp_sessions(layout: Layout, index: int) -> dict[str, str]:
    """BGP protocol name -> state/info column, from ``birdc show protocols``."""
    sessions = {}
    for line in birdc(layout, index, "show", "protocols").splitlines():
        words = line.split()
        if len(words) >= 4 and words[1] == "BGP":
            sessions[words[0]] = " ".join(words[5:]) if len(words) > 5 else words[3]
    return sessions


def expected_sessions(cluster: Cluster, index: int) -> int:
    """How many BGP sessions host ``index`` has: n-1 in a full mesh, fewer with reflectors."""
    local = cluster.host(host_name(index))
    return len(bird.peers_of(cluster, local)) if local is not None else 0


def wait_for_bgp(layout: Layout, count: int, timeout: float = 30.0, skip: tuple[int, ...] = ()) -> bool:
    """True once every host (but those in ``skip``) has every session Established."""
    cluster = load_lab_cluster(layout)
    expected = {i: expected_sessions(cluster, i) for i in range(1, count + 1) if i not in skip}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(s) == expected[i] and all("Established" in v for v in s.values())
               for i, s in ((i, bgp_sessions(layout, i)) for i in expected)):
            return True
        time.sleep(0.2)
    return False
