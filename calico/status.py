"""``calico-status``: is this host's Calico healthy, what is programmed, is BGP up?

Asks, on this host:

* Felix, over its health server (``calico.common.health``: /readiness,
  /liveness and /status on HealthHost:HealthPort, default 127.0.0.1:9099):
  reachable, live, ready, endpoints by state, the last dataplane pass and
  its duration, the control-plane connections;
* BIRD, over its control socket (the protocol ``birdc`` speaks, read-only:
  ``show protocols all``): every BGP session in calicoctl's table (PEER
  ADDRESS | PEER TYPE | STATE | SINCE | INFO);
* on the plugin host, the plugin's two processes (9097, 9098) and the ACL
  manager (9096), each over its own health server.

A part that does not answer gets one line saying so.  The exit status is 0
when every part that answered is live and ready and every BGP session is
Established, else 1.

Where to ask comes from the same settings the components read: HealthHost
and HealthPort in /etc/calico/felix.cfg and /etc/calico/acl_manager.cfg when
they exist (else ``CALICO_HEALTH_HOST`` / ``CALICO_HEALTH_PORT``, else the
defaults), BIRD's socket in /run/bird/bird.ctl or /var/run/bird/bird.ctl;
flags override each.  It needs nothing but the standard library (it runs in
the bird image too).  ``calico-lab status`` prints the same report for each
lab host (``host_report`` with the host's namespace entered for HTTP).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from calico.common import health as health_module
from calico.common.bird_socket import BIRD_SOCKETS, BirdError, bird_command, find_bird_socket
from calico.common.cluster_env import cluster_file, hosts_from_env
from calico.common.netns import owned_addresses

FELIX_CONFIG = "/etc/calico/felix.cfg"
ACL_MANAGER_CONFIG = "/etc/calico/acl_manager.cfg"
HTTP_TIMEOUT = 3.0
STATE_NAMES = (("programmed", "programmed"), ("waiting-for-acls", "waiting for ACLs"),
               ("fail-closed", "fail-closed"), ("interface-missing", "interface missing"),
               ("disabled", "disabled"))

Getter = Callable[[str, float], "tuple[int, str]"]


@dataclass
class Protocol:
    """One line of ``show protocols`` and, with ``all``, its details."""

    name: str
    proto: str
    table: str
    state: str
    since: str
    info: str
    details: dict[str, str] = field(default_factory=dict)


_DATE = re.compile(r"\d{4}-\d\d-\d\d")
_DETAIL = re.compile(r"\s*([A-Za-z][A-Za-z0-9 ]*?):\s+(.*\S)\s*$")


def _coded_lines(text: str) -> list[tuple[int, str]]:
    """(code, text) per line of a raw reply; birdc's output (no codes) gives
    code 1002 for a protocol line and 1006 for an indented one."""
    out: list[tuple[int, str]] = []
    coded = any(len(line) >= 5 and line[:4].isdigit() and line[4] in " -" for line in text.splitlines())
    code = 0
    for line in text.splitlines():
        if coded:
            if len(line) >= 5 and line[:4].isdigit() and line[4] in " -":
                code, body = int(line[:4]), line[5:]
            elif line.startswith(" "):
                body = line[1:]
            else:
                continue
        else:
            if not line.strip() or line.startswith("BIRD ") or line.split()[:2] == ["Name", "Proto"]:
                continue
            code, body = (1006, line) if line[:1].isspace() else (1002, line)
        out.append((code, body))
    return out


def parse_protocols(text: str) -> list[Protocol]:
    """The protocols in a reply to ``show protocols [all]``: BIRD's control
    socket form (coded lines) or birdc's printout of it."""
    protocols: list[Protocol] = []
    for code, body in _coded_lines(text):
        if code == 1002:
            words = body.split()
            if len(words) < 5:
                continue
            since_words = 2 if len(words) > 5 and _DATE.fullmatch(words[4]) and ":" in words[5] else 1
            since = " ".join(words[4:4 + since_words])
            info = " ".join(words[4 + since_words:])
            protocols.append(Protocol(words[0], words[1], words[2], words[3], since, info))
        elif code == 1006 and protocols:
            match = _DETAIL.match(body)
            if match and match.group(1) not in protocols[-1].details:
                protocols[-1].details[match.group(1)] = match.group(2)
    return protocols


