"""Felix's bookkeeping: which endpoints this host owns and what they may do.

Pure state, no sockets and no kernel.  The agent feeds it the plugin's
endpoint messages and the ACL manager's ACLUPDATEs; ``EndpointTable.desired``
hands the dataplane the whole picture as ``EndpointSpec`` values
(calico.felix.state).  Everything returns whether it changed something, so
the agent knows when a dataplane pass is due and when it would be a no-op.

ACLUPDATE parsing is forgiving by rule and strict by message: a malformed
rule is reported and skipped while the message's good rules are kept.
Skipping can only narrow what an endpoint may do, since every rule is an
allow.  A rule whose CIDR is of the other family than the list it sits in
is skipped the same way.  Group rules are kept as they are: Felix matches
them against the group's shared set (``groups``, ``ipsets``).

A resync (docs/protocol.md, "Endpoints: plugin and Felix") is tracked by ``Resync``: the plugin announces
how many endpoints it will send and then sends them, in any order relative
to its reply.  Endpoints created or updated live while a resync is running
are current too, so they are kept even though the resync does not count
them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import AbstractSet, Any, Iterable, Mapping, Sequence

import netaddr

from calico.common.kernel_names import IFACE_ID_CHARS
from calico.common.rules import Rule, rule_from_wire
from calico.common.validation import ValidationError, parse_cidr
from calico.felix.state import AclRules, Acls, EndpointSpec

ALLOW_ALL = {4: "0.0.0.0/0", 6: "::/0"}


class Change(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def spec_from_message(msg: Mapping[str, Any]) -> EndpointSpec:
    """An endpoint (without ACLs) from a decoded ENDPOINTCREATED/UPDATED.

    The message has already been checked by calico.common.messages, so the
    MAC and addresses are canonical; addresses are de-duplicated and sorted
    so that a re-ordered list is not mistaken for a change."""
    addrs = sorted({entry["addr"] for entry in msg["addrs"]}, key=lambda a: (":" in a, a))
    return EndpointSpec(
        endpoint_id=msg["endpoint_id"],
        mac=msg["mac"],
        addrs=tuple(addrs),
        enabled=msg["state"] == "enabled",
    )


Pools = Mapping[int, Sequence[netaddr.IPNetwork]]  # IP version -> pools


def parse_pools(ip_pool: Iterable[str], ip_pool6: Iterable[str]) -> dict[int, tuple[netaddr.IPNetwork, ...]]:
    return {4: tuple(parse_cidr(p) for p in ip_pool), 6: tuple(parse_cidr(p) for p in ip_pool6)}


def in_pools(addr: str, pools: Pools) -> bool:
    """Whether an (already canonical) address lies inside one of the pools."""
    address = netaddr.IPAddress(addr)
    return any(address in pool for pool in pools.get(address.version, ()))


def describe_pools(pools: Pools) -> str:
    return " ".join(str(p) for version in (4, 6) for p in pools.get(version, ())) or "none"


@dataclass(frozen=True)
class Refusal:
    """Why an endpoint message is not taken, and whether that may change
    without the message changing (another endpoint lets go of an address
    or interface, or the host drops below its bound)."""

    reason: str
    kind: str  # POOL, ADDRESS, INTERFACE or FULL
    may_clear: bool = False


POOL, ADDRESS, INTERFACE, FULL = "pool", "address", "interface", "full"


class EndpointTable:
    """The endpoints this host owns, each with its ACLs once they arrive.

    Felix checks what it is told, even by the plugin: an endpoint's
    addresses must lie in the pools and belong to no other endpoint of this
    host, its interface (``tap`` + id[:11]) must be no other endpoint's,
    and a host holds at most ``max_endpoints``.  ``refusal`` says why a spec
    may not be taken; ``upsert`` assumes it was asked."""

    def __init__(self, pools: Pools | None = None, max_endpoints: int | None = None) -> None:
        self._specs: dict[str, EndpointSpec] = {}
        self._owners: dict[str, str] = {}       # address -> endpoint id
        self._interfaces: dict[str, str] = {}   # interface name -> endpoint id
        self.pools = pools
        self.max_endpoints = max_endpoints

    def refusal(self, spec: EndpointSpec) -> Refusal | None:
        """Why ``spec`` may not be created or take over its endpoint, or None."""
        eid = spec.endpoint_id
        if self.pools is not None:
            for addr in spec.addrs:
                if not in_pools(addr, self.pools):
                    version = 6 if ":" in addr else 4
                    where = " ".join(str(p) for p in self.pools.get(version, ())) or f"no IPv{version} pool"
                    return Refusal(f"address {addr} is outside the pool ({where})", POOL)
        for addr in spec.addrs:
            owner = self._owners.get(addr)
            if owner is not None and owner != eid:
                return Refusal(f"address {addr} belongs to endpoint {owner}", ADDRESS, may_clear=True)
        owner = self._interfaces.get(spec.interface)
        if owner is not None and owner != eid:
            return Refusal(f"interface {spec.interface} belongs to endpoint {owner} "
                           f"(ids must differ in their first {IFACE_ID_CHARS} characters)", INTERFACE, may_clear=True)
        if self.max_endpoints is not None and eid not in self._specs and len(self._specs) >= self.max_endpoints:
            return Refusal(f"this host already has {len(self._specs)} endpoints (MaxEndpoints {self.max_endpoints})",
                           FULL, may_clear=True)
        return None

    def owner_of(self, addr: str) -> str | None:
        return self._owners.get(addr)

    def _index(self, spec: EndpointSpec) -> None:
        for addr in spec.addrs:
            self._owners[addr] = spec.endpoint_id
        self._interfaces[spec.interface] = spec.endpoint_id

    def _unindex(self, spec: EndpointSpec) -> None:
        for addr in spec.addrs:
            if self._owners.get(addr) == spec.endpoint_id:
                del self._owners[addr]
        if self._interfaces.get(spec.interface) == spec.endpoint_id:
            del self._interfaces[spec.interface]

    def __contains__(self, endpoint_id: object) -> bool:
        return endpoint_id in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def ids(self) -> list[str]:
        return sorted(self._specs)

    def get(self, endpoint_id: str) -> EndpointSpec | None:
        return self._specs.get(endpoint_id)

    def upsert(self, spec: EndpointSpec) -> Change:
        """Create or update an endpoint; ACLs already known are kept."""
        old = self._specs.get(spec.endpoint_id)
        if old is None:
            self._specs[spec.endpoint_id] = replace(spec, acls=None)
            self._index(spec)
            return Change.CREATED
        new = replace(spec, acls=old.acls)
        if new == old:
            return Change.UNCHANGED
        self._unindex(old)
        self._specs[spec.endpoint_id] = new
        self._index(new)
        return Change.UPDATED

    def remove(self, endpoint_id: str) -> bool:
        old = self._specs.pop(endpoint_id, None)
        if old is None:
            return False
        self._unindex(old)
        return True

    def set_acls(self, endpoint_id: str, acls: Acls) -> bool:
        """Record an endpoint's ACLs; False if unknown or unchanged."""
        old = self._specs.get(endpoint_id)
        if old is None or old.acls == acls:
            return False
        self._specs[endpoint_id] = replace(old, acls=acls)
        return True

    def without_acls(self) -> list[str]:
        return sorted(i for i, spec in self._specs.items() if spec.acls is None)

    def desired(self, known_groups: AbstractSet[str] | None = None) -> Mapping[str, EndpointSpec]:
        """A snapshot for the dataplane (specs are immutable; the dict is a copy).

        With ``known_groups``, an endpoint whose rules name a group not in it
        is handed over without ACLs: it stays fail-closed until Felix knows
        who is in every group its rules name."""
        if known_groups is None:
            return dict(self._specs)
        return {key: (replace(spec, acls=None) if spec.acls is not None and not spec.acls.groups <= known_groups
                      else spec) for key, spec in self._specs.items()}


