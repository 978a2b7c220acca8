"""Lab containers: a namespace attached exactly as a Docker container is.

``add`` makes the container's namespace, attaches it with ``calico.attach``
(the code ``network_container.sh`` runs, here with the host's namespace as
the tap side) which writes the endpoint file into host 1's data directory,
and starts a TCP listener inside for ``check``.  ``remove`` detaches
(endpoint file, then tap), stops the listener and deletes the namespace.
"""

from __future__ import annotations

import secrets
import sys

from calico import attach, netns
from calico.lab import processes, state
from calico.lab.hosts import load_lab_cluster
from calico.lab.layout import LISTEN_PORT, LabError, Layout, check_container_name, host_index, host_name


def listener_label(name: str) -> str:
    return f"c-{name}-listener"


def add(layout: Layout, name: str, host: str, ips: list[str], groups: list[str],
        listen: bool = True) -> state.Container:
    """Make, attach and record a container; ``listen=False`` skips its TCP
    listener (a process per container: benchmarks with a thousand
    containers that are only pinged do without)."""
    lab = state.require_up(layout)
    check_container_name(name)
    if name in lab.containers:
        raise LabError(f"container {name} already exists (on {host_name(lab.containers[name].host)})")
    index = host_index(host, lab.hosts)
    cluster = load_lab_cluster(layout)
    ns = layout.container_ns(name)
    try:
        request = attach.build_request(netns.path(ns), secrets.token_hex(32), ips, host_name(index), groups,
                                       layout.data_dir, (cluster.settings.pool, cluster.settings.pool6))
    except attach.AttachError as exc:
        raise LabError(str(exc)) from None
    if netns.exists(ns):
        raise LabError(f"namespace {ns} already exists (left over? run 'calico-lab remove {name}')")
    netns.create(ns)
    try:
        result = attach.attach(request, host_netns=netns.path(layout.host_ns(index)))
        if listen:
            processes.start(layout, listener_label(name), ns,
                            [sys.executable, "-m", "calico.lab.listener", str(LISTEN_PORT), layout.lab_dir])
    except Exception as exc:
        processes.stop(layout, listener_label(name))
        netns.remove(ns)
        if isinstance(exc, attach.AttachError):
            raise LabError(str(exc)) from None
        raise
    container = state.Container(name, index, list(request.addrs), list(request.groups), request.endpoint_id,
                                result.written_at)
    lab = state.load(layout)
    lab.containers[name] = container
    state.save(layout, lab)
    return container


def remove(layout: Layout, name: str) -> list[str]:
    lab = state.require_up(layout)
    container = lab.containers.get(name)
    if container is None:
        raise LabError(f"no container {name} in this lab")
    removed = []
    try:
        removed = attach.detach(container.endpoint_id, layout.data_dir,
                                host_netns=netns.path(layout.host_ns(container.host)))
    except attach.AttachError:
        pass  # already gone: removing the rest is still right
    processes.stop(layout, listener_label(name))
    netns.remove(layout.container_ns(name))
    lab = state.load(layout)
    lab.containers.pop(name, None)
    state.save(layout, lab)
    return removed