@dataclass(frozen=True)
class BgpRow:
    peer_address: str
    peer_type: str
    state: str
    since: str
    info: str

    @property
    def established(self) -> bool:
        return self.info.split()[:1] == ["Established"]


def _peer_type(protocol: Protocol) -> str:
    description = protocol.details.get("Description", "")
    if "route reflector client" in description or "route-reflector" in protocol.details.get("Session", ""):
        return "rr client"
    if "route reflector" in description:
        return "route reflector"
    return "node-to-node mesh"


def bgp_rows(protocols: Iterable[Protocol]) -> list[BgpRow]:
    """calicoctl's rows: one per BGP session, by peer address."""
    rows = []
    for p in protocols:
        if p.proto != "BGP":
            continue
        address = p.details.get("Neighbor address", "").split("%")[0] or f"({p.name})"
        since = re.sub(r"\.\d+$", "", p.since)
        rows.append(BgpRow(address, _peer_type(p), p.state, since, " ".join(p.info.split()) or "-"))
    return sorted(rows, key=_address_key)


def _address_key(row: BgpRow) -> tuple:
    parts = row.peer_address.split(".")
    return (0, tuple(int(x) for x in parts)) if all(x.isdigit() for x in parts) and len(parts) == 4 \
        else (1, row.peer_address)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """calicoctl's table: +---+ rules, headers centred, cells left-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    def centred(text: str, width: int) -> str:  # as calicoctl's tablewriter: the odd space goes right
        left = (width - len(text)) // 2
        return " " * left + text + " " * (width - len(text) - left)

    lines = [rule, "|" + "|".join(f" {centred(h, w)} " for h, w in zip(headers, widths)) + "|", rule]
    for row in rows:
        lines.append("|" + "|".join(f" {c.ljust(w)} " for c, w in zip(row, widths)) + "|")
    lines.append(rule)
    return "\n".join(lines)


def format_bgp(rows: Sequence[BgpRow]) -> str:
    headers = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")
    v4 = [r for r in rows if ":" not in r.peer_address]
    v6 = [r for r in rows if ":" in r.peer_address]
    out = ["IPv4 BGP status"]
    out.append(format_table(headers, [(r.peer_address, r.peer_type, r.state, r.since, r.info) for r in v4])
               if v4 else "No IPv4 peers found.")
    out += ["", "IPv6 BGP status"]
    out.append(format_table(headers, [(r.peer_address, r.peer_type, r.state, r.since, r.info) for r in v6])
               if v6 else "No IPv6 peers found (the IPv4 sessions carry IPv6 routes too).")
    return "\n".join(out)


@dataclass
class BgpView:
    socket_path: str | None
    rows: list[BgpRow] = field(default_factory=list)
    error: str | None = None  # BIRD did not answer: why

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.established for r in self.rows)


def in_container() -> bool:
    return os.path.exists("/.dockerenv")


def query_bird(socket_path: str | None, candidates: Sequence[str] = BIRD_SOCKETS) -> BgpView:
    path = socket_path or find_bird_socket(candidates)
    if path is None:
        hint = ("; in a container other than BIRD's, run calico-status in the bird container, or give both "
                "containers -v /run/bird:/run/bird" if in_container() else "")
        return BgpView(None, error=f"BIRD is not running here (no control socket at {' or '.join(candidates)})"
                                   + hint)
    if not os.path.exists(path):
        return BgpView(path, error=f"BIRD is not running (no control socket at {path})")
    try:
        reply = bird_command(path, "show protocols all")
    except (OSError, BirdError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return BgpView(path, error=f"BIRD is not answering on {path} ({reason})")
    return BgpView(path, bgp_rows(parse_protocols(reply)))


# --- components over HTTP ---------------------------------------------------------

@dataclass
class ComponentView:
    name: str
    url: str
    error: str | None = None         # nothing answered: why
    live: bool = False
    liveness: str = ""
    ready: bool = False
    readiness: str = ""
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return self.error is None

    @property
    def ok(self) -> bool:
        return self.reachable and self.live and self.ready


def query_component(name: str, url: str, get: Getter = health_module.get,
                    timeout: float = HTTP_TIMEOUT) -> ComponentView:
    """Ask one component's /status (and /liveness, /readiness from it)."""
    view = ComponentView(name, url)
    try:
        code, text = get(f"{url}/status", timeout)
    except OSError as exc:
        view.error = exc.strerror or str(exc) or type(exc).__name__
        return view
    if code != 200:
        view.error = f"/status answered {code}: {text.strip()[:120]}"
        return view
    try:
        status = json.loads(text)
        if not isinstance(status, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        view.error = f"/status is not JSON ({exc})"
        return view
    view.status = status
    view.live, view.liveness = bool(status.get("live")), str(status.get("liveness", ""))
    view.ready, view.readiness = bool(status.get("ready")), str(status.get("readiness", ""))
    return view


def _clock(wall: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall)) if isinstance(wall, (int, float)) else "never"


