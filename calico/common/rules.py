"""Security-group rules: the one model shared by files, wire and dataplane.

A rule allows traffic to or from a SOURCE (another group, or a CIDR),
optionally narrowed to a protocol and a port or port range, or for ICMP to a
type and code.  The same ``Rule`` is parsed from the cluster file's text
syntax (``group:web tcp 80``), carried on the wire as a JSON object
(docs/protocol.md) and finally rendered into ipset entries by Felix.

Keeping one immutable, hashable model means rule sets compare with ``==``
and ACL changes can be detected without any rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calico.common.validation import DECIMAL_RE, ValidationError, check_group_name, parse_cidr, shown

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}
PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "udplite"})
ICMP_PROTOCOLS = frozenset({"icmp", "icmpv6"})
_NUMBER_TO_NAME = {number: name for name, number in PROTOCOL_NUMBERS.items()}

Port = int | tuple[int, int] | None


@dataclass(frozen=True)
class Rule:
    """One allow rule.  Exactly one of ``group`` and ``cidr`` is set."""

    group: str | None = None
    cidr: str | None = None
    protocol: str | int | None = None
    port: Port = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    def __post_init__(self) -> None:
        validate_rule(self)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "group": self.group,
            "cidr": self.cidr,
            "protocol": self.protocol,
            "port": list(self.port) if isinstance(self.port, tuple) else self.port,
        }
        if self.icmp_type is not None:
            wire["icmp_type"] = self.icmp_type
        if self.icmp_code is not None:
            wire["icmp_code"] = self.icmp_code
        return wire

    @property
    def ip_version(self) -> int | None:
        """4 or 6 for a CIDR rule, None for a group rule (it spans both)."""
        if self.cidr is None:
            return None
        return 6 if ":" in self.cidr else 4

    def with_cidr(self, cidr: str) -> "Rule":
        """The same match, sourced from one CIDR instead of a group."""
        return Rule(None, cidr, self.protocol, self.port, self.icmp_type, self.icmp_code)

    def __str__(self) -> str:
        words = [f"group:{self.group}" if self.group else str(self.cidr)]
        if self.protocol is not None:
            words.append(str(self.protocol))
        if isinstance(self.port, tuple):
            words.append(f"{self.port[0]}-{self.port[1]}")
        elif self.port is not None:
            words.append(str(self.port))
        if self.icmp_type is not None:
            words.append(str(self.icmp_type) + (f"/{self.icmp_code}" if self.icmp_code is not None else ""))
        return " ".join(words)


def protocol_name(protocol: str | int | None) -> str | None:
    """Canonical name for a protocol given by name or number, if it has one."""
    if isinstance(protocol, int):
        return _NUMBER_TO_NAME.get(protocol)
    return protocol


def _check_port_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise ValidationError(f"bad port {shown(value)} (want 1-65535)")
    return value


def validate_rule(rule: Rule) -> None:
    if (rule.group is None) == (rule.cidr is None):
        raise ValidationError("a rule needs exactly one of group and cidr")
    if rule.group is not None:
        check_group_name(rule.group)
    else:
        canonical = str(parse_cidr(rule.cidr))
        if canonical != rule.cidr:
            # Keep rules canonical so equal matches compare equal.
            object.__setattr__(rule, "cidr", canonical)
    proto = rule.protocol
    if proto is not None:
        if isinstance(proto, bool) or not isinstance(proto, (str, int)):
            raise ValidationError(f"bad protocol {shown(proto)}")
        if isinstance(proto, int):
            if not 0 < proto < 256:
                raise ValidationError(f"bad protocol number {shown(proto)}")
            if proto in _NUMBER_TO_NAME:
                object.__setattr__(rule, "protocol", _NUMBER_TO_NAME[proto])
        elif proto not in PROTOCOL_NUMBERS:
            raise ValidationError(f"unknown protocol {shown(proto)} (want one of {', '.join(PROTOCOL_NUMBERS)} or a number)")
    name = protocol_name(rule.protocol)
    if rule.port is not None:
        if name not in PORT_PROTOCOLS:
            raise ValidationError(f"a port needs protocol tcp, udp, sctp or udplite, not {shown(rule.protocol)}")
        if isinstance(rule.port, tuple):
            low, high = (_check_port_number(p) for p in rule.port)
            if low > high:
                raise ValidationError(f"bad port range {low}-{high}")
        else:
            _check_port_number(rule.port)
    if rule.icmp_type is not None or rule.icmp_code is not None:
        if name not in ICMP_PROTOCOLS:
            raise ValidationError(f"an ICMP type needs protocol icmp or icmpv6, not {shown(rule.protocol)}")
        if rule.icmp_type is None:
            raise ValidationError("an ICMP code needs an ICMP type")
        for label, value in (("type", rule.icmp_type), ("code", rule.icmp_code)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255):
                raise ValidationError(f"bad ICMP {label} {shown(value)} (want 0-255)")


def rule_from_wire(wire: object) -> Rule:
    """Build a Rule from its JSON form, raising ValidationError naming the fault."""
    if not isinstance(wire, dict):
        raise ValidationError(f"a rule must be an object, not {type(wire).__name__}")
    unknown = set(wire) - {"group", "cidr", "protocol", "port", "icmp_type", "icmp_code"}
    if unknown:
        raise ValidationError(f"unknown rule field(s) {shown(sorted(map(str, unknown)))}")
    port = wire.get("port")
    if isinstance(port, list):
        if len(port) != 2:
            raise ValidationError(f"bad port range {shown(port)} (want [low, high])")
        port = (port[0], port[1])
    try:
        return Rule(
            group=wire.get("group"),
            cidr=wire.get("cidr"),
            protocol=wire.get("protocol"),
            port=port,
            icmp_type=wire.get("icmp_type"),
            icmp_code=wire.get("icmp_code"),
        )
    except TypeError as exc:  # unhashable or odd types in the fields
        raise ValidationError(f"bad rule {shown(wire)}: {exc}") from None


def parse_rule_text(text: str) -> Rule:
    """Parse ``SOURCE [PROTOCOL [PORT | LOW-HIGH | TYPE[/CODE]]]``."""
    words = text.split()
    if not words or len(words) > 3:
        raise ValidationError(f"bad rule {shown(text)} (want SOURCE [PROTOCOL [PORT | LOW-HIGH]])")
    source = words[0]
    group = cidr = None
    if source.startswith("group:"):
        group = source[len("group:"):]
    else:
        cidr = source
    protocol: str | int | None = None
    if len(words) > 1:
        protocol = int(words[1]) if DECIMAL_RE.fullmatch(words[1]) else words[1].lower()
    port: Port = None
    icmp_type = icmp_code = None
    if len(words) > 2:
        arg = words[2]
        if protocol_name(protocol) in ICMP_PROTOCOLS:
            type_text, _, code_text = arg.partition("/")
            icmp_type = _parse_int(type_text, text)
            icmp_code = _parse_int(code_text, text) if code_text else None
        elif "-" in arg:
            low, _, high = arg.partition("-")
            port = (_parse_int(low, text), _parse_int(high, text))
        else:
            port = _parse_int(arg, text)
    try:
        return Rule(group, cidr, protocol, port, icmp_type, icmp_code)
    except ValidationError as exc:
        raise ValidationError(f"bad rule {shown(text)}: {exc}") from None


def _parse_int(word: str, text: str) -> int:
    if not DECIMAL_RE.fullmatch(word):
        raise ValidationError(f"bad rule {shown(text)}: {shown(word)} is not a number")
    return int(word)


def parse_rule_list(text: str) -> list[Rule]:
    """Parse a ``;``-separated rule list (newlines also separate rules)."""
    parts = [p.strip() for chunk in text.splitlines() for p in chunk.split(";")]
    return [parse_rule_text(p) for p in parts if p]
