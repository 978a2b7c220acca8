"""Validation of every name and address that may reach the kernel.

Endpoint ids become interface names (``calico.common.kernel_names``) and parts of ipset and
iptables chain names; group names appear in logs and config.  Both are held to
a conservative character set so that nothing from a file or a message can
smuggle in whitespace, slashes or option-like text.  Addresses and MACs are
parsed with netaddr and returned in canonical form, so two spellings of the
same address compare equal everywhere downstream.
"""

from __future__ import annotations

import re
import reprlib

import netaddr

# Every pattern is applied with re.fullmatch: with re.match and '$' a
# trailing newline would pass ("abc\n"), and reach iptables-restore's text
# as a line of its own.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# A leading '-' would look like an option to iproute2/ipset; a leading '.'
# is confusing in interface names.
ENDPOINT_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}")
# ASCII digits only: str.isdigit() and int() also take '²' or '١'.
DECIMAL_RE = re.compile(r"[0-9]{1,18}")

DEFAULT_POOL = "192.168.0.0/16"
# IPv6 endpoint addresses come from here unless [global] pool6 says otherwise.
DEFAULT_POOL6 = "fd80:24e2:f998:72d6::/64"


class ValidationError(ValueError):
    """A value that failed validation; the message names what was wrong."""


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 80
_SHOWN.maxother = 80
_SHOWN.maxlevel = 3


def shown(value: object) -> str:
    """repr() of an untrusted value, cut short: safe to put in one log line
    whatever its size or depth (repr of a deeply nested list would raise)."""
    return _SHOWN.repr(value)


def printable(text: str, limit: int = 80) -> str:
    """``text`` itself if it is short printable ASCII (a file or section
    name, kept as the user knows it), else its bounded repr."""
    return text if len(text) <= limit and re.fullmatch(r"[\x20-\x7e]*", text) else shown(text)


def parse_decimal(text: object, what: str = "number") -> int:
    """A non-negative integer written in ASCII digits, nothing else."""
    if not isinstance(text, str) or not DECIMAL_RE.fullmatch(text):
        raise ValidationError(f"{what} {shown(text)} is not a number (want ASCII digits)")
    return int(text)


def check_group_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValidationError(f"bad group name {shown(name)} (want 1-64 of A-Z a-z 0-9 _ . -)")
    return name


def check_endpoint_id(endpoint_id: object) -> str:
    if not isinstance(endpoint_id, str) or not ENDPOINT_ID_RE.fullmatch(endpoint_id):
        raise ValidationError(
            f"bad endpoint id {shown(endpoint_id)} (want 1-64 of A-Z a-z 0-9 _ . -, not starting with . or -)"
        )
    return endpoint_id


def check_hostname(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValidationError(f"bad host name {shown(name)}")
    return name


def short_hostname(name: str) -> str:
    """Host names are compared up to their first dot, as the seed's plugin did."""
    return name.split(".", 1)[0]


def parse_ip(value: object, allow_loopback: bool = False) -> netaddr.IPAddress:
    """Parse one unicast host address (IPv4 or IPv6), no prefix length.

    Loopback is refused for endpoints but allowed for hosts and peers, which
    tests (and single-machine setups) run on 127.0.0.x."""
    if not isinstance(value, str) or not value or "/" in value or len(value) > 64:
        raise ValidationError(f"bad IP address {shown(value)}")
    try:
        # INET_PTON refuses the legacy forms netaddr would otherwise accept
        # ("10.1" meaning 10.0.0.1), which no operator means.
        addr = netaddr.IPAddress(value, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValidationError(f"bad IP address {shown(value)}") from None
    if addr.is_multicast() or (addr.is_loopback() and not allow_loopback) or addr == netaddr.IPAddress(0, addr.version):
        raise ValidationError(f"IP address {shown(value)} is not a unicast host address")
    return addr


def parse_cidr(value: object) -> netaddr.IPNetwork:
    """Parse a CIDR (or a bare address, meaning /32 or /128), canonicalised."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValidationError(f"bad CIDR {shown(value)}")
    addr_part, slash, prefix = value.partition("/")
    try:
        # Parse the address strictly first: IPNetwork alone accepts legacy
        # shorthand such as "10/8", which no operator means; and the prefix
        # length in ASCII digits (IPNetwork takes "/０8" or "/8\n").
        netaddr.IPAddress(addr_part, flags=netaddr.INET_PTON)
        if slash and not re.fullmatch(r"[0-9]{1,3}", prefix):
            raise ValueError(prefix)
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValidationError(f"bad CIDR {shown(value)}") from None
    return net.cidr


def parse_mac(value: object) -> str:
    """Parse a MAC address into lower-case colon form."""
    if not isinstance(value, str) or not MAC_RE.fullmatch(value):
        raise ValidationError(f"bad MAC address {shown(value)}")
    mac = value.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:
        raise ValidationError(f"MAC address {shown(value)} is multicast")
    return mac


def host_cidr(addr: netaddr.IPAddress) -> str:
    """The /32 or /128 network holding exactly this address."""
    return f"{addr}/{32 if addr.version == 4 else 128}"