def _ago(wall: Any, now: Any) -> str:
    if not isinstance(wall, (int, float)) or not isinstance(now, (int, float)):
        return "never"
    seconds = max(0.0, now - wall)
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _n(count: Any, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _headline(view: ComponentView, title: str) -> str:
    if not view.reachable:
        return f"{title}: not running (nothing answers on {view.url}: {view.error})"
    live = "live" if view.live else f"NOT LIVE ({view.liveness})"
    ready = "ready" if view.ready else f"NOT READY ({view.readiness})"
    return f"{title} ({view.url}): {live}, {ready}"


def describe_felix(view: ComponentView) -> list[str]:
    lines = [_headline(view, "Felix")]
    if not view.reachable:
        return lines
    s, now = view.status, view.status.get("now")
    states = s.get("endpoints") or {}
    counts = ", ".join(f"{label} {states.get(key, 0)}" for key, label in STATE_NAMES
                       if key != "disabled" or states.get(key))
    lines.append(f"  endpoints: {s.get('endpoint_count', 0)} ({counts})")
    last = s.get("last_pass")
    if isinstance(last, dict):
        result = "ok" if last.get("ok") else f"FAILED: {last.get('error')}"
        lines.append(f"  last dataplane pass: {_clock(last.get('at'))} ({_ago(last.get('at'), now)}), "
                     f"took {_duration(last.get('seconds'))}, {_n(last.get('endpoints', 0), 'endpoint')}, {result}")
    else:
        lines.append("  last dataplane pass: none yet")
    resync = s.get("resync") or {}
    lines.append(f"  resyncs with the plugin: {resync.get('started', 0)} started, first completed "
                 f"{_clock(resync.get('first_completed'))}{', one in progress' if resync.get('in_progress') else ''}")
    plugin = s.get("plugin") or {}
    acl = s.get("acl_manager") or {}
    ep_api = s.get("endpoint_api") or {}
    lines.append(f"  plugin {plugin.get('address')}: {'connected' if plugin.get('connected') else 'NOT ANSWERING'}; "
                 f"endpoint API {ep_api.get('address')}: last request {_ago(ep_api.get('last_request'), now)}")
    hearing = (f"arriving (last {_ago(acl.get('last_heard'), now)})" if acl.get("hearing") else "NOTHING HEARD")
    lines.append(f"  ACL manager {acl.get('requests')}: "
                 f"{'connected' if acl.get('requests_connected') else 'not answering'}; "
                 f"publications on {acl.get('publications')}: {hearing}")
    return lines


def _data_line(s: dict[str, Any]) -> str:
    error = f"; UNREADABLE: {s['data_dir_error']}" if s.get("data_dir_error") else ""
    return (f"  data directory {s.get('data_dir')} ({s.get('watch')}): {_n(s.get('files', 0), 'file')} "
            f"({s.get('bad_files', 0)} bad), {_n(s.get('hosts', 0), 'host')}, {_n(s.get('endpoints', 0), 'endpoint')}, "
            f"{_n(s.get('groups', 0), 'group')}{error}")


def describe_plugin(view: ComponentView) -> list[str]:
    title = "Plugin, endpoint API" if view.name == "plugin-ep" else "Plugin, network API"
    lines = [_headline(view, title)]
    if not view.reachable:
        return lines
    s = view.status
    lines.append(_data_line(s))
    api = s.get("api") or {}
    if view.name == "plugin-ep":
        for name, link in sorted((api.get("felixes") or {}).items()):
            lines.append(f"  felix {name} {link.get('address')}: "
                         f"{'connected' if link.get('connected') else 'NOT ANSWERING'}, "
                         f"{link.get('queued', 0)} queued, {_n(link.get('resyncs', 0), 'resync')}")
    else:
        lines.append(f"  {api.get('group_updates_published', 0)} group updates published, "
                     f"{api.get('getgroups_answered', 0)} GETGROUPS answered")
    return lines


def describe_acl_manager(view: ComponentView) -> list[str]:
    lines = [_headline(view, "ACL manager")]
    if not view.reachable:
        return lines
    s = view.status
    lines.append(f"  {_n(s.get('groups', 0), 'group')}, {_n(s.get('endpoints', 0), 'endpoint')} with ACLs; "
                 f"every group last heard from the plugin {_clock(s.get('snapshot_completed'))}")
    plugin = s.get("plugin") or {}
    lines.append(f"  plugin {plugin.get('requests')}: "
                 f"{'answering' if plugin.get('requests_connected') else 'NOT ANSWERING'}; subscription "
                 f"{plugin.get('subscription')}: {'up' if plugin.get('subscribed') else 'DOWN'}")
    pub = s.get("published") or {}
    batch = s.get("last_batch")
    last = (f"; last change {_clock(batch.get('at'))}: {batch.get('groups')} group(s) in "
            f"{_duration(batch.get('seconds'))}" if isinstance(batch, dict) else "")
    lines.append(f"  published {pub.get('acl_updates', 0)} ACL updates, {pub.get('membership_messages', 0)} "
                 f"membership messages{last}")
    return lines


# --- one host --------------------------------------------------------------------

@dataclass
class Targets:
    """Where this host's parts answer; None: not asked."""

    felix: str | None = None
    bird_socket: str | None = None
    plugin_ep: str | None = None
    plugin_network: str | None = None
    acl_manager: str | None = None
    plugin_host: bool | None = None  # this host runs the plugin (None: unknown, ask anyway)
    plugin_host_name: str = ""       # where it runs, when known and not here
    bird_candidates: Sequence[str] = BIRD_SOCKETS


@dataclass
class HostReport:
    text: str
    ok: bool


def host_report(targets: Targets, get: Getter = health_module.get) -> HostReport:
    """The whole report for one host; ``get`` does the HTTP (the lab's
    enters the host's namespace)."""
    lines: list[str] = []
    ok = True
    if targets.felix is not None:
        felix = query_component("felix", targets.felix, get)
        lines += describe_felix(felix)
        ok = ok and felix.ok
    lines.append("")
    bgp = query_bird(targets.bird_socket, targets.bird_candidates)
    if bgp.error is not None:
        lines.append(f"BGP: {bgp.error}")
        ok = False
    else:
        lines.append(format_bgp(bgp.rows))
        ok = ok and bgp.ok
    if targets.plugin_host is False:
        lines += ["", f"Plugin and ACL manager: they run on the plugin host{' ' + targets.plugin_host_name if targets.plugin_host_name else ''}, "
                      "not on this one"]
        return HostReport("\n".join(lines), ok)
    views = [query_component(name, url, get) for name, url in (
        ("plugin-ep", targets.plugin_ep), ("plugin-network", targets.plugin_network),
        ("acl-manager", targets.acl_manager)) if url is not None]
    if not views:
        return HostReport("\n".join(lines), ok)
    lines.append("")
    if targets.plugin_host is None and not any(v.reachable for v in views):
        lines.append("Plugin and ACL manager: not running on this host (nothing answers on "
                     f"{', '.join(v.url for v in views)}; they run on the plugin host only)")
        return HostReport("\n".join(lines), ok)
    for view in views:
        lines += describe_acl_manager(view) if view.name == "acl-manager" else describe_plugin(view)
        ok = ok and view.ok
    return HostReport("\n".join(lines), ok)


# --- settings: where this host's parts answer ------------------------------------------

def _config_address(path: str, component: str, env: dict[str, str]) -> str | None:
    """The health URL a component with this config file serves on (None:
    HealthEnabled off).  Read with the standard library only: the config's
    own reader needs ZeroMQ, which the bird image does not have."""
    values = {"HealthEnabled": env.get("CALICO_HEALTH_ENABLED", "").strip(),
              "HealthHost": env.get("CALICO_HEALTH_HOST", "").strip(),
              "HealthPort": env.get("CALICO_HEALTH_PORT", "").strip()}
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error, UnicodeDecodeError):
        pass
    for key in values:
        raw = parser.get("health", key, fallback="").strip()
        if raw:
            values[key] = raw
    if values["HealthEnabled"].lower() in ("false", "no", "off", "0"):
        return None
    port = values["HealthPort"] if values["HealthPort"].isdigit() else str(health_module.DEFAULT_PORTS[component])
    return health_module.base_url(values["HealthHost"] or health_module.DEFAULT_HOST, int(port))


