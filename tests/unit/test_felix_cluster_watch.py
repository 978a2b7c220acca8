"""Felix's follower of the cluster settings alone: a source and a dataplane that are stand-ins."""

from __future__ import annotations

from types import SimpleNamespace

from calico.felix.cluster import POLL_INTERVAL_SECS, ClusterView
from calico.felix.cluster_watch import ClusterWatch


def test_a_new_cluster_view_reaches_the_dataplane_and_asks_for_a_pass():
    views = [None, ClusterView(local_ip="10.0.0.1")]
    handed, dirty = [], []
    watch = ClusterWatch(SimpleNamespace(poll=lambda: views.pop(0)), SimpleNamespace(set_cluster=handed.append),
                         lambda: dirty.append(1))
    assert watch.timer(0.0) == POLL_INTERVAL_SECS
    assert handed == [] and dirty == []
    watch.timer(1.0)
    assert handed == [ClusterView(local_ip="10.0.0.1")] and dirty == [1]
