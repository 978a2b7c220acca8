"""Component configuration: felix.cfg and acl_manager.cfg.

Keys are those of the original Calico (DESIGN section 3).  Every key has a
default except the peer addresses, which may also come from the environment
or the cluster file so that one Docker image serves every site:

1. the config file's value, unless it still holds a seed placeholder
   (``IP1``, ``HOST2``...: the operator skipped the seed's sed step);
2. ``CALICO_PLUGIN_ADDRESS``, ``CALICO_ACL_ADDRESS``, ``CALICO_FELIX_HOSTNAME``;
3. ``CALICO_HOSTS`` (``name=ip name=ip``, the first being the plugin host) or
   the cluster file (``CALICO_CLUSTER_FILE``, default
   /opt/plugin/data/felix.txt).

The ``[security]`` keys (ClusterSecretFile, Insecure) left empty or out
come from ``CALICO_SECRET_FILE`` and ``CALICO_INSECURE``, then their
defaults (/etc/calico/cluster.secret; secure), so that a Docker run can set
them with ``-e``.  The ``[health]`` keys likewise (``CALICO_HEALTH_ENABLED``,
``CALICO_HEALTH_HOST``, ``CALICO_HEALTH_PORT``, ``CALICO_HEALTH_TIMEOUT_SECS``,
``CALICO_PROMETHEUS_METRICS_ENABLED``); HealthPort's default is the
component's own (``calico.common.health.DEFAULT_PORTS``: Felix 9099, the
ACL manager 9096), given to ``load_config`` as ``defaults``.

A bad value stops start-up with ``ConfigError``, one line naming the file,
key and value.
"""

from __future__ import annotations

import configparser
import os
import re
import socket
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Mapping

from calico.common.cluster_env import DEFAULT_CLUSTER_FILE, ConfigError, hosts_from_env, is_placeholder
from calico.common.datafiles import DataFileError, Host, load_cluster
from calico.common.health import DEFAULT_HOST as DEFAULT_HEALTH_HOST
from calico.common.health import DEFAULT_PORTS as DEFAULT_HEALTH_PORTS
from calico.common.health import DEFAULT_TIMEOUT_SECS as DEFAULT_HEALTH_TIMEOUT_SECS
from calico.common.security import DEFAULT_SECRET_FILE, parse_flag
from calico.common.zmqloop import DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES
from calico.common.validation import (DEFAULT_POOL, DEFAULT_POOL6, ValidationError, check_hostname, parse_cidr,
                                      parse_decimal, parse_ip, printable, short_hostname, shown)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "NONE")
# Felix's DefaultEndpointToHostAction: what may an endpoint send to its host
# beyond DHCP and neighbour discovery (calico.felix.iptables_layout).
TO_HOST_ACTIONS = ("DROP", "RETURN", "ACCEPT")
# Felix's IptablesBackend: which iptables backend it programs; auto picks the
# one Docker and the host use (calico.felix.backend_check).
IPTABLES_BACKENDS = ("auto", "legacy", "nft")


@dataclass
class Config:
    plugin_address: str = ""
    acl_address: str = ""
    felix_hostname: str = ""
    local_address: str = "*"
    resync_interval_secs: int = 1800
    endpoint_retry_time_millis: int = 500
    log_file_path: str = ""
    log_severity_file: str = "INFO"
    log_severity_sys: str = "NONE"
    log_severity_screen: str = "INFO"
    connection_timeout_millis: int = 6000
    connection_keepalive_interval_millis: int = 2000
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    cluster_secret_file: str = DEFAULT_SECRET_FILE
    insecure: bool = False
    # Felix's checks and endpoint-to-host policy.  Empty pools mean: the
    # cluster file's [global] pool / pool6, else the defaults (resolve_pools).
    default_endpoint_to_host_action: str = "DROP"
    ip_pool: tuple[str, ...] = ()
    ip_pool6: tuple[str, ...] = ()
    max_endpoints: int = 5000
    # Health and metrics over HTTP (calico.common.health): on the host's
    # loopback unless the operator says otherwise; metrics off by default.
    health_enabled: bool = True
    health_host: str = DEFAULT_HEALTH_HOST
    health_port: int = DEFAULT_HEALTH_PORTS["felix"]
    health_timeout_secs: int = DEFAULT_HEALTH_TIMEOUT_SECS
    prometheus_metrics_enabled: bool = False
    iptables_backend: str = "auto"
    source: str = "<defaults>"


def _positive_int(text: str) -> int:
    value = parse_decimal(text.strip(), "value")
    if value <= 0:
        raise ValueError("not a positive integer")
    return value


def _message_bytes(text: str) -> int:
    value = _positive_int(text)
    if value < MIN_MAX_MESSAGE_BYTES:
        raise ValueError(f"below the minimum of {MIN_MAX_MESSAGE_BYTES}")
    return value


def _level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"not one of {', '.join(LOG_LEVELS)}")
    return level


