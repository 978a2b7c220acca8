"""The lab as a whole: ``up``, ``down`` and ``status``.

``up`` is idempotent step by step (namespaces, links and routes that exist
are kept, processes that run are left alone), so it completes a
half-finished ``up``.  ``down`` needs no memory of what ``up`` did: it
stops the processes named by pid files (checking each is still the lab's),
then every process left in a namespace with the lab's prefix, deletes those
namespaces and the files it knows the lab writes.  Running it twice, or
with nothing there, is fine.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time

from calico import netns, status as host_status
from calico.common import health, security
from calico.lab import fabric, hosts, ipip, processes, state
from calico.lab.layout import MAX_HOSTS, MAX_SUBNETS, LabError, Layout, host_ip, host_name


def up(layout: Layout, count: int, components: tuple[str, ...] | None = None,
       cluster_extra: str = "", subnets: int = 1, settings: dict[str, str] | None = None) -> list[str]:
    """Build the lab; returns problems found after start (empty when all is well).

    ``subnets`` spreads the hosts over that many fabrics joined by a router
    (with an outside namespace beyond it); ``settings`` go into the cluster
    file's [global] section (e.g. ``{"ipip": "always", "route_reflectors":
    "host-1, host-2"}``)."""
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"--hosts {count}: want 1 to {MAX_HOSTS}")
    if not 1 <= subnets <= min(MAX_SUBNETS, count):
        raise LabError(f"--subnets {subnets}: want 1 to {min(MAX_SUBNETS, count)} (at most one per host)")
    current = state.load(layout)
    if current.hosts and (current.hosts, current.subnets) != (count, subnets):
        raise LabError(f"a lab with {current.hosts} hosts on {current.subnets} subnet(s) is already up in "
                       f"{layout.lab_dir} (run 'calico-lab down')")
    os.makedirs(layout.lab_dir, exist_ok=True)
    current.hosts, current.subnets = count, subnets
    state.save(layout, current)
    for directory in (layout.data_dir, layout.log_dir, layout.pid_dir):
        os.makedirs(directory, exist_ok=True)
    # As make_secret.sh does for a real cluster; kept by a repeated 'up'.
    security.write_secret(layout.secret_file)
    if not os.path.exists(layout.cluster_file):
        hosts.write_cluster_file(layout, count, cluster_extra, subnets, settings)
    cluster = hosts.load_lab_cluster(layout)
    fabric.create_fabric(layout, subnets)
    for index in range(1, count + 1):
        fabric.plug_host(layout, index, subnets)
    # A lab that may use IP-in-IP (several subnets, or ipip asked for) on a
    # kernel without it gets the user-space tunl0 on each host; the default
    # lab stays as it always was.
    current.ipip_standin = (subnets > 1 or cluster.settings.ipip != "never") and \
        not ipip.kernel_can_create(netns.argv(layout.host_ns(1), []))
    state.save(layout, current)
    # Host 1 first: its plugin and ACL manager are what every Felix connects to.
    for index in range(1, count + 1):
        hosts.setup_host(layout, index, cluster, components, current.ipip_standin)
    problems = []
    if components is None or "bird" in components:
        if count > 1 and not hosts.wait_for_bgp(layout, count):
            problems.append("BGP sessions not all Established after 30 s (see 'calico-lab status')")
    time.sleep(0.3)  # let a component that fails at start-up exit, so we can tell
    for index in range(1, count + 1):
        for component in hosts.components_of(index, current.ipip_standin):
            if (components is None or component in components) and \
                    processes.alive(layout, hosts.label(index, component)) is None:
                problems.append(f"{hosts.label(index, component)} is not running "
                                f"(see {layout.out_file(hosts.label(index, component))})")
    return problems


def lab_namespaces(layout: Layout) -> list[str]:
    return [name for name in netns.names() if layout.owns_ns(name)]


def down(layout: Layout) -> list[str]:
    """Remove everything the lab made; returns a line per kind of thing removed."""
    done = []
    labels = processes.labels(layout)
    stopped = [label for label in labels if processes.stop(layout, label)]
    if stopped:
        done.append(f"stopped {len(stopped)} process(es): {', '.join(stopped)}")
    namespaces = lab_namespaces(layout)
    swept = processes.kill_in_namespaces(namespaces)
    if swept:
        done.append(f"killed {swept} leftover process(es) in lab namespaces")
    for name in namespaces:
        netns.remove(name)
    if namespaces:
        done.append(f"deleted {len(namespaces)} namespace(s) with prefix {layout.prefix}")
    removed_files = False
    for path in [layout.data_dir, layout.log_dir, layout.pid_dir, *glob.glob(os.path.join(layout.lab_dir, "host-*"))]:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed_files = True
    for path in (layout.state_file, layout.secret_file):
        if os.path.exists(path):
            os.unlink(path)
            removed_files = True
    try:
        os.rmdir(layout.lab_dir)
    except OSError:
        pass
    if removed_files:
        done.append(f"removed lab files in {layout.lab_dir}")
    return done


def _routes(ns: str, family: str) -> str:
    if not netns.exists(ns):
        return ""
    return netns.run(ns, ["ip", family, "route", "show"], check=False).stdout


def _iptables(ns: str, version: int = 4) -> str:
    """The filter table of the backend where this host's Felix put its chains."""
    if not netns.exists(ns):
        return ""
    from calico.common.iptables_backends import felix_table

    return felix_table(version, runner=lambda argv, **kwargs: subprocess.run(netns.argv(ns, argv), **kwargs))[1]


