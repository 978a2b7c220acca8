"""The cluster-wide part of Felix's dataplane: outgoing NAT and IP-in-IP.

The endpoint dataplane (``dataplane``) asks this for three things in each
pass, and that is its whole interface:

* ``sets()``: the sets these features need (``felix-pools4/6``,
  ``felix-hosts4``), created with the endpoints' sets before any rule uses
  them and destroyed with them once no rule does;
* ``input_rules(version)``: rules to put first in felix-INPUT (the IP-in-IP
  source check);
* ``sync()``: after the filter tables, the nat tables (``nat``) and tunl0
  (``tunnel``), each through a writer that compares with what it last wrote.

The view (``cluster.ClusterView``) is replaced by the agent when the
cluster file changes; the next pass converges: NAT rules and sets appear or
go, tunl0 comes up or goes down, nothing stale is left.
"""

from __future__ import annotations

import logging

from calico.felix import nat, tunnel
from calico.felix.cluster import ClusterView
from calico.felix.ipsets import SetSpec
from calico.common.iptables_backends import LEGACY
from calico.felix.iptables_writer import AUTO, RESTORE, IptablesWriter
from calico.felix.kernel_writes import WriteCounter

log = logging.getLogger(__name__)


class ClusterDataplane:
    def __init__(self, versions: tuple[int, ...], writes: WriteCounter, view: ClusterView | None = None,
                 iptables_mode: str = AUTO, library_max_rules: int = 64, iptables_backend: str = LEGACY) -> None:
        self.versions = versions
        self.view = view or ClusterView()
        # The nat table changes only when the setting does, by a rule or two:
        # always through iptables-restore (python-iptables 1.0.1 cannot find
        # the IPv6 MASQUERADE target, which iptables keeps in libxt_).
        self.nat = {v: IptablesWriter(v, writes, RESTORE, library_max_rules, table="nat",
                                      top_jumps=nat.NAT_JUMPS, optional_jumps=True, backend=iptables_backend)
                    for v in versions}
        self.tunnel = tunnel.TunnelWriter(writes)

    def sets(self) -> dict[str, SetSpec]:
        wanted = nat.pool_sets(self.view.settings, self.versions)
        if 4 in self.versions:
            wanted.update(tunnel.hosts_set(self.view))
        return wanted

    def input_rules(self, version: int) -> tuple[str, ...]:
        return tunnel.input_rules(self.view, version)

    def sync(self) -> None:
        for version, writer in self.nat.items():
            writer.sync(nat.nat_chains(self.view.settings, version))
        if 4 in self.versions:
            spec = tunnel.desired_tunnel(self.view)
            if spec.enabled or self.tunnel.kernel is None or self.tunnel.kernel.index is not None:
                self.tunnel.sync(spec)

    def forget(self) -> None:
        for writer in self.nat.values():
            writer.forget()
        self.tunnel.forget()

    def close(self) -> None:
        self.tunnel.close()
