"""Every decoder of untrusted input is total: its own error type or a good value.

Each decoder gets the corpus of tests/fuzzdata.py (random bytes, 10,000
levels of nesting, huge numbers, wrong types, Unicode digits, NUL,
newlines, long strings) and must answer with its one error type
(MessageError, ValidationError, DataFileError, ConfigError) whose text is
one bounded line, or a value that passes the same checks again.  Anything
else (RecursionError, ValueError, TypeError...) would have ended the
component's loop.
"""

from __future__ import annotations

import json

import pytest

import fuzzdata
from calico.common import messages
from calico.common.config import ConfigError, load_config
from calico.common.datafiles import DataFileError, parse_data_text
from calico.common.rules import Rule, parse_rule_list, rule_from_wire
from calico.common.validation import ValidationError

MAX_REASON = 2000  # every reason is one line of bounded length, whatever the input

ENDPOINT = {"endpoint_id": "ep1", "mac": "aa:bb:cc:dd:ee:01", "state": "enabled",
            "addrs": [{"addr": "192.168.1.1"}], "resync_id": "r-1"}
VALID_REQUESTS = {
    messages.RESYNCSTATE: {"resync_id": "0b8c2a6e-1", "hostname": "host-1.example.com"},
    messages.ENDPOINTCREATED: ENDPOINT,
    messages.ENDPOINTUPDATED: ENDPOINT,
    messages.ENDPOINTDESTROYED: {"endpoint_id": "ep1"},
    messages.HEARTBEAT: {},
    messages.GETGROUPS: {},
    messages.GETACLSTATE: {"endpoint_id": "ep1"},
    messages.GROUPUPDATE: {"group": "web", "members": {"ep1": ["192.168.1.1", "fd00::1"]},
                           "rules": {"inbound": [{"group": "web"}], "outbound": [{"cidr": "0.0.0.0/0"}],
                                     "inbound_default": "deny", "outbound_default": "deny"}},
    messages.ACLUPDATE: {"acls": {"v4": {"inbound": [{"cidr": "10.0.0.0/8", "protocol": "tcp", "port": [80, 90]}],
                                         "outbound": [], "inbound_default": "deny", "outbound_default": "allow"},
                                  "v6": {"inbound": [], "outbound": []}}},
    messages.GETGROUPMEMBERS: {"group": "web"},
    messages.GROUPMEMBERS: {"group": "web", "epoch": "0f3a9c", "seq": 1, "addrs": ["192.168.1.1", "fd00::1"]},
    messages.MEMBERSUPDATE: {"group": "web", "epoch": "0f3a9c", "seq": 2, "added": ["192.168.1.2"],
                             "removed": ["fd00::1"]},
}
ALL_TYPES = frozenset(messages.REQUEST_FIELDS)
ADDRESS_LISTS = {messages.GROUPMEMBERS: ("addrs",), messages.MEMBERSUPDATE: ("added", "removed")}


def test_every_message_type_is_fuzzed():
    assert set(VALID_REQUESTS) == ALL_TYPES


def one_line(reason: str) -> None:
    assert "\n" not in reason and "\r" not in reason and len(reason) <= MAX_REASON, reason[:300]


def depth(value, level=1) -> int:
    if isinstance(value, dict):
        return max([level] + [depth(v, level + 1) for v in value.values()])
    if isinstance(value, list):
        return max([level] + [depth(v, level + 1) for v in value])
    return level


def check_request(raw: bytes, msg_type: str) -> None:
    try:
        msg = messages.decode_request(raw, {msg_type})
    except messages.MessageError as exc:
        one_line(str(exc))
        assert exc.msg_type in (None, *ALL_TYPES)
        return
    # What passes holds the declared fields only, within the depth limit,
    # and survives being encoded and decoded again unchanged.
    assert set(msg) <= {"type", *messages.REQUEST_FIELDS[msg_type]}, msg.keys()
    assert depth(msg) <= messages.MAX_DEPTH
    assert messages.decode_request(messages.encode(msg), {msg_type}) == msg


