"""What Felix knows of the cluster as a whole: its hosts and [global] settings.

Felix programs per-endpoint state from the plugin's messages, but outgoing
NAT and IP-in-IP depend on cluster-wide facts: the pools, ``nat_outgoing``,
``ipip`` and the hosts' addresses (the only sources allowed to send IP-in-IP).
They come from two places, as Felix's peer addresses do:

1. the cluster file (``CALICO_CLUSTER_FILE``, default
   /opt/plugin/data/felix.txt) when this host has it (the lab; a Docker host
   with ``-v /opt/plugin:/opt/plugin``): hosts and every [global] key;
2. the environment, which wins where set: ``CALICO_HOSTS`` for the hosts,
   ``CALICO_NAT_OUTGOING``, ``CALICO_IPIP`` (and ``CALICO_ROUTE_REFLECTORS``,
   which only BIRD uses) for the settings: the way to configure the Docker
   images, which have no cluster file.

``ClusterSource.poll`` re-reads the file when its identity (inode, size,
mtime) changes, so an edited setting takes effect within a poll interval,
without a restart.  A file that cannot be used is reported once, in one
line, and the last good view stays in force: a typo must not switch NAT or
the tunnel off under running containers.  A bad environment value stops
start-up (``ConfigError``), like any other bad configuration.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from calico.common import settings as registry
from calico.common.cluster_env import ConfigError, hosts_from_env
from calico.common.datafiles import (DataFileError, GlobalSettings, Host, load_cluster, settings_with_env)
from calico.common.validation import ValidationError

log = logging.getLogger(__name__)

POLL_INTERVAL_SECS = 1.0
MAX_FILE_BYTES = 1 << 20  # a cluster file is a few kilobytes; refuse to read a huge one


@dataclass(frozen=True)
class ClusterView:
    settings: GlobalSettings = field(default_factory=GlobalSettings)
    hosts: tuple[Host, ...] = ()
    local_ip: str | None = None  # this host's address in the host list, if listed

    def host_ips(self, version: int = 4) -> tuple[str, ...]:
        return tuple(sorted({h.ip for h in self.hosts if (":" in h.ip) == (version == 6)}))

    def describe(self) -> str:
        s = self.settings
        return (f"nat_outgoing {'on' if s.nat_outgoing else 'off'}, ipip {s.ipip}, pools {s.pool} {s.pool6}, "
                f"{len(self.hosts)} host(s), this host {self.local_ip or 'not listed'}")


def make_view(settings: GlobalSettings, hosts: list[Host] | tuple[Host, ...], hostname: str) -> ClusterView:
    local = next((h.ip for h in hosts if h.name == hostname), None)
    return ClusterView(settings, tuple(hosts), local)


class ClusterSource:
    """The cluster view from the environment and the cluster file (the shell)."""

    def __init__(self, hostname: str, env: dict[str, str] | None = None) -> None:
        self.hostname = hostname
        self.env = dict(os.environ) if env is None else env
        self.path = registry.env_value("cluster_file", self.env)
        self.env_hosts = hosts_from_env(self.env)  # ConfigError on a bad item
        try:
            settings_with_env(GlobalSettings(), self.env)  # a bad variable stops start-up
        except ValidationError as exc:
            raise ConfigError(str(exc)) from None
        self._identity: tuple[int, int, int] | None = None
        self._reported: str | None = None
        self.view = self._read()

    def _file_identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read(self, previous: ClusterView | None = None) -> ClusterView:
        self._identity = self._file_identity()
        settings, hosts = GlobalSettings(), list(self.env_hosts)
        if self._identity is not None:
            try:
                if self._identity[1] > MAX_FILE_BYTES:
                    raise DataFileError(f"{self._identity[1]} bytes, more than {MAX_FILE_BYTES}")
                cluster = load_cluster(self.path)
            except DataFileError as exc:
                message = f"cluster file {self.path} not used: {exc}"
                if message != self._reported:
                    log.warning("%s; %s", message,
                                "keeping the previous settings" if previous else "using the defaults")
                    self._reported = message
                if previous is not None:
                    return previous
            else:
                self._reported = None
                settings = cluster.settings
                hosts = hosts or cluster.hosts
        return make_view(settings_with_env(settings, self.env), hosts, self.hostname)

    def poll(self) -> ClusterView | None:
        """The new view if the cluster file changed what Felix should do, else None."""
        if self._file_identity() == self._identity:
            return None
        view = self._read(self.view)
        if view == self.view:
            return None
        log.info("Cluster settings changed: %s", view.describe())
        self.view = view
        return view
