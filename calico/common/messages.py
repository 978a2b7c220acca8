"""The wire protocol: every message type, its fields, and their checks.

All components speak JSON objects over ZeroMQ (DESIGN section 4).  This module
is the only place that knows what a valid message looks like: ``decode``
turns raw bytes into a checked ``dict`` or raises ``MessageError`` with a
one-line reason naming the field; ``make`` builds outgoing messages with the
``issued`` timestamp.  Callers never index into unchecked JSON.

Rules inside GROUPUPDATE and ACLUPDATE are deliberately *not* validated here:
a receiver must keep the good rules of a message that also holds bad ones
(Felix programs the valid rules and logs the rest), so rule lists are only
checked for shape and each rule is parsed by ``calico.common.rules``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from calico.common.validation import ValidationError, check_endpoint_id, check_group_name, parse_ip, parse_mac

# Fixed ports (DESIGN section 4).
PORT_EP_RESYNC = 9901        # plugin (ep) REP  <- Felix REQ
PORT_EP_FELIX = 9902         # Felix REP        <- plugin REQ
PORT_NET_REQ = 9903          # plugin (net) REP <- ACL manager REQ
PORT_NET_PUB = 9904          # plugin (net) PUB -> ACL manager SUB
PORT_ACL_REQ = 9905          # ACL manager ROUTER <- Felix REQ
PORT_ACL_PUB = 9906          # ACL manager PUB -> Felix SUB

TOPIC_GROUPS = b"groups"
TOPIC_NETWORK_HEARTBEAT = b"networkheartbeat"
TOPIC_ACL_HEARTBEAT = b"aclheartbeat"

RESYNCSTATE = "RESYNCSTATE"
ENDPOINTCREATED = "ENDPOINTCREATED"
ENDPOINTUPDATED = "ENDPOINTUPDATED"
ENDPOINTDESTROYED = "ENDPOINTDESTROYED"
HEARTBEAT = "HEARTBEAT"
GETGROUPS = "GETGROUPS"
GROUPUPDATE = "GROUPUPDATE"
GETACLSTATE = "GETACLSTATE"
ACLUPDATE = "ACLUPDATE"

RC_SUCCESS = "SUCCESS"
RC_INVALID = "INVALID"
RC_NOTEXIST = "NOTEXIST"
RETURN_CODES = (RC_SUCCESS, RC_INVALID, RC_NOTEXIST)

ENDPOINT_STATES = ("enabled", "disabled")


class MessageError(ValueError):
    """A message that cannot be used; ``str()`` is a one-line reason."""

    def __init__(self, reason: str, msg_type: str | None = None):
        super().__init__(reason)
        self.msg_type = msg_type


def now_ms() -> int:
    return int(time.time() * 1000)


# --- field checkers: each returns the (possibly canonicalised) value ---------

def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"want a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"want an integer, got {type(value).__name__}")
    return value


def _state(value: Any) -> str:
    if value not in ENDPOINT_STATES:
        raise ValidationError(f"{value!r} is not one of {', '.join(ENDPOINT_STATES)}")
    return value


def _rc(value: Any) -> str:
    if value not in RETURN_CODES:
        raise ValidationError(f"{value!r} is not one of {', '.join(RETURN_CODES)}")
    return value


def _addrs(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise ValidationError("want a list of {addr} objects")
    checked = []
    for item in value:
        if not isinstance(item, dict) or "addr" not in item:
            raise ValidationError(f"entry {item!r} is not an {{addr}} object")
        checked.append({"addr": str(parse_ip(item["addr"]))})
    return checked


def _members(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ValidationError("want an object of endpoint_id: [ip, ...]")
    checked = {}
    for endpoint_id, ips in value.items():
        check_endpoint_id(endpoint_id)
        if not isinstance(ips, list):
            raise ValidationError(f"addresses of {endpoint_id!r} are not a list")
        checked[endpoint_id] = [str(parse_ip(ip)) for ip in ips]
    return checked


def _rule_set(value: Any) -> dict[str, Any]:
    """Shape check only: direction lists and defaults (see module docstring)."""
    if not isinstance(value, dict):
        raise ValidationError("want an object with inbound/outbound rule lists")
    for direction in ("inbound", "outbound"):
        if not isinstance(value.get(direction, []), list):
            raise ValidationError(f"{direction} is not a list")
        default = value.get(f"{direction}_default", "deny")
        if default not in ("deny", "allow"):
            raise ValidationError(f"{direction}_default {default!r} is not deny or allow")
    return value


def _acls(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError("want an object with v4 and v6 rule sets")
    for family in ("v4", "v6"):
        if family in value:
            _rule_set(value[family])
    return value


Fields = dict[str, tuple[Callable[[Any], Any], bool]]

_ENDPOINT_FIELDS: Fields = {
    "endpoint_id": (check_endpoint_id, True),
    "mac": (parse_mac, True),
    "state": (_state, True),
    "addrs": (_addrs, True),
    "resync_id": (_str, False),
    "issued": (_int, False),
}

# Requests: what the sender must supply.  Replies are checked separately.
REQUEST_FIELDS: dict[str, Fields] = {
    RESYNCSTATE: {"resync_id": (_str, True), "hostname": (_str, True), "issued": (_int, False)},
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
}

REPLY_FIELDS: Fields = {
    "rc": (_rc, False),
    "message": (_str, False),
    "endpoint_count": (_int, False),
}


def _check_fields(msg: dict[str, Any], fields: Fields, msg_type: str) -> dict[str, Any]:
    checked = dict(msg)
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


def _load(raw: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise MessageError("not JSON") from None
    if not isinstance(msg, dict):
        raise MessageError("not a JSON object")
    msg_type = msg.get("type")
    if not isinstance(msg_type, str):
        raise MessageError("missing field 'type'")
    return msg


def decode_request(raw: bytes, allowed: frozenset[str] | set[str]) -> dict[str, Any]:
    """Decode a request (or published message) of one of the allowed types.

    Raises MessageError; its ``msg_type`` is set when the type was readable,
    so a REP side can answer with the same type and rc INVALID.
    """
    msg = _load(raw)
    msg_type = msg["type"]
    if msg_type not in allowed:
        raise MessageError(f"unexpected message type {msg_type!r}", msg_type if msg_type in REQUEST_FIELDS else None)
    return _check_fields(msg, REQUEST_FIELDS[msg_type], msg_type)


def decode_reply(raw: bytes, expected_type: str) -> dict[str, Any]:
    """Decode a reply; it must carry the type of the request it answers."""
    msg = _load(raw)
    if msg["type"] != expected_type:
        raise MessageError(f"reply of type {msg['type']!r} to a {expected_type} request", expected_type)
    return _check_fields(msg, REPLY_FIELDS, expected_type)


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
    return reply(error.msg_type or "UNKNOWN", RC_INVALID, str(error))


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), sort_keys=True).encode()
