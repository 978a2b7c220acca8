"""Round trips through the shared wire and file models."""

import pytest

from calico.common import messages
from calico.common.datafiles import parse_data_text
from calico.common.rules import parse_rule_text, rule_from_wire


def test_endpoint_message_round_trip():
    contents = parse_data_text(
        "[endpoint 192_168_1_1]\nid=abc\nip=192.168.1.1\nmac=AA:BB:CC:DD:EE:FF\nhost=h1.example\ngroup=web\n",
        "e.txt")
    ep = contents.endpoints[0]
    raw = messages.encode(ep.message(messages.ENDPOINTCREATED, resync_id="r1"))
    msg = messages.decode_request(raw, {messages.ENDPOINTCREATED})
    assert msg["mac"] == "aa:bb:cc:dd:ee:ff"
    assert msg["addrs"] == [{"addr": "192.168.1.1"}]
    assert msg["resync_id"] == "r1"
    assert ep.host == "h1"


@pytest.mark.parametrize("text", ["group:web", "0.0.0.0/0 tcp 80", "10.0.0.0/8 udp 1000-2000",
                                  "group:ops icmp 8/0", "::/0 icmpv6"])
def test_rule_text_wire_round_trip(text):
    rule = parse_rule_text(text)
    assert rule_from_wire(rule.to_wire()) == rule
    assert str(rule) == text


def test_members_topic_round_trip_and_what_is_not_a_members_topic():
    from calico.common.validation import ValidationError

    assert messages.members_topic("web") == b":members:web:"
    assert messages.members_topic("a.b-c_9") == b":members:a.b-c_9:"
    assert messages.group_of_topic(b":members:web:") == "web"
    for topic in (b"web", b":members:web", b"members:web:", b":members::", b":members:", b":members:a:b:",
                  b":members:w\xffb:", b"aclheartbeat", b"ep1"):
        assert messages.group_of_topic(topic) is None, topic
    # SUB topics match by prefix: no group's topic is a prefix of another's.
    assert not messages.members_topic("webx").startswith(messages.members_topic("web"))
    with pytest.raises(ValidationError):
        messages.members_topic("a:b")