def _plugin_host(env: dict[str, str]) -> tuple[bool | None, str]:
    """Does this host run the plugin (the first host of CALICO_HOSTS or the
    cluster file)?  None when that cannot be told."""
    try:
        hosts = hosts_from_env(env)
        if not hosts:
            from calico.common.datafiles import load_cluster

            hosts = [load_cluster(cluster_file(env)).plugin_host]
    except Exception:
        return None, ""
    name, ip = hosts[0].name, hosts[0].ip
    owned = _local_addresses()
    if owned is None:
        return None, ""
    return ip in owned, f"{name} ({ip})"


def _local_addresses() -> set[str] | None:
    """This host's addresses, or None where they cannot be read (no pyroute2)."""
    try:
        return owned_addresses()
    except (ImportError, OSError):
        return None


def default_targets(env: dict[str, str] | None = None) -> Targets:
    """Where this host's parts answer, from their settings (see the module docstring)."""
    env = dict(os.environ) if env is None else env
    plugin_host, where = _plugin_host(env)
    return Targets(
        felix=_config_address(FELIX_CONFIG, "felix", env),
        # The plugin has no config file: its flags are its settings; these are their defaults.
        plugin_ep=health_module.base_url(health_module.DEFAULT_HOST, health_module.DEFAULT_PORTS["plugin-ep"]),
        plugin_network=health_module.base_url(health_module.DEFAULT_HOST,
                                              health_module.DEFAULT_PORTS["plugin-network"]),
        acl_manager=_config_address(ACL_MANAGER_CONFIG, "acl-manager", env),
        plugin_host=plugin_host,
        plugin_host_name=where,
    )


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    if not text.startswith("http"):
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: want HOST:PORT or a URL")
        return health_module.base_url(host.strip("[]"), int(port))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calico-status", description=__doc__.splitlines()[0])
    parser.add_argument("--felix", type=_url, help="Felix's health server, HOST:PORT or URL "
                        "(default: HealthHost/HealthPort of /etc/calico/felix.cfg, else 127.0.0.1:9099)")
    parser.add_argument("--bird-socket", help=f"BIRD's control socket (default: the first of {', '.join(BIRD_SOCKETS)})")
    parser.add_argument("--plugin-ep", type=_url, help="the plugin's endpoint API health server (127.0.0.1:9097)")
    parser.add_argument("--plugin-network", type=_url, help="the plugin's network API health server (127.0.0.1:9098)")
    parser.add_argument("--acl-manager", type=_url, help="the ACL manager's health server "
                        "(default: /etc/calico/acl_manager.cfg's, else 127.0.0.1:9096)")
    parser.add_argument("--plugin-host", choices=("yes", "no", "auto"), default="auto",
                        help="does this host run the plugin and the ACL manager (auto: the first host of "
                             "CALICO_HOSTS or the cluster file, if it owns that address; else ask them anyway)")
    args = parser.parse_args(argv)
    targets = default_targets()
    for attr in ("felix", "bird_socket", "plugin_ep", "plugin_network", "acl_manager"):
        value = getattr(args, attr)
        if value is not None:
            setattr(targets, attr, value)
    if args.plugin_host != "auto":
        targets.plugin_host = args.plugin_host == "yes"
    if args.felix is None and targets.felix is None:
        print("Felix: HealthEnabled is off in /etc/calico/felix.cfg; nothing to ask (or give --felix)")
    report = host_report(targets)
    print(report.text)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