@pytest.mark.parametrize("msg_type", sorted(VALID_REQUESTS))
def test_decode_request_mutations(msg_type):
    valid = {"type": msg_type, "issued": 1, **VALID_REQUESTS[msg_type]}
    check_request(fuzzdata.encode(valid), msg_type)  # the corpus starts from a message that passes
    assert messages.decode_request(fuzzdata.encode(valid), {msg_type})["type"] == msg_type
    for mutated in fuzzdata.mutations(valid):
        check_request(fuzzdata.encode(mutated), msg_type)


@pytest.mark.parametrize("msg_type, field", [(t, f) for t, fields in sorted(ADDRESS_LISTS.items()) for f in fields])
def test_address_lists_survive_hostile_elements(msg_type, field):
    """``mutations`` does not reach inside lists of strings: every nasty value
    as an element of a membership's address list, alone and beside good ones."""
    valid = {"type": msg_type, "issued": 1, **VALID_REQUESTS[msg_type]}
    for value in fuzzdata.nasty_values():
        for addrs in ([value], ["192.168.1.1", value], [value] * 3):
            check_request(fuzzdata.encode({**valid, field: addrs}), msg_type)


def test_membership_topics_are_total_and_only_name_valid_groups():
    for value in fuzzdata.nasty_values():
        if not isinstance(value, str):
            continue
        raw = value.encode("utf-8", "surrogatepass")
        for topic in (raw, b":members:" + raw + b":", b":members:" + raw, raw + b":"):
            group = messages.group_of_topic(topic)
            assert group is None or messages.members_topic(group) == topic
        try:
            topic = messages.members_topic(value)
        except ValidationError as exc:
            one_line(str(exc))
            continue
        assert messages.group_of_topic(topic) == value
    for raw in fuzzdata.raw_payloads():
        group = messages.group_of_topic(raw)
        assert group is None or messages.members_topic(group) == raw


def test_decode_request_raw_payloads():
    for raw in fuzzdata.raw_payloads():
        check_request(raw, messages.HEARTBEAT)
        try:
            messages.decode_request(raw, ALL_TYPES)
        except messages.MessageError as exc:
            one_line(str(exc))


@pytest.mark.parametrize("raw, reason", [
    (fuzzdata.deep_list().encode(), "nested deeper"),
    (('{"type":"HEARTBEAT","x":' + fuzzdata.deep_list() + "}").encode(), "nested deeper"),
    (('{"type":"HEARTBEAT","x":' + fuzzdata.deep_list(20) + "}").encode(), "nested deeper"),
    (b'{"type":"HEARTBEAT","issued":' + b"9" * 5000 + b"}", "not JSON"),
    (b'{"type":"HEARTBEAT","issued":1e999999}', "'issued'"),
    (b'{"type":"HEARTBEAT","issued":NaN}', "not JSON"),
    (b"\xff\xfe\x00", "not JSON"),
    (b'{"type":"ENDPOINTDESTROYED","endpoint_id":"abc\\n"}', "bad endpoint id 'abc\\n'"),
    (b'{"type":"ENDPOINTDESTROYED","endpoint_id":"abc\\u0000"}', "bad endpoint id"),
    (b'{"type":"RESYNCSTATE","resync_id":"r\\nINFO forged line","hostname":"h1"}', "'resync_id'"),
    (b'{"type":"RESYNCSTATE","resync_id":"' + b"r" * 65 + b'","hostname":"h1"}', "'resync_id'"),
    (b'{"type":"RESYNCSTATE","resync_id":"r","hostname":"h1\\n"}', "'hostname'"),
    (b'{"type":"RESYNCSTATE","resync_id":"r","hostname":"\\u00b2"}', "'hostname'"),
    (b'{"type":"GETGROUPMEMBERS","group":"web\\n"}', "bad group name 'web\\n'"),
    (b'{"type":"GETGROUPMEMBERS","group":"a:b"}', "'group'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ABC","seq":1,"addrs":[]}', "'epoch'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"' + b"a" * 33 + b'","seq":1,"addrs":[]}', "'epoch'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ab\\n","seq":1,"addrs":[]}', "'epoch'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ab","seq":-1,"addrs":[]}', "'seq'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ab","seq":true,"addrs":[]}', "'seq'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ab","seq":1,"addrs":"10.0.0.1"}', "'addrs'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ab","seq":1,"addrs":["10.0.0.0/8"]}', "'addrs'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ab","seq":1,"addrs":["0.0.0.0"]}', "'addrs'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ab","seq":1,"addrs":["224.0.0.1"]}', "'addrs'"),
    (b'{"type":"GROUPMEMBERS","group":"web","epoch":"ab","seq":1}', "missing field 'addrs'"),
    (b'{"type":"MEMBERSUPDATE","group":"web","epoch":"ab","seq":2,"added":["10.0.0.1\\n"],"removed":[]}',
     "'added'"),
    (b'{"type":"MEMBERSUPDATE","group":"web","epoch":"ab","seq":2,"added":[]}', "missing field 'removed'"),
])
def test_named_attacks_are_refused_with_a_reason(raw, reason):
    with pytest.raises(messages.MessageError) as caught:
        messages.decode_request(raw, ALL_TYPES)
    assert reason in str(caught.value)
    one_line(str(caught.value))


