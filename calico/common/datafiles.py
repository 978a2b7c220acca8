"""Parsers for the files users write into the data directory.

See docs/architecture.md, "The data directory".

Every ``*.txt`` file in the data directory is INI and may hold any of:

* ``[felix NAME]`` with ``ip`` and ``host``: a host of the cluster;
* ``[endpoint NAME]`` with ``id``, ``ip``, ``mac``, ``host``, ``group`` and
  optionally ``state``: one container endpoint;
* ``[global]`` with ``pool``, ``pool6``, ``as``, ``plugin_host`` and the
  cluster-wide dataplane settings ``nat_outgoing``, ``ipip`` and
  ``route_reflectors`` (see ``GlobalSettings``);
* ``[group NAME]`` with ``inbound`` and ``outbound`` rule lists.

This module checks each file on its own and returns plain immutable values.
Checks that need every file at once (an endpoint's host exists, no two
endpoints share an address) belong to the plugin's store.  Errors are
``DataFileError`` whose text is one line naming the file, the section and the
reason, ready for the log.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field, replace
from typing import Any

from calico.common import messages
from calico.common.rules import Rule, parse_rule_list
from calico.common.validation import (
    DEFAULT_POOL,
    DEFAULT_POOL6,
    ValidationError,
    check_endpoint_id,
    check_group_name,
    check_hostname,
    parse_cidr,
    parse_ip,
    parse_decimal,
    parse_mac,
    printable,
    short_hostname,
    shown,
)

DEFAULT_AS = 64511


class DataFileError(ValueError):
    """A file (or one section of it) that cannot be used."""


@dataclass(frozen=True)
class Host:
    name: str  # short name: compared up to the first dot
    ip: str


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    addrs: tuple[str, ...]
    mac: str
    host: str
    groups: tuple[str, ...]
    state: str = "enabled"
    name: str = ""
    source: str = ""

    def message(self, msg_type: str, resync_id: str | None = None) -> dict[str, Any]:
        """The ENDPOINTCREATED/UPDATED message announcing this endpoint."""
        fields: dict[str, Any] = {
            "endpoint_id": self.endpoint_id,
            "mac": self.mac,
            "state": self.state,
            "addrs": [{"addr": a} for a in self.addrs],
        }
        if resync_id is not None:
            fields["resync_id"] = resync_id
        return messages.make(msg_type, **fields)

    def same_dataplane(self, other: "Endpoint") -> bool:
        """True when Felix would program both the same way (groups aside)."""
        return (self.endpoint_id, self.addrs, self.mac, self.host, self.state) == (
            other.endpoint_id, other.addrs, other.mac, other.host, other.state)


@dataclass(frozen=True)
class GroupRules:
    name: str
    inbound: tuple[Rule, ...]
    outbound: tuple[Rule, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "inbound": [r.to_wire() for r in self.inbound],
            "outbound": [r.to_wire() for r in self.outbound],
            "inbound_default": "deny",
            "outbound_default": "deny",
        }


# The data directory: where the plugin reads, calico-attach writes and the
# cluster file lives.  Its one home; the registry (calico.common.settings)
# and every reader take it from here.
DATA_DIR = "/opt/plugin/data"
CLUSTER_FILE_NAME = "felix.txt"
DEFAULT_CLUSTER_FILE = os.path.join(DATA_DIR, CLUSTER_FILE_NAME)

IPIP_NEVER, IPIP_CROSS_SUBNET, IPIP_ALWAYS = "never", "cross-subnet", "always"
IPIP_MODES = (IPIP_NEVER, IPIP_CROSS_SUBNET, IPIP_ALWAYS)
# Environment variables that override the cluster file's [global] keys where
# a component has no cluster file (the Docker images: CALICO_HOSTS only).
SETTINGS_ENV = {"nat_outgoing": "CALICO_NAT_OUTGOING", "ipip": "CALICO_IPIP",
                "route_reflectors": "CALICO_ROUTE_REFLECTORS"}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


@dataclass(frozen=True)
class GlobalSettings:
    pool: str = DEFAULT_POOL
    as_number: int = DEFAULT_AS
    plugin_host: str | None = None
    pool6: str = DEFAULT_POOL6
    # Masquerade traffic from the pools to anywhere outside every pool (Felix).
    nat_outgoing: bool = False
    # Encapsulate traffic to other hosts' containers in IP-in-IP via tunl0:
    # never, only to hosts outside this host's subnet, or always (BIRD's
    # kernel export filter and Felix's tunl0 set-up).
    ipip: str = IPIP_NEVER
    # Hosts that reflect routes to every other host; empty = full iBGP mesh.
    route_reflectors: tuple[str, ...] = ()


def parse_nat_outgoing(text: str) -> bool:
    value = _BOOL_WORDS.get(text.strip().lower())
    if value is None:
        raise ValidationError(f"nat_outgoing {text.strip()!r} is not true or false")
    return value


def parse_ipip(text: str) -> str:
    mode = text.strip().lower()
    if mode not in IPIP_MODES:
        raise ValidationError(f"ipip {text.strip()!r} is not one of {', '.join(IPIP_MODES)}")
    return mode


def parse_route_reflectors(text: str) -> tuple[str, ...]:
    names = []
    for item in _split_list(text):
        try:
            names.append(check_hostname(short_hostname(item)))
        except ValidationError:
            raise ValidationError(f"route_reflectors: bad host name {item!r}") from None
    if len(set(names)) != len(names):
        raise ValidationError("route_reflectors: a host is named twice")
    return tuple(names)


def settings_with_env(settings: GlobalSettings, env: dict[str, str]) -> GlobalSettings:
    """``settings`` with CALICO_NAT_OUTGOING / CALICO_IPIP / CALICO_ROUTE_REFLECTORS
    applied over them (a set, non-empty variable wins over the cluster file).
    A bad value raises ValidationError naming the variable."""
    parsers = {"nat_outgoing": parse_nat_outgoing, "ipip": parse_ipip,
               "route_reflectors": parse_route_reflectors}
    changes: dict[str, Any] = {}
    for key, var in SETTINGS_ENV.items():
        text = env.get(var, "").strip()
        if not text:
            continue
        try:
            changes[key] = parsers[key](text)
        except ValidationError as exc:
            raise ValidationError(f"environment {var}: {exc}") from None
    return replace(settings, **changes) if changes else settings


@dataclass
class FileContents:
    source: str
    hosts: list[Host] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    groups: list[GroupRules] = field(default_factory=list)
    global_settings: GlobalSettings | None = None
    # Sections skipped for a fault, one line each; the rest of the file stands.
    errors: list[str] = field(default_factory=list)


def default_group_rules(name: str) -> GroupRules:
    """The seed's rules: in from the group, out to the group and anywhere."""
    return GroupRules(
        name,
        inbound=(Rule(group=name),),
        outbound=(Rule(group=name), Rule(cidr="0.0.0.0/0"), Rule(cidr="::/0")),
    )


