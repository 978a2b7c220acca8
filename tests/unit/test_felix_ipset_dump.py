"""The hand-written decoder of the kernel's ipset list dump (no kernel needed)."""

import socket
import struct

from calico.felix import ipset_dump
from calico.felix.ipsets import HASH_NET, HASH_NET_PORT, SetSpec

NESTED, NET_BYTEORDER = 0x8000, 0x4000


def nla(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def entry(addr: str, prefix: int, port: int | None = None, proto: int | None = None) -> bytes:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ip = nla(ipset_dump.ATTR_IPADDR_IPV6 if ":" in addr else ipset_dump.ATTR_IPADDR_IPV4 | NET_BYTEORDER,
             socket.inet_pton(family, addr))
    body = nla(ipset_dump.ATTR_IP | NESTED, ip) + nla(ipset_dump.ATTR_CIDR, bytes([prefix]))
    if port is not None:
        body += nla(ipset_dump.ATTR_PORT | NET_BYTEORDER, struct.pack(">H", port))
        body += nla(ipset_dump.ATTR_PROTO, bytes([proto]))
    return nla(ipset_dump.ATTR_DATA | NESTED, body)


def list_message(name: str, set_type: str, family: int, entries: list[bytes]) -> bytes:
    return (struct.pack("=BBH", socket.AF_INET, 0, 0)
            + nla(ipset_dump.ATTR_PROTOCOL, bytes([7]))
            + nla(ipset_dump.ATTR_SETNAME, name.encode() + b"\0")
            + nla(ipset_dump.ATTR_TYPENAME, set_type.encode() + b"\0")
            + nla(4, bytes([7]))  # revision
            + nla(ipset_dump.ATTR_FAMILY, bytes([family]))
            + nla(ipset_dump.ATTR_ADT | NESTED, b"".join(entries)))


def collect(*messages: bytes) -> dict:
    collector = ipset_dump._Collector()
    for message in messages:
        collector.message(message, 0, len(message))
    return collector.sets()


def test_members_decode_to_the_values_desired_sets_use():
    ports = list_message("felix-4in-x-port", HASH_NET_PORT, socket.AF_INET,
                         [entry("10.0.0.0", 8, 80, 6), entry("0.0.0.0", 1, 8 << 8, 1), entry("10.0.0.0", 8, 0, 47)])
    nets6 = list_message("felix-6out-x-net", HASH_NET, socket.AF_INET6,
                         [entry("2001:db8::", 64), entry("fd00::5", 128)])
    assert collect(ports, nets6) == {
        "felix-4in-x-port": SetSpec("felix-4in-x-port", HASH_NET_PORT, 4, frozenset(
            {("10.0.0.0/8", 6, 80), ("0.0.0.0/1", 1, 8 << 8), ("10.0.0.0/8", 47, 0)})),
        "felix-6out-x-net": SetSpec("felix-6out-x-net", HASH_NET, 6, frozenset({"2001:db8::/64", "fd00::5/128"})),
    }


def test_a_set_split_over_messages_is_merged_and_foreign_sets_ignored():
    first = list_message("felix-4in-x-net", HASH_NET, socket.AF_INET, [entry("10.0.0.1", 32)])
    second = list_message("felix-4in-x-net", HASH_NET, socket.AF_INET, [entry("10.0.0.2", 32)])
    other = list_message("docker-set", HASH_NET, socket.AF_INET, [entry("10.0.0.3", 32)])
    empty = list_message("felix-4in-y-net", HASH_NET, socket.AF_INET, [])
    sets = collect(first, second, other, empty)
    assert sets["felix-4in-x-net"].members == {"10.0.0.1/32", "10.0.0.2/32"}
    assert sets["felix-4in-y-net"].members == frozenset()
    assert "docker-set" not in sets


def test_list_request_is_a_dump_of_the_ipset_subsystem():
    request = ipset_dump.list_request(42)
    length, kind, flags, sequence, _pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, sequence) == (len(request), 6 << 8 | 7, 42)
    assert flags == ipset_dump.NLM_F_REQUEST | ipset_dump.NLM_F_DUMP


def continuation(name: str, entries: list[bytes]) -> bytes:
    """A later message of a split dump, as the kernel sends it: protocol, name
    and members only (no type name, no family)."""
    return (struct.pack("=BBH", socket.AF_INET, 0, 0)
            + nla(ipset_dump.ATTR_PROTOCOL, bytes([7]))
            + nla(ipset_dump.ATTR_SETNAME, name.encode() + b"\0")
            + nla(ipset_dump.ATTR_ADT | NESTED, b"".join(entries)))


def test_the_later_messages_of_a_split_dump_keep_the_first_ones_type_and_family():
    first = list_message("felix-4s-p", HASH_NET_PORT, socket.AF_INET, [entry("10.0.0.0", 8, 80, 6)])
    later = continuation("felix-4s-p", [entry("10.1.0.0", 16, 443, 6)])
    first6 = list_message("felix-6g-web", HASH_NET, socket.AF_INET6, [entry("fd00::1", 128)])
    later6 = continuation("felix-6g-web", [entry("fd00::2", 128)])
    assert collect(first, first6, later, later6) == {
        "felix-4s-p": SetSpec("felix-4s-p", HASH_NET_PORT, 4, frozenset({("10.0.0.0/8", 6, 80),
                                                                        ("10.1.0.0/16", 6, 443)})),
        "felix-6g-web": SetSpec("felix-6g-web", HASH_NET, 6, frozenset({"fd00::1/128", "fd00::2/128"})),
    }
