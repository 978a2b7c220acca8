"""Address parsing in calico.common.validation, pinned down input by input.

The behaviour must not depend on the netaddr version: the images run
Debian bookworm's netaddr 0.8.0, developers may have 1.x.  Both accept and
canonicalise exactly these (checked against 0.8.0 and 1.3.0)."""

import pytest

from calico.common.validation import ValidationError, parse_cidr, parse_ip
from calico.felix.ipsets import canonical_cidr


@pytest.mark.parametrize("text, canonical", [
    ("192.168.1.7", "192.168.1.7"),
    ("FD00::1", "fd00::1"),
    ("fd00:0:0::1", "fd00::1"),
    ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
    ("fe80::1", "fe80::1"),
])
def test_addresses_are_canonicalised(text, canonical):
    assert str(parse_ip(text)) == canonical


@pytest.mark.parametrize("text", [
    "10.1", "10.0.1", "16909060", "0x01020304",  # legacy inet_aton forms
    "010.0.0.1", "1.2.3.04",  # leading zeros (octal to inet_aton)
    " 1.2.3.4", "1.2.3.4 ", "1.2.3.4.", "1.2.3.256", "", "fe80::1%eth0", "1:2:3:4:5:6:7:8:9",
    "1.2.3.4/32",
])
def test_malformed_addresses_are_refused(text):
    with pytest.raises(ValidationError, match="bad IP address"):
        parse_ip(text)


@pytest.mark.parametrize("text", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "127.0.0.1", "::1"])
def test_non_unicast_addresses_are_refused(text):
    with pytest.raises(ValidationError, match="not a unicast host address"):
        parse_ip(text)


def test_loopback_is_allowed_for_hosts():
    assert str(parse_ip("127.0.0.1", allow_loopback=True)) == "127.0.0.1"


@pytest.mark.parametrize("text, canonical", [
    ("10.1.2.3/8", "10.0.0.0/8"),
    ("10.1.2.3", "10.1.2.3/32"),
    ("1.2.3.4/08", "1.0.0.0/8"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("fd00::1/64", "fd00::/64"),
    ("FD00::1", "fd00::1/128"),
    ("2001:DB8::/32", "2001:db8::/32"),
    ("::/0", "::/0"),
])
def test_cidrs_are_canonicalised(text, canonical):
    assert str(parse_cidr(text)) == canonical


@pytest.mark.parametrize("text", [
    "10/8", "192.168.1/24", "10.1/16",  # shorthand netaddr's IPNetwork alone would take
    "1.2.3.4/255.255.0.0", "1.2.3.4/33", "fd00::/129", "1.2.3.4/", "1.2.3.4/-1", "1.2.3.4/ 8",
    "10.0.0.0/8 ", "/8", "1.2.3.4//8", "fe80::1%eth0/64",
])
def test_malformed_cidrs_are_refused(text):
    with pytest.raises(ValidationError, match="bad CIDR"):
        parse_cidr(text)


@pytest.mark.parametrize("addr, prefix, canonical", [
    ("fd00::1", 64, "fd00::/64"),
    ("FD00:0::5", 128, "fd00::5/128"),
    ("10.1.2.0", 24, "10.1.2.0/24"),
])
def test_ipset_members_are_canonical(addr, prefix, canonical):
    assert canonical_cidr(addr, prefix) == canonical
