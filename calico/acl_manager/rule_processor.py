"""Per-endpoint ACLs from groups: the ACL manager's pure core.

See docs/decisions.md, "ACLs name groups; members travel per group".

An endpoint's groups are the groups that list it as a member.  Its ACLs are
the union of those groups' rules, split into IPv4 and IPv6:

* a CIDR rule goes to its own family;
* a group rule goes to both families *as a reference to the group*: the
  members' addresses are not expanded here but travel once per group, as
  GROUPMEMBERS and MEMBERSUPDATE (``memberships``), and Felix matches the
  rule against one shared ipset per group and family;
* ``icmp`` in IPv6 becomes ``icmpv6`` (echo and the common error types are
  mapped to their ICMPv6 numbers; an ICMP type with no ICMPv6 counterpart
  stays IPv4 only); ``icmpv6`` never applies to IPv4; every other protocol
  applies to both families.

Rules are deduplicated and sorted, so ``==`` tells whether an endpoint's
ACLs changed.  Defaults are ``deny`` unless one of the endpoint's groups
says ``allow`` (the plugin always says deny).

Incremental recomputation
-------------------------
An endpoint's ACLs depend only on the rules of its own groups, never on
who else is a member of anything.  Each group's rules (its *fragment*, an
``EndpointAcls``) are computed once and shared: an endpoint in one group
simply holds its group's fragment; one in several holds their union
(computed once per distinct set of groups).  So an endpoint joining or
leaving a group costs that one endpoint's ACLs (and a membership change
for the group), whatever the size of the group; only a change to a group's
rules touches every member of it.

An endpoint that leaves its last group is reported once with ``EMPTY_ACLS``
(all lists empty, defaults deny, so Felix closes it) and then forgotten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

from calico.common.rules import Rule, protocol_name
from calico.acl_manager.network_store import GroupSpec

# ICMP type (v4) -> ICMPv6 type, for rules sourced from a group or a v6 CIDR.
ICMP_TO_ICMPV6_TYPE = {0: 129, 8: 128, 3: 1, 11: 3, 12: 4}
_CODE_KEEPING_TYPES = {0, 8}  # echo: code 0 in both families; other codes differ

Rules = tuple[Rule, ...]


@dataclass(frozen=True, eq=True)
class EndpointAcls:
    """The ACLs Felix programs for one endpoint (or one group's fragment)."""

    v4_inbound: Rules = ()
    v4_outbound: Rules = ()
    v6_inbound: Rules = ()
    v6_outbound: Rules = ()
    inbound_default: str = "deny"
    outbound_default: str = "deny"

    def to_wire(self) -> dict[str, Any]:
        """``{v4: ACLS, v6: ACLS}`` as the ACLUPDATE message carries it."""
        def acls(inbound: Rules, outbound: Rules) -> dict[str, Any]:
            return {
                "inbound": [r.to_wire() for r in inbound],
                "outbound": [r.to_wire() for r in outbound],
                "inbound_default": self.inbound_default,
                "outbound_default": self.outbound_default,
            }
        return {"v4": acls(self.v4_inbound, self.v4_outbound), "v6": acls(self.v6_inbound, self.v6_outbound)}

    @cached_property
    def wire_json(self) -> bytes:
        """``to_wire()`` as compact JSON, computed once per object (fragments are shared)."""
        return json.dumps(self.to_wire(), separators=(",", ":"), sort_keys=True).encode()

    @property
    def rule_count(self) -> int:
        return len(self.v4_inbound) + len(self.v4_outbound) + len(self.v6_inbound) + len(self.v6_outbound)


EMPTY_ACLS = EndpointAcls()


def rule_sort_key(rule: Rule) -> tuple:
    port = rule.port
    low, high = port if isinstance(port, tuple) else (port or 0, port or 0)
    return (rule.group or "", rule.cidr or "", "" if rule.protocol is None else str(rule.protocol), low, high,
            -1 if rule.icmp_type is None else rule.icmp_type, -1 if rule.icmp_code is None else rule.icmp_code)


def rule_for_family(rule: Rule, version: int) -> Rule | None:
    """The rule as it applies to IP ``version``, or None where it cannot apply."""
    name = protocol_name(rule.protocol)
    if version == 4:
        return None if name == "icmpv6" else rule
    if name != "icmp":
        return rule
    icmp_type, icmp_code = rule.icmp_type, rule.icmp_code
    if icmp_type is not None:
        if icmp_type not in ICMP_TO_ICMPV6_TYPE or (icmp_code is not None and icmp_type not in _CODE_KEEPING_TYPES):
            return None
        icmp_type = ICMP_TO_ICMPV6_TYPE[icmp_type]
    return Rule(group=rule.group, cidr=rule.cidr, protocol="icmpv6", icmp_type=icmp_type, icmp_code=icmp_code)


def _sorted(rules: Iterable[Rule]) -> Rules:
    return tuple(sorted(set(rules), key=rule_sort_key))


def build_fragment(spec: GroupSpec) -> EndpointAcls:
    """The ACLs every member of ``spec`` gets from it; group rules stay references."""
    by_direction: dict[str, dict[int, set[Rule]]] = {}
    for direction, rules in (("inbound", spec.inbound), ("outbound", spec.outbound)):
        by_family: dict[int, set[Rule]] = {4: set(), 6: set()}
        for rule in rules:
            versions = (4, 6) if rule.group is not None else (rule.ip_version,)
            for version in versions:
                family_rule = rule_for_family(rule, version)
                if family_rule is not None:
                    by_family[version].add(family_rule)
        by_direction[direction] = by_family
    return EndpointAcls(
        v4_inbound=_sorted(by_direction["inbound"][4]),
        v4_outbound=_sorted(by_direction["outbound"][4]),
        v6_inbound=_sorted(by_direction["inbound"][6]),
        v6_outbound=_sorted(by_direction["outbound"][6]),
        inbound_default=spec.inbound_default,
        outbound_default=spec.outbound_default,
    )


def union(fragments: list[EndpointAcls]) -> EndpointAcls:
    if len(fragments) == 1:
        return fragments[0]

    def merged(attr: str) -> Rules:
        return _sorted(r for f in fragments for r in getattr(f, attr))

    def default(attr: str) -> str:
        return "allow" if any(getattr(f, attr) == "allow" for f in fragments) else "deny"

    return EndpointAcls(merged("v4_inbound"), merged("v4_outbound"), merged("v6_inbound"), merged("v6_outbound"),
                        default("inbound_default"), default("outbound_default"))


class RuleProcessor:
    """Holds groups and every endpoint's current ACLs; recomputes only what changes touch."""

    def __init__(self) -> None:
        self.groups: dict[str, GroupSpec] = {}
        self.acls: dict[str, EndpointAcls] = {}
        self._endpoint_groups: dict[str, set[str]] = {}
        self._referrers: dict[str, set[str]] = {}   # group -> groups whose rules name it
        self._fragments: dict[str, EndpointAcls] = {}
        self.recomputed = 0  # endpoints reconsidered by the last call (for tests and the benchmark)

    def acls_for(self, endpoint_id: str) -> EndpointAcls | None:
        return self.acls.get(endpoint_id)

    def load(self, specs: Iterable[GroupSpec]) -> dict[str, EndpointAcls]:
        """Compute everything from scratch (start-up, benchmark); returns every endpoint's ACLs."""
        self.__init__()
        for spec in specs:
            if spec.members:
                self._index(None, spec)
        for name, spec in self.groups.items():
            self._fragments[name] = build_fragment(spec)
        return self._recompute(set(self._endpoint_groups))

    def set_group(self, name: str, spec: GroupSpec | None) -> dict[str, EndpointAcls]:
        """Replace (or, with None or no members, delete) one group; see ``update``."""
        return self.update({name: spec})

    def update(self, specs: dict[str, GroupSpec | None]) -> dict[str, EndpointAcls]:
        """Replace several groups at once (None or no members: delete).

        Returns the endpoints whose ACLs changed with their new ACLs;
        endpoints that left every group map to EMPTY_ACLS and are forgotten.
        Applying a batch (a GETGROUPS burst) costs one recomputation per
        affected endpoint, not one per group that touches it.
        """
        dirty: set[str] = set()          # groups whose fragment may have changed
        affected: set[str] = set()       # endpoints to reconsider
        for name, spec in specs.items():
            if spec is not None and not spec.members:
                spec = None
            old = self.groups.get(name)
            if old == spec:
                continue
            old_members = old.members if old is not None else {}
            new_members = spec.members if spec is not None else {}
            self._index(old, spec)
            if spec is None or not spec.same_rules(old):
                dirty.add(name)
            affected.update(old_members.keys() ^ new_members.keys())
        for group in dirty:
            group_spec = self.groups.get(group)
            if group_spec is None:
                self._fragments.pop(group, None)
                continue
            fragment = build_fragment(group_spec)
            if fragment != self._fragments.get(group):
                self._fragments[group] = fragment
                affected.update(group_spec.members)
        return self._recompute(affected)

    @property
    def referenced(self) -> frozenset[str]:
        """Groups some known group's rules name (whose members Felixes need)."""
        return frozenset(self._referrers)

    def _index(self, old: GroupSpec | None, new: GroupSpec | None) -> None:
        name = (new or old).name
        if old is not None:
            for ref in old.referenced_groups:
                self._referrers[ref].discard(name)
                if not self._referrers[ref]:
                    del self._referrers[ref]
            for endpoint in old.members.keys() - (new.members.keys() if new else set()):
                groups = self._endpoint_groups[endpoint]
                groups.discard(name)
        if new is None:
            self.groups.pop(name, None)
            return
        self.groups[name] = new
        for ref in new.referenced_groups:
            self._referrers.setdefault(ref, set()).add(name)
        for endpoint in new.members:
            self._endpoint_groups.setdefault(endpoint, set()).add(name)

    def _recompute(self, endpoints: set[str]) -> dict[str, EndpointAcls]:
        self.recomputed = len(endpoints)
        changes: dict[str, EndpointAcls] = {}
        unions: dict[frozenset[str], EndpointAcls] = {}
        verdicts: dict[tuple[int, int], tuple] = {}
        for endpoint in endpoints:
            groups = self._endpoint_groups.get(endpoint)
            if not groups:
                self._endpoint_groups.pop(endpoint, None)
                if self.acls.pop(endpoint, None) is not None:
                    changes[endpoint] = EMPTY_ACLS
                continue
            if len(groups) == 1:
                acls = self._fragments[next(iter(groups))]
            else:
                key = frozenset(groups)
                acls = unions.get(key)
                if acls is None:
                    acls = unions[key] = union([self._fragments[g] for g in sorted(groups)])
            previous = self.acls.get(endpoint)
            if previous is not acls:
                # Endpoints share ACL objects, so many ask the same question:
                # compare each (old, new) pair once (a compare walks every rule).
                # The verdict holds both objects so their ids stay unique.
                pair = (id(previous), id(acls))
                verdict = verdicts.get(pair)
                if verdict is None:
                    verdict = verdicts[pair] = (previous, acls, previous != acls)
                if verdict[2]:
                    self.acls[endpoint] = acls
                    changes[endpoint] = acls
        return changes