def test_unknown_fields_are_dropped_and_nothing_deep_survives():
    raw = fuzzdata.encode({"type": "GETACLSTATE", "endpoint_id": "ep1", "extra": [[[1]]],
                           "issued": 5})
    assert messages.decode_request(raw, ALL_TYPES) == {"type": "GETACLSTATE", "endpoint_id": "ep1", "issued": 5}
    raw = fuzzdata.encode({"type": "ACLUPDATE", "acls": {"v4": {"inbound": [], "x": 1}, "v9": {}}})
    assert messages.decode_request(raw, ALL_TYPES)["acls"] == {
        "v4": {"inbound": [], "outbound": [], "inbound_default": "deny", "outbound_default": "deny"}}


def test_decode_reply_is_total():
    good = {"type": "GETACLSTATE", "rc": "SUCCESS", "message": "", "endpoint_count": 3}
    assert messages.decode_reply(fuzzdata.encode(good), "GETACLSTATE") == good
    cases = [fuzzdata.encode(m) for m in fuzzdata.mutations(good)] + fuzzdata.raw_payloads()
    for raw in cases:
        try:
            reply = messages.decode_reply(raw, "GETACLSTATE")
        except messages.MessageError as exc:
            one_line(str(exc))
            continue
        assert set(reply) <= {"type", "rc", "message", "endpoint_count"}
        assert len(reply.get("message", "")) <= messages.MAX_TEXT


def test_membership_addresses_are_canonical_and_without_repeats():
    raw = fuzzdata.encode({"type": "GROUPMEMBERS", "group": "web", "epoch": "ab", "seq": 3,
                           "addrs": ["fd00:0:0::0001", "192.168.1.1", "fd00::1", "192.168.1.1"]})
    assert messages.decode_request(raw, ALL_TYPES) == {"type": "GROUPMEMBERS", "group": "web", "epoch": "ab",
                                                       "seq": 3, "addrs": ["fd00::1", "192.168.1.1"]}


def test_a_getgroupmembers_reply_carries_its_group_and_a_bad_group_is_refused():
    good = {"type": "GETGROUPMEMBERS", "rc": "SUCCESS", "message": "", "group": "web"}
    assert messages.decode_reply(fuzzdata.encode(good), "GETGROUPMEMBERS") == good
    with pytest.raises(messages.MessageError, match="'group'"):
        messages.decode_reply(fuzzdata.encode({**good, "group": "web\n"}), "GETGROUPMEMBERS")
    for mutated in fuzzdata.mutations(good):
        try:
            reply = messages.decode_reply(fuzzdata.encode(mutated), "GETGROUPMEMBERS")
        except messages.MessageError as exc:
            one_line(str(exc))
            continue
        assert set(reply) <= {"type", "rc", "message", "group", "endpoint_count"}


def test_rule_from_wire_is_total():
    base = {"group": None, "cidr": "10.0.0.0/8", "protocol": "tcp", "port": [80, 90]}
    cases = list(fuzzdata.mutations(base)) + fuzzdata.nasty_values()
    for wire in cases:
        try:
            rule = rule_from_wire(json.loads(fuzzdata.encode(wire)))
        except ValidationError as exc:
            one_line(str(exc))
            continue
        assert isinstance(rule, Rule) and rule_from_wire(rule.to_wire()) == rule