def _address(text: str) -> str:
    text = text.strip()
    if text == "*":
        return text
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9.-]{0,252}", text):
        return text  # a DNS name; ZeroMQ resolves it on connect
    return str(parse_ip(text, allow_loopback=True))


def _listen_host(text: str) -> str:
    """An address to serve on: an IP literal, 0.0.0.0 or :: for every one."""
    text = text.strip()
    if text in ("0.0.0.0", "::"):
        return text
    return str(parse_ip(text, allow_loopback=True))


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise ValueError("not a port number (1-65535)")
    return value


def _hostname(text: str) -> str:
    return check_hostname(short_hostname(text.strip()))


def _path(text: str) -> str:
    return text.strip()


def _to_host_action(text: str) -> str:
    action = text.strip().upper()
    if action not in TO_HOST_ACTIONS:
        raise ValueError(f"not one of {', '.join(TO_HOST_ACTIONS)}")
    return action


def _iptables_backend(text: str) -> str:
    backend = text.strip().lower()
    if backend not in IPTABLES_BACKENDS:
        raise ValueError(f"not one of {', '.join(IPTABLES_BACKENDS)}")
    return backend


def _pools(version: int) -> Callable[[str], tuple[str, ...]]:
    """Comma-separated CIDRs of one family, canonical; empty means unset."""
    def parse(text: str) -> tuple[str, ...]:
        pools = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            net = parse_cidr(item)
            if net.version != version:
                raise ValueError(f"{item} is not an IPv{version} CIDR")
            pools.append(str(net))
        return tuple(pools)
    return parse


# (section, key in the file, attribute, parser)
_KEYS: list[tuple[str, str, str, Callable[[str], object]]] = [
    ("global", "PluginAddress", "plugin_address", _address),
    ("global", "ACLAddress", "acl_address", _address),
    ("global", "FelixHostname", "felix_hostname", _hostname),
    ("global", "LocalAddress", "local_address", _address),
    ("global", "ResyncIntervalSecs", "resync_interval_secs", _positive_int),
    ("global", "EndpointRetryTimeMillis", "endpoint_retry_time_millis", _positive_int),
    ("global", "DefaultEndpointToHostAction", "default_endpoint_to_host_action", _to_host_action),
    ("global", "IpPool", "ip_pool", _pools(4)),
    ("global", "IpPool6", "ip_pool6", _pools(6)),
    ("global", "MaxEndpoints", "max_endpoints", _positive_int),
    ("global", "IptablesBackend", "iptables_backend", _iptables_backend),
    ("log", "LogFilePath", "log_file_path", _path),
    ("log", "LogSeverityFile", "log_severity_file", _level),
    ("log", "LogSeveritySys", "log_severity_sys", _level),
    ("log", "LogSeverityScreen", "log_severity_screen", _level),
    ("connection", "ConnectionTimeoutMillis", "connection_timeout_millis", _positive_int),
    ("connection", "ConnectionKeepaliveIntervalMillis", "connection_keepalive_interval_millis", _positive_int),
    ("connection", "MaxMessageBytes", "max_message_bytes", _message_bytes),
    ("security", "ClusterSecretFile", "cluster_secret_file", _path),
    ("security", "Insecure", "insecure", parse_flag),
    ("health", "HealthEnabled", "health_enabled", parse_flag),
    ("health", "HealthHost", "health_host", _listen_host),
    ("health", "HealthPort", "health_port", _port),
    ("health", "HealthTimeoutSecs", "health_timeout_secs", _positive_int),
    ("health", "PrometheusMetricsEnabled", "prometheus_metrics_enabled", parse_flag),
]

_ENV = {
    "plugin_address": "CALICO_PLUGIN_ADDRESS",
    "acl_address": "CALICO_ACL_ADDRESS",
    "felix_hostname": "CALICO_FELIX_HOSTNAME",
}
# Keys with a default of their own that the environment may still set when
# the file leaves them empty or out.
_ENV_UNLESS_SET = {
    "cluster_secret_file": "CALICO_SECRET_FILE",
    "insecure": "CALICO_INSECURE",
    "health_enabled": "CALICO_HEALTH_ENABLED",
    "health_host": "CALICO_HEALTH_HOST",
    "health_port": "CALICO_HEALTH_PORT",
    "health_timeout_secs": "CALICO_HEALTH_TIMEOUT_SECS",
    "prometheus_metrics_enabled": "CALICO_PROMETHEUS_METRICS_ENABLED",
}


