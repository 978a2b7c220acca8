"""What a dataplane pass recomputes only when its input changed.

The agent hands the dataplane the whole desired state on every change, so a
pass over 1,000 unchanged endpoints must be cheap.  ``EndpointLayouts``
re-checks each endpoint (ids, MACs and addresses end up in chain names,
restore input and netlink requests) and computes its layout
(``host_layout``) once per spec; ``GroupSets`` rebuilds a group's shared
set only when its members changed.  Nothing here touches the kernel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AbstractSet, Iterable, Mapping

from calico.common.validation import ValidationError, check_endpoint_id, parse_ip, parse_mac
from calico.felix import host_layout
from calico.felix.host_layout import EndpointLayout, GroupKey
from calico.felix.ipsets import SetSpec, group_set
from calico.felix.state import EndpointSpec, GroupAddrs

log = logging.getLogger(__name__)


@dataclass
class _Checked:
    """The memo of one endpoint: its spec, whether it passed the re-check,
    and its layout once one was needed."""

    spec: EndpointSpec
    usable: bool
    layout: EndpointLayout | None = None


class EndpointLayouts:
    """The endpoints that can be programmed, each checked and laid out once per spec."""

    def __init__(self, versions: tuple[int, ...]) -> None:
        self.versions = versions
        self._memo: dict[str, _Checked] = {}
        self._collisions: set[str] = set()

    def usable(self, desired: Mapping[str, EndpointSpec]) -> dict[str, EndpointSpec]:
        """The endpoints that pass the re-check, one per interface name (ids
        sharing their first 11 characters would share a tap).  Each problem
        is logged once, not every pass."""
        memo: dict[str, _Checked] = {}
        usable: dict[str, EndpointSpec] = {}
        by_interface: dict[str, str] = {}
        collisions: set[str] = set()
        for key in sorted(desired):
            spec = desired[key]
            known = self._memo.get(key)
            if known is None or not (known.spec is spec or known.spec == spec):
                known = _Checked(spec, _check(key, spec))
            memo[key] = known
            if not known.usable:
                continue
            other = by_interface.setdefault(spec.interface, key)
            if other != key:
                collisions.add(f"endpoint {key} skipped: its interface {spec.interface} is also endpoint {other}'s")
                continue
            usable[key] = spec
        for warning in sorted(collisions - self._collisions):
            log.warning(warning)
        self._collisions = collisions
        self._memo = memo
        return usable

    def layout(self, key: str, spec: EndpointSpec) -> EndpointLayout:
        """An endpoint's sets and chains (``usable`` must have seen it),
        computed only when its spec changed."""
        checked = self._memo[key]
        if checked.layout is None or not (checked.layout.spec is spec or checked.layout.spec == spec):
            checked.layout = host_layout.endpoint_layout(spec, self.versions)
            for warning in checked.layout.warnings:
                log.warning(warning)
        return checked.layout

    def programmed(self, endpoints: Mapping[str, EndpointSpec], closed: AbstractSet[str],
                   missing: AbstractSet[str]) -> list[EndpointLayout]:
        """The layouts one pass programs: those in ``closed`` fail-closed,
        none for endpoints whose interface is ``missing``."""
        return [host_layout.closed_layout(spec, self.versions) if key in closed else self.layout(key, spec)
                for key, spec in endpoints.items() if key not in missing]


def _check(key: str, spec: EndpointSpec) -> bool:
    try:
        if not isinstance(spec, EndpointSpec) or spec.endpoint_id != key:
            raise ValidationError("endpoint id does not match its key")
        check_endpoint_id(spec.endpoint_id)
        if parse_mac(spec.mac) != spec.mac:
            raise ValidationError(f"MAC {spec.mac!r} is not canonical")
        for addr in spec.addrs:
            if str(parse_ip(addr)) != addr:
                raise ValidationError(f"address {addr!r} is not canonical")
    except (ValidationError, AttributeError, TypeError) as exc:
        log.warning("endpoint %r skipped: %s", key, exc)  # once: the result is memoised
        return False
    return True


class GroupSets:
    """The shared set of each (group, family) some chain names, built from
    the members the agent last handed over."""

    def __init__(self) -> None:
        self.members: GroupAddrs = {}
        # (group, version) -> (the addresses it was built from, the set)
        self._built: dict[GroupKey, tuple[frozenset[str], SetSpec]] = {}

    def sets(self, needed: Iterable[GroupKey]) -> dict[str, SetSpec]:
        """The sets ``needed`` names, each rebuilt only when its members
        changed (a new address set, even an equal one).  A group whose
        members are unknown gets an empty set (the agent keeps endpoints
        naming it fail-closed; this only narrows)."""
        built: dict[GroupKey, tuple[frozenset[str], SetSpec]] = {}
        for key in needed:
            addrs = self.members.get(key[0], frozenset())
            known = self._built.get(key)
            if known is None or known[0] is not addrs:
                known = (addrs, group_set(key[0], key[1], addrs))
            built[key] = known
        self._built = built
        return {spec.name: spec for _, spec in built.values()}
