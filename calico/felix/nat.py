"""Outgoing NAT: the nat-table layout for ``nat_outgoing`` (pure).

See docs/dataplane.md, "Outgoing NAT and IP-in-IP".

Containers have pool addresses that the network beyond the hosts does not
route, so traffic from a container to anywhere outside every pool leaves
with the host's address instead (MASQUERADE), exactly as the seed's hand-
typed ``iptables -t nat -A POSTROUTING -s POOL ! -d POOL -j MASQUERADE``
did, but written, checked and removed by Felix:

    POSTROUTING      1st rule: -j felix-POSTROUTING      (only while NAT is on)
    felix-POSTROUTING  -m set --match-set felix-pools<v> src
                       -m set ! --match-set felix-pools<v> dst -j MASQUERADE

``felix-pools4`` / ``felix-pools6`` (hash:net) hold the pools of each
family; traffic between containers (pool to pool, tunnelled or not) is
never translated.  With ``nat_outgoing`` off the layout is empty: the
writer then removes the jump, the chain and the sets, and leaves the nat
table alone altogether if Felix never had anything there.
"""

from __future__ import annotations

from calico.common.datafiles import GlobalSettings
from calico.felix.ipsets import HASH_NET, SetSpec

NAT_CHAIN = "felix-POSTROUTING"
NAT_JUMPS = {"POSTROUTING": NAT_CHAIN}


def pool_set_name(version: int) -> str:
    return f"felix-pools{version}"


def pool_of(settings: GlobalSettings, version: int) -> str:
    return settings.pool if version == 4 else settings.pool6


def pool_sets(settings: GlobalSettings, versions: tuple[int, ...]) -> dict[str, SetSpec]:
    if not settings.nat_outgoing:
        return {}
    return {pool_set_name(v): SetSpec(pool_set_name(v), HASH_NET, v, frozenset({pool_of(settings, v)}))
            for v in versions}


def nat_chains(settings: GlobalSettings, version: int) -> dict[str, tuple[str, ...]]:
    """Felix's chains in the nat table of one family (empty: NAT is off)."""
    if not settings.nat_outgoing:
        return {}
    name = pool_set_name(version)
    return {NAT_CHAIN: (f"-m set --match-set {name} src -m set ! --match-set {name} dst -j MASQUERADE",)}