def _get(section: configparser.SectionProxy, key: str) -> str:
    value = section.get(key, "").strip()
    if not value:
        raise ValidationError(f"missing '{key}'")
    return value


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_host(name: str, section: configparser.SectionProxy) -> Host:
    ip = str(parse_ip(_get(section, "ip"), allow_loopback=True))
    host = section.get("host", "").strip() or name
    return Host(check_hostname(short_hostname(host)), ip)


def _parse_endpoint(name: str, section: configparser.SectionProxy, source: str) -> Endpoint:
    endpoint_id = check_endpoint_id(_get(section, "id"))
    addrs = tuple(str(parse_ip(a)) for a in _split_list(_get(section, "ip")))
    if len(set(addrs)) != len(addrs):
        raise ValidationError("an address is listed twice")
    mac = parse_mac(_get(section, "mac"))
    host = check_hostname(short_hostname(_get(section, "host")))
    groups = tuple(check_group_name(g) for g in _split_list(_get(section, "group")))
    state = section.get("state", "enabled").strip()
    if state not in messages.ENDPOINT_STATES:
        raise ValidationError(f"state {shown(state)} is not enabled or disabled")
    return Endpoint(endpoint_id, addrs, mac, host, groups, state, name, source)


def _parse_group(name: str, section: configparser.SectionProxy) -> GroupRules:
    check_group_name(name)
    default = default_group_rules(name)
    inbound = section.get("inbound")
    outbound = section.get("outbound")
    return GroupRules(
        name,
        tuple(parse_rule_list(inbound)) if inbound is not None else default.inbound,
        tuple(parse_rule_list(outbound)) if outbound is not None else default.outbound,
    )


