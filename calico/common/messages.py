"""The wire protocol: every message type, its fields, and their checks.

All components speak JSON objects over ZeroMQ (docs/protocol.md).  This module
is the only place that knows what a valid message looks like: ``decode``
turns raw bytes into a checked ``dict`` or raises ``MessageError`` with a
one-line reason naming the field; ``make`` builds outgoing messages with the
``issued`` timestamp.  Callers never index into unchecked JSON.

Decoding is total: whatever the bytes (not UTF-8, not JSON, nested ten
thousand deep, numbers of thousands of digits, NaN, strings with NUL or
newlines), the result is a checked message or ``MessageError``, never
another exception.  Nesting deeper than any message needs (``MAX_DEPTH``)
is refused, every string that reaches a log or the kernel is checked in
full or bounded, untrusted values in reasons are shown with a bounded
repr, and the checked message holds only the declared fields, so nothing
unexpected travels past the decoder.  (The size of a message is bounded
before it gets here, by the socket: MaxMessageBytes.)

Rules inside GROUPUPDATE and ACLUPDATE are deliberately *not* validated here:
a receiver must keep the good rules of a message that also holds bad ones
(Felix programs the valid rules and logs the rest), so rule lists are only
checked for shape and each rule is parsed by ``calico.common.rules``.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from calico.common.validation import (
    ValidationError,
    check_endpoint_id,
    check_group_name,
    check_hostname,
    parse_ip,
    parse_mac,
    short_hostname,
    shown,
)

# Fixed ports (docs/protocol.md, "Ports").
PORT_EP_RESYNC = 9901        # plugin (ep) REP  <- Felix REQ
PORT_EP_FELIX = 9902         # Felix REP        <- plugin REQ
PORT_NET_REQ = 9903          # plugin (net) REP <- ACL manager REQ
PORT_NET_PUB = 9904          # plugin (net) PUB -> ACL manager SUB
PORT_ACL_REQ = 9905          # ACL manager ROUTER <- Felix REQ
PORT_ACL_PUB = 9906          # ACL manager PUB -> Felix SUB

TOPIC_GROUPS = b"groups"
TOPIC_NETWORK_HEARTBEAT = b"networkheartbeat"
TOPIC_ACL_HEARTBEAT = b"aclheartbeat"
# A group's membership is published under ":members:<group>:".  An endpoint
# id never starts with ':' and a group name never holds one, so a
# subscription to one group's topic matches no endpoint's and no other
# group's (SUB topics match by prefix: "web" alone would also match "webx").
MEMBERS_TOPIC_PREFIX = b":members:"
MEMBERS_TOPIC_SUFFIX = b":"

RESYNCSTATE = "RESYNCSTATE"
ENDPOINTCREATED = "ENDPOINTCREATED"
ENDPOINTUPDATED = "ENDPOINTUPDATED"
ENDPOINTDESTROYED = "ENDPOINTDESTROYED"
HEARTBEAT = "HEARTBEAT"
GETGROUPS = "GETGROUPS"
GROUPUPDATE = "GROUPUPDATE"
GETACLSTATE = "GETACLSTATE"
ACLUPDATE = "ACLUPDATE"
GETGROUPMEMBERS = "GETGROUPMEMBERS"
GROUPMEMBERS = "GROUPMEMBERS"
MEMBERSUPDATE = "MEMBERSUPDATE"

RC_SUCCESS = "SUCCESS"
RC_INVALID = "INVALID"
RC_NOTEXIST = "NOTEXIST"
RETURN_CODES = (RC_SUCCESS, RC_INVALID, RC_NOTEXIST)

ENDPOINT_STATES = ("enabled", "disabled")

# The deepest a valid message nests: an ACLUPDATE's port range is at depth 6
# (message, acls, v4, inbound, rule, port).
MAX_DEPTH = 8
MAX_TEXT = 1024             # a reply's free-text message
MAX_INT = 2**63 - 1         # timestamps and counts
RESYNC_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
EPOCH_RE = re.compile(r"[0-9a-f]{1,32}")
# A host name as Felix may send it, before it is cut at the first dot.
FULL_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,253}")


class MessageError(ValueError):
    """A message that cannot be used; ``str()`` is a one-line reason."""

    def __init__(self, reason: str, msg_type: str | None = None):
        super().__init__(reason)
        self.msg_type = msg_type


def now_ms() -> int:
    return int(time.time() * 1000)


# --- field checkers: each returns the (possibly canonicalised) value ---------

def _text(value: Any) -> str:
    """Free text (a reply's message): bounded; logged only with %r."""
    if not isinstance(value, str):
        raise ValidationError(f"want a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValidationError(f"longer than {MAX_TEXT} characters")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"want an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_INT:
        raise ValidationError(f"{shown(value)} is out of range")
    return value


def _resync_id(value: Any) -> str:
    if not isinstance(value, str) or not RESYNC_ID_RE.fullmatch(value):
        raise ValidationError(f"{shown(value)} is not 1-64 of A-Z a-z 0-9 _ . : -")
    return value


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not FULL_HOSTNAME_RE.fullmatch(value):
        raise ValidationError(f"bad host name {shown(value)}")
    check_hostname(short_hostname(value))
    return value


def _epoch(value: Any) -> str:
    if not isinstance(value, str) or not EPOCH_RE.fullmatch(value):
        raise ValidationError(f"{shown(value)} is not 1-32 lower-case hex digits")
    return value


def _ips(value: Any) -> list[str]:
    """A list of addresses, canonical and without repeats."""
    if not isinstance(value, list):
        raise ValidationError("want a list of addresses")
    return list(dict.fromkeys(str(parse_ip(ip)) for ip in value))


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValidationError(f"{shown(value)} is not one of {', '.join(choices)}")
        return value
    return check


_state = _one_of(ENDPOINT_STATES)
_rc = _one_of(RETURN_CODES)
_default = _one_of(("deny", "allow"))


def _addrs(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise ValidationError("want a list of {addr} objects")
    checked = []
    for item in value:
        if not isinstance(item, dict) or "addr" not in item:
            raise ValidationError(f"entry {shown(item)} is not an {{addr}} object")
        checked.append({"addr": str(parse_ip(item["addr"]))})
    return checked


def _members(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ValidationError("want an object of endpoint_id: [ip, ...]")
    checked = {}
    for endpoint_id, ips in value.items():
        check_endpoint_id(endpoint_id)
        if not isinstance(ips, list):
            raise ValidationError(f"addresses of {shown(endpoint_id)} are not a list")
        checked[endpoint_id] = [str(parse_ip(ip)) for ip in ips]
    return checked


def _rule_set(value: Any) -> dict[str, Any]:
    """Shape check only: direction lists and defaults (see module docstring)."""
    if not isinstance(value, dict):
        raise ValidationError("want an object with inbound/outbound rule lists")
    checked: dict[str, Any] = {}
    for direction in ("inbound", "outbound"):
        rules = value.get(direction, [])
        if not isinstance(rules, list):
            raise ValidationError(f"{direction} is not a list")
        checked[direction] = rules
        checked[f"{direction}_default"] = _default(value.get(f"{direction}_default", "deny"))
    return checked


def _acls(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError("want an object with v4 and v6 rule sets")
    return {family: _rule_set(value[family]) for family in ("v4", "v6") if family in value}


Fields = dict[str, tuple[Callable[[Any], Any], bool]]

_ENDPOINT_FIELDS: Fields = {
    "endpoint_id": (check_endpoint_id, True),
    "mac": (parse_mac, True),
    "state": (_state, True),
    "addrs": (_addrs, True),
    "resync_id": (_resync_id, False),
    "issued": (_int, False),
}

# Requests: what the sender must supply.  Replies are checked separately.
REQUEST_FIELDS: dict[str, Fields] = {
    RESYNCSTATE: {"resync_id": (_resync_id, True), "hostname": (_hostname, True), "issued": (_int, False)},
    ENDPOINTCREATED: _ENDPOINT_FIELDS,
    ENDPOINTUPDATED: _ENDPOINT_FIELDS,
    ENDPOINTDESTROYED: {"endpoint_id": (check_endpoint_id, True), "issued": (_int, False)},
    HEARTBEAT: {"issued": (_int, False)},
    GETGROUPS: {"issued": (_int, False)},
    GETACLSTATE: {"endpoint_id": (check_endpoint_id, True), "issued": (_int, False)},
    GROUPUPDATE: {
        "group": (check_group_name, True),
        "members": (_members, True),
        "rules": (_rule_set, True),
        "issued": (_int, False),
    },
    ACLUPDATE: {"acls": (_acls, True), "issued": (_int, False)},
    GETGROUPMEMBERS: {"group": (check_group_name, True), "issued": (_int, False)},
    GROUPMEMBERS: {
        "group": (check_group_name, True),
        "epoch": (_epoch, True),
        "seq": (_int, True),
        "addrs": (_ips, True),
        "issued": (_int, False),
    },
    MEMBERSUPDATE: {
        "group": (check_group_name, True),
        "epoch": (_epoch, True),
        "seq": (_int, True),
        "added": (_ips, True),
        "removed": (_ips, True),
        "issued": (_int, False),
    },
}

REPLY_FIELDS: Fields = {
    "rc": (_rc, False),
    "group": (check_group_name, False),
    "message": (_text, False),
    "endpoint_count": (_int, False),
}


def _check_fields(msg: dict[str, Any], fields: Fields, msg_type: str) -> dict[str, Any]:
    checked: dict[str, Any] = {"type": msg_type}  # and the declared fields: nothing else passes
    for name, (check, required) in fields.items():
        if name not in msg:
            if required:
                raise MessageError(f"{msg_type}: missing field '{name}'", msg_type)
            continue
        try:
            checked[name] = check(msg[name])
        except ValidationError as exc:
            raise MessageError(f"{msg_type}: field '{name}': {exc}", msg_type) from None
    return checked


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_depth(value: Any) -> None:
    """Iteratively, so that checking cannot itself run out of stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise MessageError(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def _parse(raw: bytes) -> Any:
    """JSON from the wire, within MAX_DEPTH; every fault is a MessageError."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise MessageError(f"not bytes but {type(raw).__name__}")
    try:
        value = json.loads(bytes(raw), parse_constant=_refuse_constant)
    except RecursionError:  # the C parser's own limit, far beyond MAX_DEPTH
        raise MessageError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # also bad UTF-8, and integers of more than 4300 digits
        raise MessageError("not JSON") from None
    _check_depth(value)
    return value


def _load(raw: bytes) -> dict[str, Any]:
    msg = _parse(raw)
    if not isinstance(msg, dict):
        raise MessageError("not a JSON object")
    msg_type = msg.get("type")
    if not isinstance(msg_type, str):
        raise MessageError("missing field 'type'")
    return msg


def _total(decode: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The one place a fault while decoding becomes a MessageError, whatever
    it was (a checker meeting a value nobody thought of): a bad message
    must never cost the component its loop."""
    def wrapper(raw: bytes, *args: Any) -> dict[str, Any]:
        try:
            return decode(raw, *args)
        except MessageError:
            raise
        except Exception as exc:
            raise MessageError(f"undecodable message ({type(exc).__name__})") from None
    wrapper.__doc__ = decode.__doc__
    wrapper.__name__ = decode.__name__
    return wrapper


@_total
def decode_request(raw: bytes, allowed: frozenset[str] | set[str]) -> dict[str, Any]:
    """Decode a request (or published message) of one of the allowed types.

    Raises MessageError; its ``msg_type`` is set when the type was readable,
    so a REP side can answer with the same type and rc INVALID.
    """
    msg = _load(raw)
    msg_type = msg["type"]
    if msg_type not in allowed:
        raise MessageError(f"unexpected message type {shown(msg_type)}",
                           msg_type if msg_type in REQUEST_FIELDS else None)
    return _check_fields(msg, REQUEST_FIELDS[msg_type], msg_type)


@_total
def decode_reply(raw: bytes, expected_type: str) -> dict[str, Any]:
    """Decode a reply; it must carry the type of the request it answers."""
    msg = _load(raw)
    if msg["type"] != expected_type:
        raise MessageError(f"reply of type {shown(msg['type'])} to a {expected_type} request", expected_type)
    return _check_fields(msg, REPLY_FIELDS, expected_type)


def peek(raw: bytes) -> dict[str, Any] | None:
    """The raw JSON object of a message that failed to decode, if it is one
    (within the depth limit), for bookkeeping only; never raises."""
    try:
        msg = _parse(raw)
    except Exception:
        return None
    return msg if isinstance(msg, dict) else None


def members_topic(group: str) -> bytes:
    """The topic a group's GROUPMEMBERS and MEMBERSUPDATE are published under."""
    return MEMBERS_TOPIC_PREFIX + check_group_name(group).encode() + MEMBERS_TOPIC_SUFFIX


def group_of_topic(topic: bytes) -> str | None:
    """The group whose membership topic this is, or None if it is none."""
    if not (topic.startswith(MEMBERS_TOPIC_PREFIX) and topic.endswith(MEMBERS_TOPIC_SUFFIX)):
        return None
    name = topic[len(MEMBERS_TOPIC_PREFIX):-len(MEMBERS_TOPIC_SUFFIX)]
    try:
        return check_group_name(name.decode("ascii"))
    except (UnicodeDecodeError, ValidationError):
        return None


def make(msg_type: str, **fields: Any) -> dict[str, Any]:
    """An outgoing request or publication, stamped with ``issued``."""
    msg = {"type": msg_type}
    msg.update(fields)
    msg.setdefault("issued", now_ms())
    return msg


def reply(msg_type: str, rc: str = RC_SUCCESS, message: str = "", **fields: Any) -> dict[str, Any]:
    msg = {"type": msg_type, "rc": rc, "message": message}
    msg.update(fields)
    return msg


def invalid_reply(error: MessageError) -> dict[str, Any]:
    """The reply owed to a request that failed to decode."""
    return reply(error.msg_type or "UNKNOWN", RC_INVALID, str(error)[:MAX_TEXT])


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), sort_keys=True).encode()
