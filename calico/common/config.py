"""Component configuration: felix.cfg and acl_manager.cfg.

Keys are those of the original Calico (docs/architecture.md, "Configuration").

Each key, its default, parser, environment variable and flag is declared once in
``calico.common.settings``, which also says in what order a value is looked
for (flag, file, environment, default).  This module reads the file into a
``Config`` and fills what the file and environment leave to the cluster:
the peer addresses and host name, which come from ``CALICO_HOSTS``
(``name=ip name=ip``, the first being the plugin host) or the cluster file
(``CALICO_CLUSTER_FILE``), and the pools, from the cluster file's [global].

A bad value stops start-up with ``ConfigError``, one line naming the file,
key and value.
"""

from __future__ import annotations

import argparse
import configparser
import os
import socket
from dataclasses import field, make_dataclass
from typing import Any, Callable, Iterable, Mapping

from calico.common import settings
from calico.common.cluster_env import DEFAULT_CLUSTER_FILE, PLACEHOLDER_RE, hosts_from_env, is_placeholder
from calico.common.datafiles import DataFileError, Host, load_cluster
from calico.common.settings import IPTABLES_BACKENDS, LOG_LEVELS, TO_HOST_ACTIONS
from calico.common.validation import DEFAULT_POOL, DEFAULT_POOL6, printable, short_hostname, shown

__all__ = ["Config", "ConfigError", "DEFAULT_CLUSTER_FILE", "IPTABLES_BACKENDS", "LOG_LEVELS", "PLACEHOLDER_RE",
           "TO_HOST_ACTIONS", "apply_flags", "cluster_hosts", "config_keys", "hosts_from_env", "is_placeholder",
           "load_config", "resolve_peers", "resolve_pools"]

ConfigError = settings.SettingError

# One attribute per key of the config files, with Felix's defaults; plus
# where the values were read (``source``) and where each came from
# (``origins``: setting name -> "default", "file PATH", "environment VAR",
# "flag --x", or what the cluster told).
Config = make_dataclass("Config", [
    *((s.name, type(s.default_for(settings.FELIX)), field(default=s.default_for(settings.FELIX)))
      for s in settings.FILE_SETTINGS),
    ("source", str, field(default="<defaults>")),
    ("origins", dict, field(default_factory=dict, compare=False, repr=False)),
])
Config.__doc__ = "A component's settings: one attribute per key of calico.common.settings.FILE_SETTINGS."


def _read_file(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are CamelCase, as in the original Calico
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle, source=path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: not a valid INI file: {shown(' '.join(str(exc).split()))[1:-1]}") from None
    for section in parser.sections():
        for key in parser[section]:
            if settings.by_key(section, key) is None:
                raise ConfigError(f"{path}: [{printable(section)}] {printable(key)}: unknown key")
    return parser


def load_config(path: str | None, env: Mapping[str, str] | None = None,
                defaults: Mapping[str, Any] | None = None, component: str = settings.FELIX) -> Config:
    """Read a component config file; ``path`` None means defaults only.
    ``component`` picks the defaults that differ (HealthPort...);
    ``defaults`` (attribute -> value) replaces the registry's."""
    env = os.environ if env is None else env
    file_values: dict[str, str] = {}
    if path is not None:
        parser = _read_file(path)
        file_values = {s.name: parser.get(s.section, s.key) for s in settings.FILE_SETTINGS
                       if parser.has_option(s.section, s.key)}
    values, origins = settings.resolve(settings.FILE_SETTINGS, component, env, file_values, path or "",
                                       defaults=defaults)
    return Config(**values, source=path or "<defaults>", origins=origins)


def apply_flags(config: Config, component: str, given: Mapping[str, str]) -> Config:
    """Set the keys given as this component's flags (setting name -> raw text),
    checked as the file's values are; the flag wins."""
    chosen = [s for s in settings.FILE_SETTINGS if given.get(s.name) is not None]
    values, origins = settings.resolve(chosen, component, {}, flag_values=given)
    for name, value in values.items():
        setattr(config, name, value)
    config.origins.update(origins)
    return config


def read_settings(component: str, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Config:
    """Felix's or the ACL manager's settings: the file ``--config-file``
    names (else the default), then the flags (``settings.add_flags``)."""
    path = args.config_file if args.config_file is not None else settings.default("config_file", component)
    config = load_config(path, env, component=component)
    config.origins["config_file"] = "flag --config-file" if args.config_file is not None else "default"
    given = {name: raw for name, raw in settings.flag_values(args, component).items() if name != "config_file"}
    return apply_flags(config, component, given)


def cluster_hosts(env: dict[str, str]) -> list[Host]:
    """The cluster's hosts from CALICO_HOSTS, else from the cluster file."""
    hosts = hosts_from_env(env)
    if hosts:
        return hosts
    path = settings.env_value("cluster_file", env)
    if not os.path.exists(path):
        return []
    try:
        cluster = load_cluster(path)
    except DataFileError as exc:
        raise ConfigError(f"cluster file {exc}") from None
    plugin_host = cluster.plugin_host
    return [plugin_host] + [h for h in cluster.hosts if h != plugin_host]


def _cluster_origin(env: Mapping[str, str]) -> str:
    return "CALICO_HOSTS" if hosts_from_env(env) else f"cluster file {settings.env_value('cluster_file', env)}"


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
            if config.plugin_address:
                config.origins[attr] = f"PluginAddress ({config.origins.get('plugin_address', 'default')})"
            else:
                config.origins[attr] = f"{_cluster_origin(env)}, the plugin's host"
            setattr(config, attr, config.plugin_address or hosts[0].ip)
        elif attr == "felix_hostname":
            owned = local_addresses() if (hosts and local_addresses) else set()
            mine = [h for h in hosts if h.ip in owned]
            config.felix_hostname = mine[0].name if mine else short_hostname(socket.gethostname())
            config.origins[attr] = (f"{_cluster_origin(env)}, by an address this host owns" if mine
                                    else "the machine's host name")
    for attr in need:
        if not getattr(config, attr):
            s = settings.setting(attr)
            raise ConfigError(
                f"{config.source}: {s.where} is not set (set it, or {s.env}, "
                f"or CALICO_HOSTS, or provide the cluster file {settings.env_value('cluster_file', env)})")
    return config


def resolve_pools(config: Config, env: dict[str, str] | None = None) -> Config:
    """Fill IpPool / IpPool6 left empty: from the cluster file's [global]
    pool / pool6 when it can be read (CALICO_CLUSTER_FILE, as for the hosts),
    else the defaults."""
    if config.ip_pool and config.ip_pool6:
        return config
    env = dict(os.environ) if env is None else env
    path = settings.env_value("cluster_file", env)
    pool, pool6, origin = DEFAULT_POOL, DEFAULT_POOL6, "default"
    if os.access(path, os.R_OK):
        try:
            cluster_settings = load_cluster(path).settings
        except DataFileError as exc:
            raise ConfigError(f"cluster file {exc}") from None
        pool, pool6, origin = cluster_settings.pool, cluster_settings.pool6, f"cluster file {path}"
    for attr, value in (("ip_pool", pool), ("ip_pool6", pool6)):
        if not getattr(config, attr):
            setattr(config, attr, (value,))
            config.origins[attr] = origin
    return config


def config_keys() -> list[tuple[str, str, object]]:
    """(section, key, Felix's default) for documentation and tests."""
    return [(s.section, s.key, s.default_for(settings.FELIX)) for s in settings.FILE_SETTINGS]