def _parse_global(section: configparser.SectionProxy) -> GlobalSettings:
    pool = str(parse_cidr(section.get("pool", DEFAULT_POOL).strip()))
    if ":" in pool:
        raise ValidationError(f"pool {pool} is not IPv4 (IPv6 goes in pool6)")
    pool6 = str(parse_cidr(section.get("pool6", DEFAULT_POOL6).strip()))
    if ":" not in pool6:
        raise ValidationError(f"pool6 {pool6} is not IPv6")
    as_text = section.get("as", str(DEFAULT_AS)).strip()
    as_number = parse_decimal(as_text, "as")
    if not 0 < as_number < 2**32:
        raise ValidationError(f"as {shown(as_text)} is not an AS number")
    plugin_host = section.get("plugin_host", "").strip() or None
    if plugin_host is not None:
        plugin_host = check_hostname(short_hostname(plugin_host))
    known = {"pool", "pool6", "as", "plugin_host", "nat_outgoing", "ipip", "route_reflectors"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValidationError(f"unknown key {shown(unknown[0])} (want {', '.join(sorted(known))})")
    return GlobalSettings(pool, as_number, plugin_host, pool6,
                          nat_outgoing=parse_nat_outgoing(section.get("nat_outgoing", "false")),
                          ipip=parse_ipip(section.get("ipip", IPIP_NEVER)),
                          route_reflectors=parse_route_reflectors(section.get("route_reflectors", "")))


def parse_data_text(text: str, source: str) -> FileContents:
    """Parse one file's text.  A file-level fault raises DataFileError; a bad
    section is recorded in ``errors`` and skipped so the file's other
    sections still count."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    where = printable(source)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        reason = " ".join(str(exc).split())
        raise DataFileError(f"{where}: not a valid INI file: {shown(reason)[1:-1]}") from None
    contents = FileContents(source)
    for section_name in parser.sections():
        section = parser[section_name]
        kind, _, name = section_name.strip().partition(" ")
        name = name.strip()
        try:
            if kind == "felix" and name:
                contents.hosts.append(_parse_host(name, section))
            elif kind == "endpoint" and name:
                contents.endpoints.append(_parse_endpoint(name, section, source))
            elif kind == "group" and name:
                contents.groups.append(_parse_group(name, section))
            elif kind == "global" and not name:
                contents.global_settings = _parse_global(section)
            else:
                raise ValidationError("unknown section (want felix NAME, endpoint NAME, group NAME or global)")
        except ValidationError as exc:
            contents.errors.append(f"{where}: [{printable(section_name)}]: {exc}")
    return contents


def parse_data_file(path: str) -> FileContents:
    source = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise DataFileError(f"{printable(source)}: not UTF-8 text") from None
    except OSError as exc:
        raise DataFileError(f"{printable(source)}: cannot read: {exc.strerror}") from None
    return parse_data_text(text, source)


def endpoint_file_text(endpoint: Endpoint) -> str:
    """The text of an endpoint file, as network_container.sh writes it."""
    lines = [
        f"[endpoint {endpoint.name or endpoint_file_stem(endpoint.addrs[0])}]",
        f"id={endpoint.endpoint_id}",
        f"ip={','.join(endpoint.addrs)}",
        f"mac={endpoint.mac}",
        f"host={endpoint.host}",
        f"group={','.join(endpoint.groups)}",
    ]
    if endpoint.state != "enabled":
        lines.append(f"state={endpoint.state}")
    return "\n".join(lines) + "\n"


def endpoint_file_stem(ip: str) -> str:
    """Endpoint files are named after their first IP, dots as underscores."""
    return ip.replace(".", "_").replace(":", "_")


def write_file_atomically(path: str, text: str) -> None:
    """Write via a temporary name and rename, so readers never see half a file.

    The temporary name does not end in .txt, so the plugin ignores it."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)


@dataclass
class Cluster:
    """The cluster file (felix.txt) as a whole."""

    hosts: list[Host]
    settings: GlobalSettings
    groups: dict[str, GroupRules]

    @property
    def plugin_host(self) -> Host:
        if self.settings.plugin_host:
            for host in self.hosts:
                if host.name == self.settings.plugin_host:
                    return host
            raise DataFileError(f"[global] plugin_host {self.settings.plugin_host!r} is not a [felix] host")
        return self.hosts[0]

    def host(self, name: str) -> Host | None:
        short = short_hostname(name)
        return next((h for h in self.hosts if h.name == short), None)


def load_cluster(path: str) -> Cluster:
    """Load a cluster file strictly: any bad section is an error."""
    contents = parse_data_file(path)
    if contents.errors:
        raise DataFileError(contents.errors[0])
    if not contents.hosts:
        raise DataFileError(f"{contents.source}: no [felix NAME] host sections")
    names = [h.name for h in contents.hosts]
    if len(set(names)) != len(names):
        raise DataFileError(f"{contents.source}: a host is listed twice")
    settings = contents.global_settings or GlobalSettings()
    check_settings_hosts(settings, contents.hosts, contents.source)
    return Cluster(contents.hosts, settings, {g.name: g for g in contents.groups})


def check_settings_hosts(settings: GlobalSettings, hosts: list[Host], source: str) -> None:
    """Settings naming hosts must name [felix] hosts (DataFileError otherwise)."""
    names = {h.name for h in hosts}
    for name in settings.route_reflectors:
        if name not in names:
            raise DataFileError(f"{source}: [global] route_reflectors: {name!r} is not a [felix] host")
