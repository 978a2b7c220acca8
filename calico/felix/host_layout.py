"""The kernel state one dataplane pass asks for, as pure values.

Each endpoint the pass programs (its interface exists) has a layout: the
sets its rules need and, per family it has addresses in, its chains
(``endpoint_layout``; an endpoint held fail-closed gets ``closed_layout``,
a single DROP in each chain and no sets).  From the layouts of every such
endpoint, the shared group sets some chain names and the cluster-wide
sets and felix-INPUT rules, ``desired_state`` assembles everything the pass
writes: every set, in the order the pass creates them, and every Felix
chain of each family's filter table.

``dataplane`` memoises the layouts (``layout_memo``) and hands the result
to the writers, which make the kernel match.  Nothing here touches the
kernel, so the unit tests of the layout check exactly what a pass programs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

from calico.felix import iptables_layout
from calico.felix.ipsets import SetSpec, endpoint_sets
from calico.felix.iptables_layout import Chains
from calico.felix.state import EndpointSpec

GroupKey = tuple[str, int]  # (group, version): one shared set


@dataclass(frozen=True)
class EndpointLayout:
    """What one endpoint needs: its sets and, per family it has addresses in,
    its chains (the dispatch rules are derived from the spec)."""

    spec: EndpointSpec
    sets: tuple[SetSpec, ...]
    chains: dict[int, Chains]
    groups: frozenset[GroupKey] = frozenset()  # the shared sets its chains name
    warnings: tuple[str, ...] = ()  # rules skipped because they cannot apply


@dataclass(frozen=True)
class DesiredState:
    """Everything one pass writes: sets by name (in creation order) and,
    per family, every Felix chain of the filter table."""

    sets: dict[str, SetSpec] = field(default_factory=dict)
    chains: dict[int, Chains] = field(default_factory=dict)


def endpoint_layout(spec: EndpointSpec, versions: Iterable[int]) -> EndpointLayout:
    """An endpoint's sets and chains, as its spec asks (fail-closed if it is
    disabled or has no ACLs yet)."""
    versions = tuple(versions)
    sets = endpoint_sets(spec, versions)
    chains = {version: iptables_layout.endpoint_chains(spec, version, sets.matches)
              for version in versions if spec.addrs_of(version)}
    groups = frozenset(key for key in sets.groups if spec.addrs_of(key[1]))
    return EndpointLayout(spec, tuple(sets.sets.values()), chains, groups, tuple(sets.warnings))


def closed_layout(spec: EndpointSpec, versions: Iterable[int]) -> EndpointLayout:
    """An endpoint held fail-closed whatever its spec says (the kernel refused it)."""
    closed = replace(spec, acls=None)
    return EndpointLayout(spec, (), {version: iptables_layout.endpoint_chains(closed, version, {})
                                     for version in versions if spec.addrs_of(version)})


def groups_named(layouts: Iterable[EndpointLayout]) -> set[GroupKey]:
    """The shared group sets the layouts' chains name."""
    return {key for layout in layouts for key in layout.groups}


def desired_state(layouts: Sequence[EndpointLayout], versions: Iterable[int], action: str = iptables_layout.DROP,
                  shared_sets: Mapping[str, SetSpec] | None = None,
                  cluster_sets: Mapping[str, SetSpec] | None = None,
                  input_rules: Mapping[int, tuple[str, ...]] | None = None) -> DesiredState:
    """The host's whole desired state from the programmed endpoints' layouts.

    ``shared_sets`` are the group sets the layouts name (``groups_named``),
    ``cluster_sets`` and ``input_rules`` what the cluster-wide features need
    (``cluster_dataplane``); ``action`` is DefaultEndpointToHostAction."""
    sets = {s.name: s for layout in layouts for s in layout.sets}
    sets.update(shared_sets or {})
    sets.update(cluster_sets or {})
    chains: dict[int, Chains] = {}
    for version in versions:
        table = iptables_layout.table_chains(
            version, action, [(layout.spec, layout.chains[version]) for layout in layouts if version in layout.chains])
        first = (input_rules or {}).get(version, ())
        if first:
            table[iptables_layout.INPUT_CHAIN] = first + tuple(table[iptables_layout.INPUT_CHAIN])
        chains[version] = table
    return DesiredState(sets, chains)
