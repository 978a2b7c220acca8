"""Validation of every name and address that may reach the kernel.

Endpoint ids become interface names (``tap`` + id[:11]) and parts of ipset and
iptables chain names; group names appear in logs and config.  Both are held to
a conservative character set so that nothing from a file or a message can
smuggle in whitespace, slashes or option-like text.  Addresses and MACs are
parsed with netaddr and returned in canonical form, so two spellings of the
same address compare equal everywhere downstream.
"""

from __future__ import annotations

import re

import netaddr

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A leading '-' would look like an option to iproute2/ipset; a leading '.'
# is confusing in interface names.
ENDPOINT_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
IFACE_PREFIX = "tap"
IFACE_ID_CHARS = 11

DEFAULT_POOL = "192.168.0.0/16"
# IPv6 endpoint addresses come from here unless [global] pool6 says otherwise.
DEFAULT_POOL6 = "fd80:24e2:f998:72d6::/64"


class ValidationError(ValueError):
    """A value that failed validation; the message names what was wrong."""


def check_group_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(f"bad group name {name!r} (want 1-64 of A-Z a-z 0-9 _ . -)")
    return name


def check_endpoint_id(endpoint_id: object) -> str:
    if not isinstance(endpoint_id, str) or not ENDPOINT_ID_RE.match(endpoint_id):
        raise ValidationError(
            f"bad endpoint id {endpoint_id!r} (want 1-64 of A-Z a-z 0-9 _ . -, not starting with . or -)"
        )
    return endpoint_id


def check_hostname(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(f"bad host name {name!r}")
    return name


def short_hostname(name: str) -> str:
    """Host names are compared up to their first dot, as the seed's plugin did."""
    return name.split(".", 1)[0]


def interface_name(endpoint_id: str) -> str:
    return IFACE_PREFIX + endpoint_id[:IFACE_ID_CHARS]


def parse_ip(value: object, allow_loopback: bool = False) -> netaddr.IPAddress:
    """Parse one unicast host address (IPv4 or IPv6), no prefix length.

    Loopback is refused for endpoints but allowed for hosts and peers, which
    tests (and single-machine setups) run on 127.0.0.x."""
    if not isinstance(value, str) or not value or "/" in value:
        raise ValidationError(f"bad IP address {value!r}")
    try:
        # INET_PTON refuses the legacy forms netaddr would otherwise accept
        # ("10.1" meaning 10.0.0.1), which no operator means.
        addr = netaddr.IPAddress(value, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValidationError(f"bad IP address {value!r}") from None
    if addr.is_multicast() or (addr.is_loopback() and not allow_loopback) or addr == netaddr.IPAddress(0, addr.version):
        raise ValidationError(f"IP address {value!r} is not a unicast host address")
    return addr


def parse_cidr(value: object) -> netaddr.IPNetwork:
    """Parse a CIDR (or a bare address, meaning /32 or /128), canonicalised."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"bad CIDR {value!r}")
    addr_part, _, prefix = value.partition("/")
    try:
        # Parse the address strictly first: IPNetwork alone accepts legacy
        # shorthand such as "10/8", which no operator means.
        netaddr.IPAddress(addr_part, flags=netaddr.INET_PTON)
        if prefix and not prefix.isdigit():
            raise ValueError(prefix)
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValidationError(f"bad CIDR {value!r}") from None
    return net.cidr


def parse_mac(value: object) -> str:
    """Parse a MAC address into lower-case colon form."""
    if not isinstance(value, str) or not re.match(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$", value):
        raise ValidationError(f"bad MAC address {value!r}")
    mac = value.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:
        raise ValidationError(f"MAC address {value!r} is multicast")
    return mac


def host_cidr(addr: netaddr.IPAddress) -> str:
    """The /32 or /128 network holding exactly this address."""
    return f"{addr}/{32 if addr.version == 4 else 128}"
