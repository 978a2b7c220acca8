"""Felix's follower of the cluster-wide settings (NAT, IP-in-IP, the hosts).

``cluster.ClusterSource`` reads them; this part polls it every
POLL_INTERVAL_SECS and hands each new view to the dataplane, which then
needs a pass, so an edited cluster file takes effect without a restart.
"""

from __future__ import annotations

from typing import Callable, Protocol

from calico.felix.cluster import POLL_INTERVAL_SECS, ClusterView


class Source(Protocol):
    def poll(self) -> ClusterView | None: ...


class ClusterDataplane(Protocol):
    def set_cluster(self, view: ClusterView) -> None: ...


class ClusterWatch:
    def __init__(self, source: Source, dataplane: ClusterDataplane, mark_dirty: Callable[[], None]) -> None:
        self.source = source
        self.dataplane = dataplane
        self._mark_dirty = mark_dirty

    def timer(self, now: float) -> float:
        view = self.source.poll()
        if view is not None:
            self.dataplane.set_cluster(view)
            self._mark_dirty()
        return POLL_INTERVAL_SECS