# --- ACLUPDATE ----------------------------------------------------------------

def _rules_of(family: str, version: int, direction: str, rule_set: Mapping[str, Any],
              problems: list[str]) -> tuple[Rule, ...]:
    rules: dict[Rule, None] = {}  # ordered set: duplicates say nothing new
    for index, wire in enumerate(rule_set.get(direction) or ()):
        where = f"{family} {direction} rule {index}"
        try:
            rule = rule_from_wire(wire)
        except ValidationError as exc:
            problems.append(f"{where} {wire!r}: {exc}")
            continue
        if rule.cidr is not None and rule.ip_version != version:
            problems.append(f"{where} ({rule}): IPv{rule.ip_version} CIDR in the {family} list")
            continue
        rules[rule] = None
    if rule_set.get(f"{direction}_default") == "allow":
        rules[Rule(cidr=ALLOW_ALL[version])] = None
    return tuple(rules)


def acls_from_wire(acls: Mapping[str, Any]) -> tuple[Acls, list[str]]:
    """ACLs from an ACLUPDATE's (shape-checked) ``acls`` field.

    Returns the ACLs built from the valid rules and one line per rule that
    was skipped.  A family absent from the message allows nothing."""
    problems: list[str] = []
    families = {}
    for family, version in (("v4", 4), ("v6", 6)):
        rule_set = acls.get(family) or {}
        families[family] = AclRules(
            inbound=_rules_of(family, version, "inbound", rule_set, problems),
            outbound=_rules_of(family, version, "outbound", rule_set, problems),
        )
    return Acls(**families), problems


def describe_acls(acls: Acls) -> str:
    """A short summary for the log: rule counts per family and direction."""
    return ", ".join(f"v{v} in {len(acls.family(v).inbound)} out {len(acls.family(v).outbound)}"
                     for v in (4, 6))


# --- resync -------------------------------------------------------------------

@dataclass
class Resync:
    """One RESYNCSTATE exchange with the plugin, until it completes."""

    resync_id: str
    reason: str
    expected: int | None = None          # from the plugin's reply
    counted: set[str] = field(default_factory=set)   # announcements carrying our resync_id
    kept: set[str] = field(default_factory=set)      # endpoints current as of this resync

    def announced(self, key: str, endpoint_id: str | None) -> None:
        """An ENDPOINTCREATED carrying our resync_id arrived.

        ``key`` identifies the announcement (the endpoint id, or a stand-in
        for one so malformed that it has none): a retried message must not
        count twice, or the resync would end before it had them all."""
        self.counted.add(key)
        if endpoint_id is not None:
            self.kept.add(endpoint_id)

    def live(self, endpoint_id: str) -> None:
        self.kept.add(endpoint_id)

    def destroyed(self, endpoint_id: str) -> None:
        self.kept.discard(endpoint_id)

    @property
    def complete(self) -> bool:
        return self.expected is not None and len(self.counted) >= self.expected

    def stale(self, known: Iterable[str]) -> list[str]:
        """Endpoints held before that this resync did not mention."""
        return sorted(set(known) - self.kept)
