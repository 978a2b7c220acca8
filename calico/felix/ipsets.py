"""Felix's ipsets: which sets an endpoint's ACLs need, and what each holds.

See docs/dataplane.md, "ipsets".

Pure code: from an ``EndpointSpec`` it computes, per address family and
direction, the sets to program and the matches the endpoint's iptables chain
makes against them (rendered by ``iptables_layout``).  Nothing here touches
the kernel; ``ipset_writer`` makes the kernel match.

Per endpoint, family and direction (``in`` = to the endpoint, matched on the
packet's source; ``out`` = from it, matched on the destination), the CIDR
rules fill up to three kinds of set (named by content, see below):

- a hash:net set: CIDRs allowed with any protocol;
- a hash:net,port set: CIDR + protocol:port for single TCP/UDP/SCTP/
  UDPLite ports, ICMP type/code pairs (ipset stores them as ``icmp:T/C``),
  and any other protocol by number (the kernel stores and matches such
  entries with port 0, so ``CIDR,47:0`` means "GRE from CIDR");
- hash:net sets, one per distinct class: what hash:net,port cannot
  hold cheaply, each paired with one iptables match: a protocol with no port
  (``-p tcp``; for ICMP this is the "any type" ICMP set), a port range
  (``-p tcp -m multiport --dports L:H``: ipset would store one entry per
  port), and an ICMP type with no code (``-m icmp --icmp-type T``: ipset
  has no "any code").

Per group and family, shared by every local endpoint whose rules name the
group: ``felix-<4|6>g-<group>`` (hash:net; ``felix-<4|6>h-<hash>`` for a
name too long for ipset), holding the /32 (/128) of every member address
of that family.  A group rule becomes one iptables rule per endpoint chain
that tests the packet against the group's set, with the rule's protocol,
port (range) or ICMP type/code as plain iptables matches; so a member
joining or leaving a group changes one entry of one set per host, whatever
the number of endpoints that name the group, and no chain at all.

The sets holding an endpoint's CIDR and port rules are named by what they
hold, ``felix-<4|6>s-<digest>``: endpoints whose rules hold the same CIDRs
(every endpoint with the seed's default "out to anywhere", say) share one
set, and a set's name changes exactly when its contents do, so such a set
is never edited; a change is a new set, taken into use by the same atomic
iptables commit that drops the old one.

Such a set exists only while it has members; an empty direction is just
the chain's final DROP.  A group set exists while some rule refers to
it, even when empty (a rule cannot name a set that does not exist).  ``0.0.0.0/0`` and ``::/0`` are stored as their two /1
halves (hash:net types refuse a /0).  Rules that cannot be expressed (an
address of the other family, ICMP of the other family, a group whose
members are not known, anything that is not a Rule) are skipped and reported as
warnings: skipping can only narrow what is allowed, never widen it.

Names are at most 28 characters, so a temporary twin ``<name>-t`` used for
fill-and-swap stays within ipset's 31.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import hashlib

import netaddr

from calico.common.rules import (ICMP_PROTOCOLS, PORT_PROTOCOLS, PROTOCOL_NUMBERS, Rule,
                                 protocol_name)
from calico.felix.state import EndpointSpec

SET_PREFIX = "felix-"
TEMP_SUFFIX = "-t"
HASH_NET = "hash:net"
HASH_NET_PORT = "hash:net,port"
DIRECTIONS = ("in", "out")
_ICMP_FOR_VERSION = {4: "icmp", 6: "icmpv6"}
_HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}

# A hash:net member is a CIDR string; a hash:net,port member is
# (cidr, protocol number, port) where an ICMP "port" is type << 8 | code.
Member = str | tuple[str, int, int]


@dataclass(frozen=True)
class SetSpec:
    name: str
    set_type: str  # HASH_NET or HASH_NET_PORT
    version: int  # 4 or 6
    members: frozenset = field(default_factory=frozenset)


@dataclass(frozen=True)
class SetMatch:
    """One iptables test of a packet against a set (see module docstring)."""

    set_name: str
    set_type: str
    protocol: str | None = None  # iptables -p name (or number) for class and group sets
    ports: tuple[int, int] | None = None  # destination port range
    icmp_type: int | None = None
    icmp_code: int | None = None


@dataclass
class DesiredSets:
    sets: dict[str, SetSpec] = field(default_factory=dict)
    # (endpoint_id, version, direction) -> matches in chain order
    matches: dict[tuple[str, int, str], tuple[SetMatch, ...]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    groups: set[tuple[str, int]] = field(default_factory=set)  # (group, version) sets the matches name


_DIGEST_CHARS = 28 - len(f"{SET_PREFIX}4s-")


def content_set_name(set_type: str, version: int, members: Iterable[Member]) -> str:
    """The name of the set holding exactly ``members`` (see module docstring)."""
    text = "\n".join([set_type, *sorted(member_text(m, set_type) for m in members)])
    return f"{SET_PREFIX}{version}s-{hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]}"


def _content_set(set_type: str, version: int, members: Iterable[Member]) -> SetSpec:
    frozen = frozenset(members)
    return SetSpec(content_set_name(set_type, version, frozen), set_type, version, frozen)


_GROUP_NAME_MAX = 28 - len(f"{SET_PREFIX}4g-")


def group_set_name(group: str, version: int) -> str:
    """The shared set of a group's members of one family.  A name that ends
    like a temporary twin (group ``web-t`` would be ``web``'s) is hashed too:
    a hex digest never ends in ``-t``."""
    if len(group) <= _GROUP_NAME_MAX and not group.endswith(TEMP_SUFFIX):
        return f"{SET_PREFIX}{version}g-{group}"
    return f"{SET_PREFIX}{version}h-{hashlib.sha256(group.encode()).hexdigest()[:_GROUP_NAME_MAX]}"


def is_group_set(name: str) -> bool:
    return name[len(SET_PREFIX) + 1:len(SET_PREFIX) + 3] in ("g-", "h-") and name.startswith(SET_PREFIX)


def group_set(group: str, version: int, addrs: Iterable[str]) -> SetSpec:
    prefix = 128 if version == 6 else 32
    return SetSpec(group_set_name(group, version), HASH_NET, version,
                   frozenset(f"{a}/{prefix}" for a in addrs if (":" in a) == (version == 6)))


def group_match(rule: Rule, version: int) -> SetMatch | str:
    """The iptables test of a group rule against the group's set, or a
    warning if the rule cannot apply to this family."""
    name = protocol_name(rule.protocol)
    set_name = group_set_name(rule.group, version)  # type: ignore[arg-type]
    if rule.protocol is None:
        return SetMatch(set_name, HASH_NET)
    if name in ICMP_PROTOCOLS:
        if name != _ICMP_FOR_VERSION[version]:
            return f"rule {rule} uses {name} in the IPv{version} ACLs"
        return SetMatch(set_name, HASH_NET, name, icmp_type=rule.icmp_type, icmp_code=rule.icmp_code)
    if name in PORT_PROTOCOLS:
        port = rule.port
        ports = None if port is None else (port if isinstance(port, tuple) else (port, port))
        return SetMatch(set_name, HASH_NET, name, ports=ports)
    if not isinstance(rule.protocol, int):
        return f"rule {rule} has an unknown protocol"
    return SetMatch(set_name, HASH_NET, str(rule.protocol))


def temp_name(name: str) -> str:
    return name + TEMP_SUFFIX


def is_felix_set(name: str) -> bool:
    return name.startswith(SET_PREFIX)


def split_zero(cidr: str, version: int) -> tuple[str, ...]:
    """hash:net refuses a /0: store the two /1 halves instead."""
    if cidr.endswith("/0"):
        return _HALVES[version]
    return (cidr,)


def _class_key(rule: Rule, proto: str) -> tuple:
    """What a class set's iptables match tests, as a sortable key."""
    if isinstance(rule.port, tuple):
        return (PROTOCOL_NUMBERS[proto], "ports", rule.port[0], rule.port[1])
    if rule.icmp_type is not None:
        return (PROTOCOL_NUMBERS[proto], "icmp", rule.icmp_type, 0)
    return (PROTOCOL_NUMBERS[proto], "any", 0, 0)


def classify_rule(rule: object, version: int) -> tuple[str, object] | str:
    """Where one rule goes: ("net", cidr), ("port", (proto, port)), ("class", key)
    with the CIDR carried alongside, or a warning string if it is skipped."""
    if not isinstance(rule, Rule):
        return f"not a rule: {rule!r}"
    if rule.cidr is None:
        return f"rule {rule} has no CIDR (group rules must be expanded by the ACL manager)"
    if rule.ip_version != version:
        return f"rule {rule} is IPv{rule.ip_version} in the IPv{version} ACLs"
    name = protocol_name(rule.protocol)
    if rule.protocol is None:
        return ("net", None)
    if name in PORT_PROTOCOLS:
        if rule.port is None or (isinstance(rule.port, tuple) and rule.port[0] != rule.port[1]):
            return ("class", _class_key(rule, name))
        port = rule.port[0] if isinstance(rule.port, tuple) else rule.port
        return ("port", (PROTOCOL_NUMBERS[name], port))
    if name in ICMP_PROTOCOLS:
        if name != _ICMP_FOR_VERSION[version]:
            return f"rule {rule} uses {name} in the IPv{version} ACLs"
        if rule.icmp_type is None or rule.icmp_code is None:
            return ("class", _class_key(rule, name))
        return ("port", (PROTOCOL_NUMBERS[name], rule.icmp_type << 8 | rule.icmp_code))
    if not isinstance(rule.protocol, int):
        return f"rule {rule} has an unknown protocol"
    # Any other protocol, by number: hash:net,port keeps it with port 0.
    return ("port", (rule.protocol, 0))


def _class_match(name: str, key: tuple) -> SetMatch:
    number, kind, a, b = key
    proto = protocol_name(number)
    if kind == "ports":
        return SetMatch(name, HASH_NET, proto, ports=(a, b))
    if kind == "icmp":
        return SetMatch(name, HASH_NET, proto, icmp_type=a)
    return SetMatch(name, HASH_NET, proto)


def direction_sets(endpoint_id: str, rules: Iterable[object], version: int, direction: str,
                   warnings: list[str], groups: set[tuple[str, int]] | None = None
                   ) -> tuple[list[SetSpec], tuple[SetMatch, ...]]:
    """The sets and chain matches for one endpoint, family and direction
    (group rules' matches last, in rule order; ``groups`` collects the group
    sets they name)."""
    nets: set[str] = set()
    ports: set[tuple[str, int, int]] = set()
    classes: dict[tuple, set[str]] = {}
    group_matches: dict[SetMatch, None] = {}
    for rule in rules:
        if isinstance(rule, Rule) and rule.group is not None:
            match = group_match(rule, version)
            if isinstance(match, str):
                warnings.append(f"endpoint {endpoint_id} {direction}bound: skipped {match}")
                continue
            group_matches[match] = None
            if groups is not None:
                groups.add((rule.group, version))
            continue
        where = classify_rule(rule, version)
        if isinstance(where, str):
            warnings.append(f"endpoint {endpoint_id} {direction}bound: skipped {where}")
            continue
        kind, detail = where
        cidrs = split_zero(rule.cidr, version)  # type: ignore[union-attr]
        if kind == "net":
            nets.update(cidrs)
        elif kind == "port":
            proto, port = detail  # type: ignore[misc]
            ports.update((cidr, proto, port) for cidr in cidrs)
        else:
            classes.setdefault(detail, set()).update(cidrs)  # type: ignore[arg-type]
    specs: list[SetSpec] = []
    matches: list[SetMatch] = []
    if nets:
        specs.append(_content_set(HASH_NET, version, nets))
        matches.append(SetMatch(specs[-1].name, HASH_NET))
    if ports:
        specs.append(_content_set(HASH_NET_PORT, version, ports))
        matches.append(SetMatch(specs[-1].name, HASH_NET_PORT))
    for key in sorted(classes):
        specs.append(_content_set(HASH_NET, version, classes[key]))
        matches.append(_class_match(specs[-1].name, key))
    matches.extend(group_matches)
    return specs, tuple(matches)


def endpoint_sets(spec: EndpointSpec, versions: Iterable[int]) -> DesiredSets:
    """The sets and chain matches of one endpoint.

    Only an endpoint that is open for traffic and has an address of the
    family gets sets; a fail-closed endpoint's chains match nothing."""
    result = DesiredSets()
    if not spec.open_for_traffic:
        return result
    for version in versions:
        if not spec.addrs_of(version):
            continue
        acl = spec.acls.family(version)  # type: ignore[union-attr]
        for direction, rules in (("in", acl.inbound), ("out", acl.outbound)):
            specs, matches = direction_sets(spec.endpoint_id, rules, version, direction, result.warnings,
                                            result.groups)
            for set_spec in specs:
                result.sets[set_spec.name] = set_spec
            result.matches[(spec.endpoint_id, version, direction)] = matches
    return result


def member_text(member: Member, set_type: str) -> str:
    """A member as ``ipset restore`` reads it."""
    if set_type == HASH_NET:
        return str(member)
    cidr, proto, port = member  # type: ignore[misc]
    name = protocol_name(proto)
    if name in ICMP_PROTOCOLS:
        return f"{cidr},{name}:{port >> 8}/{port & 0xFF}"
    if name in PORT_PROTOCOLS:
        return f"{cidr},{name}:{port}"
    return f"{cidr},{proto}:0"


def canonical_cidr(addr: str, prefix: int) -> str:
    """The CIDR text desired sets use, for an address and prefix read from the kernel.

    The kernel hands back the network address already masked; IPv4 text is
    canonical as it comes, IPv6 goes through netaddr (as Rule CIDRs did) so
    that both sides spell it the same way."""
    if ":" in addr:
        return str(netaddr.IPNetwork(f"{addr}/{prefix}").cidr)
    return f"{addr}/{prefix}"