RULE_TEXTS = ["group:web", "10.0.0.0/8 tcp 80", "0.0.0.0/0 udp 1000-2000", "group:ops icmp 8/0", "::/0 58"]


def rule_text_cases() -> list[str]:
    cases = []
    for value in fuzzdata.nasty_values():
        if isinstance(value, str):
            cases += [value, f"group:{value}", f"10.0.0.0/8 tcp {value}", f"10.0.0.0/8 {value}",
                      f"{value} tcp 80", f"0.0.0.0/0 icmp {value}", f"10.0.0.0/8 tcp 80-{value}"]
    return cases + [";".join(RULE_TEXTS), "\n".join(RULE_TEXTS), "a b c d", "10.0.0.0/8 tcp 80 90"]


def test_parse_rule_list_is_total():
    for text in rule_text_cases():
        try:
            rules = parse_rule_list(text)
        except ValidationError as exc:
            one_line(str(exc))
            continue
        assert all(isinstance(r, Rule) for r in rules)


@pytest.mark.parametrize("digit", fuzzdata.UNICODE_DIGITS)
def test_unicode_digits_in_rules_are_a_validation_error(digit):
    for text in (f"10.0.0.0/8 tcp {digit}", f"10.0.0.0/8 {digit}", f"10.0.0.0/{digit} tcp 80",
                 f"0.0.0.0/0 icmp {digit}"):
        with pytest.raises(ValidationError):
            parse_rule_list(text)


FILE_TEMPLATES = [
    "[felix h1]\nip={v}\nhost=h1\n",
    "[felix {v}]\nip=10.0.0.1\n",
    "[endpoint e]\nid={v}\nip=192.168.1.1\nmac=aa:bb:cc:dd:ee:01\nhost=h1\ngroup=web\n",
    "[endpoint e]\nid=e\nip={v}\nmac=aa:bb:cc:dd:ee:01\nhost=h1\ngroup=web\n",
    "[endpoint e]\nid=e\nip=192.168.1.1\nmac={v}\nhost=h1\ngroup=web\n",
    "[endpoint e]\nid=e\nip=192.168.1.1\nmac=aa:bb:cc:dd:ee:01\nhost={v}\ngroup={v}\nstate={v}\n",
    "[global]\npool={v}\npool6={v}\n",
    "[global]\nas={v}\nplugin_host={v}\n",
    "[group web]\ninbound={v}\noutbound=10.0.0.0/8 tcp {v}\n",
    "[{v}]\nx=1\n",
    "{v}",
]


def test_parse_data_text_is_total():
    values = [v for v in fuzzdata.nasty_values() if isinstance(v, str)] + ["%(x)s", "[", "]", "=", ";x"]
    for template in FILE_TEMPLATES:
        for value in values:
            text = template.replace("{v}", value)
            try:
                contents = parse_data_text(text, "fuzz.txt")
            except DataFileError as exc:
                one_line(str(exc))
                continue
            for error in contents.errors:
                one_line(error)


CONFIG_TEMPLATES = [
    "[global]\nPluginAddress = {v}\n", "[global]\nFelixHostname = {v}\n", "[global]\nResyncIntervalSecs = {v}\n",
    "[connection]\nConnectionTimeoutMillis = {v}\n", "[connection]\nMaxMessageBytes = {v}\n",
    "[log]\nLogSeverityFile = {v}\n", "[security]\nInsecure = {v}\n", "[{v}]\nx = 1\n", "{v}",
]


def test_load_config_is_total(tmp_path):
    values = [v for v in fuzzdata.nasty_values() if isinstance(v, str)] + ["%(x)s", "-5", "0", "99999999999999999999"]
    path = tmp_path / "fuzz.cfg"
    for template in CONFIG_TEMPLATES:
        for value in values:
            path.write_bytes(template.replace("{v}", value).encode("utf-8", "surrogatepass"))
            try:
                load_config(str(path), env={})
            except ConfigError as exc:
                one_line(str(exc))
    path.write_bytes(b"[global]\nPluginAddress = \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path), env={})
