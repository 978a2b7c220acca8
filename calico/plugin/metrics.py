"""The plugin's Prometheus metrics (``calico.common.metrics``; off unless
``--prometheus-metrics-enabled``), one registry per process:

Both APIs:

* ``calico_plugin_files``, ``calico_plugin_bad_files``: ``*.txt`` files in
  the data directory, and those with at least one error (skipped in whole
  or in part);
* ``calico_plugin_hosts``, ``calico_plugin_endpoints``, ``calico_plugin_groups``:
  what the files describe;
* ``calico_plugin_change_to_message_seconds`` (histogram): from a file
  change (its inode change time, which a write or a rename into place sets;
  for a removal, when it was noticed) to the message it caused being handed
  to ZeroMQ (the endpoint API: sent to the owning Felix; the network API:
  GROUPUPDATE published).

The endpoint API (``ep``):

* ``calico_plugin_messages_sent_total{felix,type}``: ENDPOINTCREATED / UPDATED
  / DESTROYED sent to each host's Felix (resync announcements included);
* ``calico_plugin_messages_queued{felix}``: waiting in that host's outboxes;
* ``calico_plugin_felix_connected{felix}``: 1 while that Felix answers;
* ``calico_plugin_resyncs_total{felix}``: RESYNCSTATEs answered.

The network API (``network``):

* ``calico_plugin_group_updates_published_total``;
* ``calico_plugin_getgroups_total``: GETGROUPS answered.
"""

from __future__ import annotations

from typing import Mapping

from calico.common.metrics import SECONDS_BUCKETS, exposition, new_registry


class PluginMetrics:
    """No metrics: every method does nothing."""

    registry = None

    def render(self):  # pragma: no cover
        return None

    def data(self, files: int, bad_files: int, hosts: int, endpoints: int, groups: int) -> None:
        pass

    def latency(self, seconds: float) -> None:
        pass

    def sent(self, felix: str, msg_type: str) -> None:
        pass

    def links(self, queued: Mapping[str, int], connected: Mapping[str, bool]) -> None:
        pass

    def resync(self, felix: str) -> None:
        pass

    def group_published(self) -> None:
        pass

    def getgroups(self) -> None:
        pass


class PrometheusPluginMetrics(PluginMetrics):
    def __init__(self, api: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        r = self.registry = new_registry()
        self.render = exposition(r)  # type: ignore[method-assign]
        self.files = Gauge("calico_plugin_files", "*.txt files in the data directory.", registry=r)
        self.bad_files = Gauge("calico_plugin_bad_files", "Files with at least one error.", registry=r)
        self.hosts = Gauge("calico_plugin_hosts", "Hosts the files describe.", registry=r)
        self.endpoints = Gauge("calico_plugin_endpoints", "Endpoints the files describe.", registry=r)
        self.groups = Gauge("calico_plugin_groups", "Groups the files describe.", registry=r)
        self.change_latency = Histogram("calico_plugin_change_to_message_seconds",
                                        "From a file change to the message it caused handed to ZeroMQ.",
                                        buckets=SECONDS_BUCKETS, registry=r)
        if api == "ep":
            self.sent_messages = Counter("calico_plugin_messages_sent", "Endpoint messages sent to each Felix.",
                                         ["felix", "type"], registry=r)
            self.queued = Gauge("calico_plugin_messages_queued", "Endpoint messages waiting for each Felix.",
                                ["felix"], registry=r)
            self.connected = Gauge("calico_plugin_felix_connected", "1 while the host's Felix answers.",
                                   ["felix"], registry=r)
            self.resyncs = Counter("calico_plugin_resyncs", "RESYNCSTATEs answered, per Felix.", ["felix"],
                                   registry=r)
        else:
            self.published = Counter("calico_plugin_group_updates_published", "GROUPUPDATEs published.",
                                     registry=r)
            self.getgroups_answered = Counter("calico_plugin_getgroups", "GETGROUPS answered.", registry=r)
        self._hosts_seen: set[str] = set()

    def data(self, files: int, bad_files: int, hosts: int, endpoints: int, groups: int) -> None:
        self.files.set(files)
        self.bad_files.set(bad_files)
        self.hosts.set(hosts)
        self.endpoints.set(endpoints)
        self.groups.set(groups)

    def latency(self, seconds: float) -> None:
        self.change_latency.observe(max(seconds, 0.0))

    def sent(self, felix: str, msg_type: str) -> None:
        self.sent_messages.labels(felix, msg_type).inc()

    def links(self, queued: Mapping[str, int], connected: Mapping[str, bool]) -> None:
        for gone in self._hosts_seen - queued.keys():
            self.queued.remove(gone)
            self.connected.remove(gone)
        for host, count in queued.items():
            self.queued.labels(host).set(count)
            self.connected.labels(host).set(1 if connected.get(host) else 0)
        self._hosts_seen = set(queued)

    def resync(self, felix: str) -> None:
        self.resyncs.labels(felix).inc()

    def group_published(self) -> None:
        self.published.inc()

    def getgroups(self) -> None:
        self.getgroups_answered.inc()


def make(enabled: bool, api: str) -> PluginMetrics:
    return PrometheusPluginMetrics(api) if enabled else PluginMetrics()
