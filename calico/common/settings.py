"""The settings registry: every setting of every component, declared once.

Why a registry of its own rather than more of ``config.py``: three kinds of
reader share these settings.  Felix and the ACL manager read an INI file
(``config.py`` keeps that reader and the peer resolution), the plugin takes
command-line flags only, and scripts, the lab and the tests read a few
environment variables.  Each used to keep its own copy of the keys, flags
and defaults; here each setting is one ``Setting`` and every reader, the
argparse command lines, the lab's config files and the README's table are
built from it.  It holds declarations and pure functions only: reading the
file, the environment and ``argv`` stays with the callers.

Where a value comes from, first found wins:

1. the component's command-line flag, when given (even empty);
2. its key in the config file (Felix, the ACL manager).  For a setting with
   an environment variable an empty value counts as not set; for the peer
   addresses (``placeholders``) so does a seed placeholder (``IP1``,
   ``HOST2``: the operator skipped the seed's sed step);
3. its environment variable (as ``docker run -e``), not empty and, for the
   peers, not a placeholder;
4. its default, which may differ per component (HealthPort, LogFilePath).

A value that does not parse stops start-up with ``SettingError``: one line
naming the flag, the file and key, or the variable, and the value.  Each
component logs the outcome at start (``log_effective``): one line per
setting with its value and where it came from.

Components are named as in ``calico.common.health.DEFAULT_PORTS`` (felix,
acl-manager, plugin-ep, plugin-network) plus the tools and scripts that read
an environment variable (attach, bird, status, lab, build,
network_container.sh, tests).  Settings with ``test_hook`` exist only for the
tests and are never logged or documented as operator settings.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from calico.common.cluster_env import ConfigError, is_placeholder
from calico.common.datafiles import DATA_DIR, DEFAULT_CLUSTER_FILE
from calico.common.health import DEFAULT_HOST as DEFAULT_HEALTH_HOST
from calico.common.health import DEFAULT_PORTS as DEFAULT_HEALTH_PORTS
from calico.common.health import DEFAULT_TIMEOUT_SECS as DEFAULT_HEALTH_TIMEOUT_SECS
from calico.common.security import DEFAULT_SECRET_FILE, parse_flag
from calico.common.validation import (ValidationError, check_hostname, parse_cidr, parse_decimal, parse_ip,
                                      short_hostname, shown)
from calico.common.zmqloop import DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, STALL_FILE_ENV

FELIX, ACL_MANAGER, PLUGIN_EP, PLUGIN_NETWORK = "felix", "acl-manager", "plugin-ep", "plugin-network"
PLUGIN = (PLUGIN_EP, PLUGIN_NETWORK)
DAEMONS = (FELIX, ACL_MANAGER, PLUGIN_EP, PLUGIN_NETWORK)
FILE_READERS = (FELIX, ACL_MANAGER)  # the components with a config file

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "NONE")
PLUGIN_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Felix's DefaultEndpointToHostAction: what may an endpoint send to its host
# beyond DHCP and neighbour discovery (calico.felix.iptables_layout).
TO_HOST_ACTIONS = ("DROP", "RETURN", "ACCEPT")
# Felix's IptablesBackend: which iptables backend it programs; auto picks the
# one Docker and the host use (calico.felix.backend_check).
IPTABLES_BACKENDS = ("auto", "legacy", "nft")
# The plugin's --watch (calico.plugin.watcher).
WATCH_MODES = ("auto", "inotify", "poll")


# A setting that stops start-up; str() is one line.  One class with the
# cluster environment's errors (which the ZeroMQ-free bird image raises too),
# so that a component catching one catches both.
SettingError = ConfigError


# --- parsers: text -> value, ValueError (or ValidationError) with the reason ---

def positive_int(text: str) -> int:
    value = parse_decimal(text.strip(), "value")
    if value <= 0:
        raise ValueError("not a positive integer")
    return value


def message_bytes(text: str) -> int:
    value = positive_int(text)
    if value < MIN_MAX_MESSAGE_BYTES:
        raise ValueError(f"below the minimum of {MIN_MAX_MESSAGE_BYTES}")
    return value


def _one_of(choices: tuple[str, ...], fold: Callable[[str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = fold(text.strip())
        if value not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return value
    return parse


log_level = _one_of(LOG_LEVELS, str.upper)
plugin_log_level = _one_of(PLUGIN_LOG_LEVELS, str.upper)
to_host_action = _one_of(TO_HOST_ACTIONS, str.upper)
iptables_backend = _one_of(IPTABLES_BACKENDS, str.lower)
watch_mode = _one_of(WATCH_MODES, str)


def address(text: str) -> str:
    """Where to connect or bind: ``*``, a DNS name (ZeroMQ resolves it) or an IP."""
    text = text.strip()
    if text == "*":
        return text
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9.-]{0,252}", text):
        return text
    return str(parse_ip(text, allow_loopback=True))


def bind_address(text: str) -> str:
    """Where to bind: as ``address``, and also 0.0.0.0 / :: for every one,
    and an IPv6 literal in brackets (the plugin's --bind always took them)."""
    text = text.strip()
    if text in ("0.0.0.0", "::"):
        return text
    if text.startswith("[") and text.endswith("]"):
        return str(parse_ip(text[1:-1], allow_loopback=True))
    return address(text)


def listen_host(text: str) -> str:
    """An address to serve on: an IP literal, 0.0.0.0 or :: for every one."""
    text = text.strip()
    if text in ("0.0.0.0", "::"):
        return text
    return str(parse_ip(text, allow_loopback=True))


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise ValueError("not a port number (1-65535)")
    return value


def hostname(text: str) -> str:
    return check_hostname(short_hostname(text.strip()))


def path(text: str) -> str:
    return text.strip()


def text_value(text: str) -> str:
    """Taken as it is; whoever uses it checks it (CALICO_HOSTS, the cluster settings...)."""
    return text


def pools(version: int) -> Callable[[str], tuple[str, ...]]:
    """Comma-separated CIDRs of one family, canonical; empty means unset."""
    def parse(text: str) -> tuple[str, ...]:
        found = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            net = parse_cidr(item)
            if net.version != version:
                raise ValueError(f"{item} is not an IPv{version} CIDR")
            found.append(str(net))
        return tuple(found)
    return parse


# --- the declarations -----------------------------------------------------------

@dataclass(frozen=True)
class Flag:
    """A command-line flag of some components; ``switch``: takes no value, present means true."""
    name: str
    components: tuple[str, ...]
    switch: bool = False


@dataclass(frozen=True)
class Setting:
    name: str  # the attribute (Config's, argparse's dest)
    description: str
    components: tuple[str, ...]  # who reads it
    parse: Callable[[str], Any] = text_value
    default: Any = ""  # a dict: component -> default
    section: str = ""  # [section] Key in felix.cfg / acl_manager.cfg; "" = not in a file
    key: str = ""
    env: str = ""
    env_components: tuple[str, ...] | None = None  # who reads env (None: every component)
    flags: tuple[Flag, ...] = ()
    placeholders: bool = False  # seed placeholders count as unset
    test_hook: bool = False
    doc_default: str = ""  # the default as the table shows it, when not the value itself

    def default_for(self, component: str) -> Any:
        if isinstance(self.default, dict):
            return self.default[component]
        return self.default

    def flag_for(self, component: str) -> Flag | None:
        return next((flag for flag in self.flags if component in flag.components), None)

    def env_for(self, component: str) -> str:
        if self.env_components is not None and component not in self.env_components:
            return ""
        return self.env

    @property
    def where(self) -> str:
        """``[section] Key``, else the flag, else the variable: how errors and logs name it."""
        if self.key:
            return f"[{self.section}] {self.key}"
        if self.flags:
            return self.flags[0].name
        return self.env


def format_value(value: Any) -> str:
    """A value as a file, a flag or the environment writes it (parses back to itself)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


_PEERS = "empty: the first host of CALICO_HOSTS, else the cluster file's plugin host"
LOG_FILES = {FELIX: "", ACL_MANAGER: "/var/log/calico/acl_manager.log",
             PLUGIN_EP: "/var/log/calico/plugin_ep.log", PLUGIN_NETWORK: "/var/log/calico/plugin_net.log"}
_ALL = DAEMONS
_FELIX = (FELIX,)


def _flag(name: str, *components: str) -> Flag:
    return Flag(name, components or _ALL)


SETTINGS: tuple[Setting, ...] = (
    Setting("config_file", "the config file", FILE_READERS, path,
            default={FELIX: "/etc/calico/felix.cfg", ACL_MANAGER: "/etc/calico/acl_manager.cfg"},
            flags=(_flag("--config-file", *FILE_READERS),),
            doc_default="Felix /etc/calico/felix.cfg, ACL manager /etc/calico/acl_manager.cfg"),
    # [global]
    Setting("plugin_address", f"the plugin's host, for its ZeroMQ ports ({_PEERS})", FILE_READERS, address,
            section="global", key="PluginAddress", env="CALICO_PLUGIN_ADDRESS", placeholders=True,
            flags=(_flag("--plugin-address", FELIX, ACL_MANAGER),)),
    Setting("acl_address", f"the ACL manager's host ({_PEERS})", _FELIX, address,
            section="global", key="ACLAddress", env="CALICO_ACL_ADDRESS", placeholders=True,
            flags=(_flag("--acl-address", FELIX),)),
    Setting("felix_hostname", "this host's name as in felix.txt (empty: the cluster's host with an address "
            "this host owns, else the machine's name up to the first dot)", (FELIX, "attach"), hostname,
            section="global", key="FelixHostname", env="CALICO_FELIX_HOSTNAME", placeholders=True,
            flags=(_flag("--hostname", FELIX),)),
    Setting("local_address", "address to bind the component's ZeroMQ ports to (* for all)", _ALL, bind_address,
            default="*", section="global", key="LocalAddress",
            flags=(_flag("--local-address", FELIX), _flag("--bind", ACL_MANAGER, *PLUGIN))),
    Setting("resync_interval_secs", "Felix asks the plugin for its whole state this often", _FELIX, positive_int,
            default=1800, section="global", key="ResyncIntervalSecs", flags=(_flag("--resync-interval-secs", FELIX),)),
    Setting("endpoint_retry_time_millis", "an endpoint the kernel refused is tried again after this long", _FELIX,
            positive_int, default=500, section="global", key="EndpointRetryTimeMillis",
            flags=(_flag("--endpoint-retry-ms", FELIX),)),
    Setting("default_endpoint_to_host_action", "what an endpoint may send to its own host beyond DHCP and "
            f"neighbour discovery ({', '.join(TO_HOST_ACTIONS)})", _FELIX, to_host_action, default="DROP",
            section="global", key="DefaultEndpointToHostAction", flags=(_flag("--endpoint-to-host-action", FELIX),)),
    Setting("ip_pool", "IPv4 pools endpoints may use, comma-separated", _FELIX, pools(4), default=(),
            section="global", key="IpPool", flags=(_flag("--ip-pool", FELIX),),
            doc_default="the cluster file's pool, else 192.168.0.0/16"),
    Setting("ip_pool6", "IPv6 pools endpoints may use, comma-separated", _FELIX, pools(6), default=(),
            section="global", key="IpPool6", flags=(_flag("--ip-pool6", FELIX),),
            doc_default="the cluster file's pool6, else fd80:24e2:f998:72d6::/64"),
    Setting("max_endpoints", "Felix refuses endpoints beyond this many", _FELIX, positive_int, default=5000,
            section="global", key="MaxEndpoints", flags=(_flag("--max-endpoints", FELIX),)),
    Setting("iptables_backend", f"which iptables Felix programs ({', '.join(IPTABLES_BACKENDS)}; auto: the one "
            "Docker and the host use)", _FELIX, iptables_backend, default="auto", section="global",
            key="IptablesBackend", flags=(_flag("--iptables-backend", FELIX),)),
    # [log]
    Setting("log_file_path", "log file ('' for none; the ACL manager takes an empty one as its default)", _ALL,
            path, default=LOG_FILES, section="log", key="LogFilePath", flags=(_flag("--log-file"),),
            doc_default="Felix none, ACL manager /var/log/calico/acl_manager.log, plugin "
                        "/var/log/calico/plugin_ep.log or plugin_net.log"),
    Setting("log_severity_file", f"lowest level written to the log file ({', '.join(LOG_LEVELS)})", FILE_READERS,
            log_level, default="INFO", section="log", key="LogSeverityFile",
            flags=(_flag("--log-severity-file", FELIX),)),
    Setting("log_severity_sys", "lowest level sent to syslog", FILE_READERS, log_level, default="NONE",
            section="log", key="LogSeveritySys"),
    Setting("log_severity_screen", "lowest level written to stderr", FILE_READERS, log_level, default="INFO",
            section="log", key="LogSeverityScreen", flags=(_flag("--log-severity-screen", FELIX),)),
    Setting("log_level", f"the plugin's level for its log file and stderr ({', '.join(PLUGIN_LOG_LEVELS)})", PLUGIN,
            plugin_log_level, default="INFO", flags=(_flag("--log-level", *PLUGIN),)),
    # [connection]
    Setting("connection_timeout_millis", "a peer silent this long is given up and connected afresh", _ALL,
            positive_int, default=6000, section="connection", key="ConnectionTimeoutMillis",
            flags=(_flag("--connection-timeout-ms"),)),
    Setting("connection_keepalive_interval_millis", "a heartbeat goes after this much quiet", _ALL, positive_int,
            default=2000, section="connection", key="ConnectionKeepaliveIntervalMillis",
            flags=(_flag("--keepalive-ms"),)),
    Setting("max_message_bytes", "a peer sending a larger message is disconnected", _ALL, message_bytes,
            default=DEFAULT_MAX_MESSAGE_BYTES, section="connection", key="MaxMessageBytes",
            flags=(_flag("--max-message-bytes", FELIX, *PLUGIN),)),
    # [security]
    Setting("cluster_secret_file", "the cluster secret every component's keys derive from", _ALL, path,
            default=DEFAULT_SECRET_FILE, section="security", key="ClusterSecretFile", env="CALICO_SECRET_FILE",
            flags=(_flag("--secret-file", FELIX, *PLUGIN),)),
    Setting("insecure", "no authentication or encryption, for experiments only", _ALL, parse_flag, default=False,
            section="security", key="Insecure", env="CALICO_INSECURE",
            flags=(_flag("--insecure", FELIX), Flag("--insecure", PLUGIN, switch=True))),
    # [health]
    Setting("health_enabled", "serve /liveness, /readiness and /status", _ALL, parse_flag, default=True,
            section="health", key="HealthEnabled", env="CALICO_HEALTH_ENABLED", flags=(_flag("--health-enabled"),)),
    Setting("health_host", "address to serve them on (an IP; 0.0.0.0 or :: for every address)", _ALL, listen_host,
            default=DEFAULT_HEALTH_HOST, section="health", key="HealthHost", env="CALICO_HEALTH_HOST",
            flags=(_flag("--health-host"),)),
    Setting("health_port", "port to serve them on", _ALL, port, default=dict(DEFAULT_HEALTH_PORTS),
            section="health", key="HealthPort", env="CALICO_HEALTH_PORT", flags=(_flag("--health-port"),),
            doc_default="Felix 9099, ACL manager 9096, plugin ep 9097, network 9098"),
    Setting("health_timeout_secs", "not live once the event loop has not turned for this long", _ALL,
            positive_int, default=DEFAULT_HEALTH_TIMEOUT_SECS, section="health", key="HealthTimeoutSecs",
            env="CALICO_HEALTH_TIMEOUT_SECS", flags=(_flag("--health-timeout-secs"),)),
    Setting("prometheus_metrics_enabled", "serve /metrics too", _ALL, parse_flag, default=False,
            section="health", key="PrometheusMetricsEnabled", env="CALICO_PROMETHEUS_METRICS_ENABLED",
            flags=(_flag("--prometheus-metrics-enabled"),)),
    # the plugin's own (it has no config file)
    Setting("data_dir", "the data directory: felix.txt and the endpoint files", (*PLUGIN, "attach",
            "network_container.sh"), path, default=DATA_DIR, env="CALICO_DATA_DIR",
            env_components=("attach", "network_container.sh"), flags=(_flag("--data-dir", *PLUGIN, "attach"),)),
    Setting("watch", "how the plugin notices changed files: inotify except on network and FUSE file systems "
            "(auto), inotify anywhere, or poll", PLUGIN, watch_mode, default="auto", flags=(_flag("--watch", *PLUGIN),)),
    Setting("poll_interval_ms", "how often the plugin polls when polling, and checks the directory itself", PLUGIN,
            positive_int, default=100, flags=(_flag("--poll-interval-ms", *PLUGIN),)),
    # the environment only
    Setting("cluster_file", "the cluster file, when CALICO_HOSTS does not describe the hosts",
            (*FILE_READERS, "attach", "bird", "status"), path, default=DEFAULT_CLUSTER_FILE,
            env="CALICO_CLUSTER_FILE"),
    Setting("hosts", "the cluster's hosts, 'name=ip name=ip', the first running the plugin (the images set "
            "placeholders for the seed's sed step)", (*FILE_READERS, "attach", "bird", "status"),
            env="CALICO_HOSTS", doc_default="the cluster file's [felix NAME] sections"),
    Setting("nat_outgoing", "overrides the cluster file's nat_outgoing", (FELIX,), env="CALICO_NAT_OUTGOING",
            doc_default="the cluster file's"),
    Setting("ipip", "overrides the cluster file's ipip (never, cross-subnet, always)", (FELIX, "bird"),
            env="CALICO_IPIP", doc_default="the cluster file's"),
    Setting("route_reflectors", "overrides the cluster file's route_reflectors", (FELIX, "bird"),
            env="CALICO_ROUTE_REFLECTORS", doc_default="the cluster file's"),
    Setting("bird_host", "the host run_bird renders BIRD's config for", ("bird",), env="CALICO_BIRD_HOST",
            doc_default="the host with an address this host owns"),
    Setting("bird_config_dir", "where run_bird writes bird.conf", ("bird",), path, default="/etc/bird",
            env="CALICO_BIRD_CONFIG_DIR"),
    Setting("lab_dir", "the lab's directory", ("lab",), path, default="/var/run/calico-lab", env="CALICO_LAB_DIR",
            flags=(_flag("--lab-dir", "lab"),)),
    Setting("lab_prefix", "the lab's namespace prefix", ("lab",), default="clab-", env="CALICO_LAB_PREFIX",
            flags=(_flag("--prefix", "lab"),)),
    Setting("lab_components", "only these lab components run (comma-separated), for debugging one part",
            ("lab",), env="CALICO_LAB_COMPONENTS", doc_default="all"),
    Setting("lab_metrics", "the lab's components serve Prometheus metrics (0 to measure what they cost)",
            ("lab",), default="1", env="CALICO_LAB_METRICS"),
    Setting("felix_image", "the image network_container.sh runs calico-attach from", ("network_container.sh",),
            default="calico:felix", env="CALICO_FELIX_IMAGE"),
    Setting("attach_pools", "pools network_container.sh allows, comma-separated", ("network_container.sh",),
            env="CALICO_POOL", doc_default="the cluster file's pool and pool6"),
    Setting("cache_dir", "where the base image's root file system is cached", ("build",), path,
            default="/var/cache/calico", env="CALICO_CACHE_DIR"),
    Setting("debian_mirror", "the mirror debootstrap uses for the base image", ("build",),
            default="http://deb.debian.org/debian", env="CALICO_DEBIAN_MIRROR"),
    Setting("base_try_pull", "1: try docker pull debian:bookworm-slim first", ("build",), default="0",
            env="CALICO_BASE_TRY_PULL"),
    Setting("base_refresh", "1: rebuild the cached root file system", ("build",), default="0",
            env="CALICO_BASE_REFRESH"),
    # test hooks
    Setting("debug_stall_file", "while this file exists the event loop sleeps (the liveness watchdog's tests)",
            _ALL, path, env=STALL_FILE_ENV, test_hook=True, doc_default="none"),
    Setting("require_root_tests", "1: a root test that would be skipped fails instead (CI)", ("tests",),
            env="CALICO_REQUIRE_ROOT_TESTS", test_hook=True, doc_default="0"),
    Setting("docker_images_tar", "a docker save file of the images, instead of building them", ("tests",), path,
            env="CALICO_DOCKER_IMAGES_TAR", test_hook=True, doc_default="build them"),
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
FILE_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.key)


def setting(name: str) -> Setting:
    return BY_NAME[name]


def by_key(section: str, key: str) -> Setting | None:
    return next((s for s in FILE_SETTINGS if (s.section, s.key) == (section, key)), None)


def of_component(component: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if component in s.components)


def default(name: str, component: str = FELIX) -> Any:
    return BY_NAME[name].default_for(component)


def env_value(name: str, env: Mapping[str, str], component: str = "") -> str:
    """An environment-only setting's text: its variable when set and not empty, else its default."""
    s = BY_NAME[name]
    return env.get(s.env, "").strip() or s.default_for(component)


# --- resolution: the pure core of every component's start -------------------------

def _parsed(s: Setting, raw: str, where: str) -> Any:
    try:
        return s.parse(raw)
    except (ValueError, ValidationError) as exc:  # ValidationError is a ValueError; said for the reader
        raise SettingError(f"{where} = {shown(raw)}: {exc}") from None


def _unset(s: Setting, raw: str) -> bool:
    return not raw.strip() or (s.placeholders and is_placeholder(raw))


def resolve(settings: Iterable[Setting], component: str, env: Mapping[str, str],
            file_values: Mapping[str, str] | None = None, file_source: str = "",
            flag_values: Mapping[str, str] | None = None,
            defaults: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, origins) of these settings: flag, else file, else environment,
    else default.  ``file_values`` and ``flag_values`` map setting names to
    their raw text; ``defaults`` replaces registry defaults (a test's)."""
    file_values, flag_values, defaults = file_values or {}, flag_values or {}, defaults or {}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for s in settings:
        flag = s.flag_for(component)
        var = s.env_for(component)
        if flag is not None and flag_values.get(s.name) is not None:
            raw = flag_values[s.name]
            named = f"{flag.name} ({s.where})" if s.key else flag.name
            values[s.name], origins[s.name] = _parsed(s, raw, named), f"flag {flag.name}"
        elif s.name in file_values and not (s.env and _unset(s, file_values[s.name])):
            raw = file_values[s.name]
            values[s.name], origins[s.name] = _parsed(s, raw, f"{file_source}: {s.where}"), f"file {file_source}"
        elif var and not _unset(s, env.get(var, "")):
            raw = env[var].strip()
            values[s.name], origins[s.name] = _parsed(s, raw, f"environment {var}"), f"environment {var}"
        else:
            values[s.name] = defaults[s.name] if s.name in defaults else s.default_for(component)
            origins[s.name] = "default"
    return values, origins


# --- command lines -----------------------------------------------------------------

def _help(s: Setting, component: str) -> str:
    text = s.description + (f"; overrides {s.where}" if s.key else "")
    shown_default = s.doc_default or format_value(s.default_for(component)) or "none"
    var = s.env_for(component)
    text += f" (default {var}, else {shown_default})" if var else f" (default {shown_default})"
    return text.replace("%", "%%")


def command_line_settings(component: str) -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if component in s.components and s.flag_for(component) is not None)


def add_flags(parser: argparse.ArgumentParser, component: str) -> None:
    """This component's flags, each with ``dest`` the setting's name and
    default None, so that resolve() sees which were given."""
    for s in command_line_settings(component):
        flag = s.flag_for(component)
        assert flag is not None
        if flag.switch:
            parser.add_argument(flag.name, dest=s.name, action="store_const", const="true", default=None,
                                help=_help(s, component))
        else:
            parser.add_argument(flag.name, dest=s.name, metavar="VALUE", default=None, help=_help(s, component))


def argument_parser(component: str, prog: str = "", description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or None, description=description or None)
    add_flags(parser, component)
    return parser


def flag_values(args: argparse.Namespace, component: str) -> dict[str, str]:
    """The raw text of the flags given, by setting name."""
    return {s.name: getattr(args, s.name) for s in command_line_settings(component)
            if getattr(args, s.name, None) is not None}


def resolve_command_line(component: str, args: argparse.Namespace,
                         env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """A component without a config file (the plugin): each of its flags'
    settings from the flag, else the environment, else the default."""
    return resolve(command_line_settings(component), component, env, flag_values=flag_values(args, component))


# --- what a component says at start -------------------------------------------------

def log_effective(log: logging.Logger, component: str, values: Mapping[str, Any],
                  origins: Mapping[str, str], env: Mapping[str, str]) -> None:
    """One line per setting of this component: its value and where it came
    from.  ``values`` holds what the component resolved; a setting only read
    from the environment (where it is used) is told as the environment has it."""
    for s in of_component(component):
        if s.test_hook:
            continue
        if s.name in values:
            value, origin = format_value(values[s.name]), origins.get(s.name, "default")
        elif s.env and env.get(s.env, "").strip():
            value, origin = env[s.env].strip(), f"environment {s.env}"
        else:
            value, origin = format_value(s.default_for(component)), "default"
        log.info("setting %s = %s (%s)", s.where, shown(value), origin)


# --- config files and documentation ----------------------------------------------------

def render_config(values: Mapping[str, Any]) -> str:
    """felix.cfg / acl_manager.cfg text setting these keys, in registry order, by section."""
    unknown = set(values) - {s.name for s in FILE_SETTINGS}
    if unknown:
        raise KeyError(f"not config file settings: {', '.join(sorted(unknown))}")
    lines: list[str] = []
    section = ""
    for s in FILE_SETTINGS:
        if s.name not in values:
            continue
        if s.section != section:
            section = s.section
            lines.append(f"[{section}]")
        lines.append(f"{s.key} = {format_value(values[s.name])}")
    return "\n".join(lines + [""])


def flag_args(component: str, values: Mapping[str, Any]) -> list[str]:
    """Command-line arguments giving these settings to this component (the lab's)."""
    args: list[str] = []
    for s in command_line_settings(component):
        if s.name in values:
            flag = s.flag_for(component)
            assert flag is not None
            if flag.switch:
                args += [flag.name] if values[s.name] else []
            else:
                args += [flag.name, format_value(values[s.name])]
    unknown = set(values) - {s.name for s in command_line_settings(component)}
    if unknown:
        raise KeyError(f"not flags of {component}: {', '.join(sorted(unknown))}")
    return args


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


_COMPONENT_NAMES = {FELIX: "Felix", ACL_MANAGER: "ACL manager", PLUGIN_EP: "plugin ep",
                    PLUGIN_NETWORK: "plugin network"}


def _components_cell(components: tuple[str, ...]) -> str:
    if set(PLUGIN) <= set(components):  # both APIs: "plugin"
        components = tuple("plugin" if c == PLUGIN_EP else c for c in components if c != PLUGIN_NETWORK)
    return ", ".join(_COMPONENT_NAMES.get(c, c) for c in components)


def markdown_table() -> str:
    """The README's settings table (between its settings-table markers),
    then the test hooks in one line."""
    rows = ["| setting | flag | environment | default | read by | what |", "| --- | --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        if s.test_hook:
            continue
        flags = ", ".join(sorted({f"`{f.name}`" for f in s.flags}))
        default_text = s.doc_default or format_value(s.default_for(s.components[0])) or "none"
        rows.append("| " + " | ".join([
            f"`{s.where}`" if s.key else "", flags, f"`{s.env}`" if s.env else "", _cell(default_text),
            _components_cell(s.components), _cell(s.description)]) + " |")
    hooks = "; ".join(f"`{s.env}`: {s.description}" for s in SETTINGS if s.test_hook)
    return "\n".join(rows + ["", f"Test hooks, for the tests only: {hooks}."])