def status(layout: Layout) -> str:
    lab = state.load(layout)
    lines = [f"lab dir {layout.lab_dir} (logs in {layout.log_dir}), namespace prefix {layout.prefix}"]
    if lab.subnets > 1:
        lines.append(f"{lab.subnets} subnets joined by router namespace {layout.router_ns} "
                     f"({fabric.router_dropped_packets(layout)} packets dropped); outside {layout.outside_ns}")
    if lab.ipip_standin:
        lines.append("this kernel has no IP-in-IP: each host runs the lab's user-space tunl0 (calico.lab.ipip)")
    if not lab.hosts:
        leftovers = lab_namespaces(layout)
        lines.append("no lab is up" + (f"; leftover namespaces: {', '.join(leftovers)} (run 'calico-lab down')"
                                       if leftovers else ""))
        return "\n".join(lines)
    for index in range(1, lab.hosts + 1):
        ns = layout.host_ns(index)
        lines.append(f"{host_name(index)} ({host_ip(index, lab.subnets)}) namespace {ns}"
                     f"{'' if netns.exists(ns) else ' MISSING'}")
        for component in hosts.components_of(index, lab.ipip_standin):
            label = hosts.label(index, component)
            pid = processes.alive(layout, label)
            lines.append(f"  {component:15} {'running, pid ' + str(pid) if pid else 'NOT RUNNING'}"
                         f"  log {layout.log_file(label)}")
        report = host_report(layout, index)
        lines.append(f"  calico-status (BIRD: birdc -s {layout.bird_socket(index)}; health and metrics on "
                     f"127.0.0.1 in {ns}):")
        lines += [f"    {line}" if line else "" for line in report.text.splitlines()]
        routes = _routes(ns, "-4") + _routes(ns, "-6")
        rules = _iptables(ns)
        for container in sorted(lab.containers.values(), key=lambda c: c.name):
            from calico.common.kernel_names import interface_name
            tap = interface_name(container.endpoint_id)
            ours = container.host == index
            route_state = []
            for addr in container.addrs:
                line = next((r for r in routes.splitlines() if r.split()[:1] == [addr]), "")
                route_state.append(f"{addr}: {'route ' + ' '.join(line.split()[1:5]) if line else 'NO ROUTE'}")
            if ours:
                chains = "felix chains present" if tap in rules else "NO felix rules for " + tap
                lines.append(f"  endpoint {container.name} [{','.join(container.groups)}] {tap}: "
                             f"{'; '.join(route_state)}; {chains}")
            else:
                lines.append(f"  remote   {container.name} on {host_name(container.host)}: {'; '.join(route_state)}")
    return "\n".join(lines)


def health_url(component: str) -> str:
    """Where a lab component's health server answers, inside its host's namespace."""
    return health.base_url(health.DEFAULT_HOST, health.DEFAULT_PORTS[component])


def http_get_in(layout: Layout, index: int):
    """An HTTP GET made from inside host ``index``'s namespace (for calico.status)."""
    ns = layout.host_ns(index)

    def get(url: str, timeout: float) -> tuple[int, str]:
        if not netns.exists(ns):
            raise OSError(f"namespace {ns} is missing")
        with netns.entered(ns):
            return health.get(url, timeout)
    return get


def host_report(layout: Layout, index: int) -> host_status.HostReport:
    """``calico-status`` for one lab host: its Felix, its BIRD (by the
    lab's socket path), and on host 1 the plugin and the ACL manager."""
    plugin_host = index == 1
    targets = host_status.Targets(
        felix=health_url("felix"), bird_socket=layout.bird_socket(index),
        plugin_ep=health_url("plugin-ep") if plugin_host else None,
        plugin_network=health_url("plugin-network") if plugin_host else None,
        acl_manager=health_url("acl-manager") if plugin_host else None,
        plugin_host=True if plugin_host else None, bird_candidates=(layout.bird_socket(index),))
    return host_status.host_report(targets, http_get_in(layout, index))


def kernel_state(layout: Layout, index: int) -> dict[str, str]:
    """A host's routes, iptables and ipsets, for comparing before and after a restart."""
    ns = layout.host_ns(index)
    ipset = subprocess.run(netns.argv(ns, ["ipset", "list"]), capture_output=True, text=True).stdout
    return {"routes4": _routes(ns, "-4"), "routes6": _routes(ns, "-6"), "iptables": _iptables(ns),
            "ip6tables": _iptables(ns, 6),
            "ipset": ipset}