def load_config(path: str | None, env: dict[str, str] | None = None,
                defaults: Mapping[str, Any] | None = None) -> Config:
    """Read a component config file; ``path`` None means defaults only.
    ``defaults`` (attribute -> value) replaces Config's own for this component."""
    env = dict(os.environ) if env is None else env
    config = Config(**(defaults or {}))
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are CamelCase, as in the original Calico
    if path is not None:
        config.source = path
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle, source=path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        except configparser.Error as exc:
            raise ConfigError(f"{path}: not a valid INI file: {shown(' '.join(str(exc).split()))[1:-1]}") from None
    known = {(section, key) for section, key, _, _ in _KEYS}
    for section in parser.sections():
        for key in parser[section]:
            if (section, key) not in known:
                raise ConfigError(f"{path}: [{printable(section)}] {printable(key)}: unknown key")
    from_file = set()
    for section, key, attr, parse in _KEYS:
        if not parser.has_option(section, key):
            continue
        raw = parser.get(section, key)
        if attr in _ENV and (not raw.strip() or is_placeholder(raw)):
            continue
        if attr in _ENV_UNLESS_SET and not raw.strip():
            continue
        from_file.add(attr)
        try:
            setattr(config, attr, parse(raw))
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"{path}: [{section}] {key} = {shown(raw)}: {exc}") from None
    for attr, var in _ENV.items():
        value = env.get(var, "").strip()
        if not getattr(config, attr) and value and not is_placeholder(value):
            parse = next(p for _, _, a, p in _KEYS if a == attr)
            try:
                setattr(config, attr, parse(value))
            except (ValueError, ValidationError) as exc:
                raise ConfigError(f"environment {var} = {shown(value)}: {exc}") from None
    for attr, var in _ENV_UNLESS_SET.items():
        value = env.get(var, "").strip()
        if attr not in from_file and value:
            parse = next(p for _, _, a, p in _KEYS if a == attr)
            try:
                setattr(config, attr, parse(value))
            except (ValueError, ValidationError) as exc:
                raise ConfigError(f"environment {var} = {shown(value)}: {exc}") from None
    return config


def cluster_hosts(env: dict[str, str]) -> list[Host]:
    """The cluster's hosts from CALICO_HOSTS, else from the cluster file."""
    hosts = hosts_from_env(env)
    if hosts:
        return hosts
    path = env.get("CALICO_CLUSTER_FILE", DEFAULT_CLUSTER_FILE)
    if not os.path.exists(path):
        return []
    try:
        cluster = load_cluster(path)
    except DataFileError as exc:
        raise ConfigError(f"cluster file {exc}") from None
    plugin_host = cluster.plugin_host
    return [plugin_host] + [h for h in cluster.hosts if h != plugin_host]


def resolve_peers(config: Config, need: Iterable[str], env: dict[str, str] | None = None,
                  local_addresses: Callable[[], set[str]] | None = None) -> Config:
    """Fill the peer addresses and host name that the config left unset.

    ``need`` names the attributes this component cannot run without; a
    missing one is a ConfigError naming the key and where it may come from.
    """
    env = dict(os.environ) if env is None else env
    hosts: list[Host] | None = None
    for attr in ("plugin_address", "acl_address", "felix_hostname"):
        if getattr(config, attr):
            continue
        if hosts is None:
            hosts = cluster_hosts(env)
        if attr in ("plugin_address", "acl_address") and hosts:
            setattr(config, attr, config.plugin_address or hosts[0].ip)
        elif attr == "felix_hostname":
            owned = local_addresses() if (hosts and local_addresses) else set()
            mine = [h for h in hosts if h.ip in owned]
            config.felix_hostname = mine[0].name if mine else short_hostname(socket.gethostname())
    for attr in need:
        if not getattr(config, attr):
            key = next(k for _, k, a, _ in _KEYS if a == attr)
            raise ConfigError(
                f"{config.source}: [global] {key} is not set (set it, or {_ENV[attr]}, "
                f"or CALICO_HOSTS, or provide the cluster file {env.get('CALICO_CLUSTER_FILE', DEFAULT_CLUSTER_FILE)})")
    return config


def resolve_pools(config: Config, env: dict[str, str] | None = None) -> Config:
    """Fill IpPool / IpPool6 left empty: from the cluster file's [global]
    pool / pool6 when it can be read (CALICO_CLUSTER_FILE, as for the hosts),
    else the defaults."""
    if config.ip_pool and config.ip_pool6:
        return config
    env = dict(os.environ) if env is None else env
    path = env.get("CALICO_CLUSTER_FILE", DEFAULT_CLUSTER_FILE)
    pool, pool6 = DEFAULT_POOL, DEFAULT_POOL6
    if os.access(path, os.R_OK):
        try:
            settings = load_cluster(path).settings
        except DataFileError as exc:
            raise ConfigError(f"cluster file {exc}") from None
        pool, pool6 = settings.pool, settings.pool6
    config.ip_pool = config.ip_pool or (pool,)
    config.ip_pool6 = config.ip_pool6 or (pool6,)
    return config


def config_keys() -> list[tuple[str, str, object]]:
    """(section, key, default) for documentation and tests."""
    defaults = {f.name: f.default for f in fields(Config)}
    return [(section, key, defaults[attr]) for section, key, attr, _ in _KEYS]
