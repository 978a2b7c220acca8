"""``calico-lab``: a whole Calico cluster in network namespaces, one command each.

See docs/lab.md, "Commands".

Verbs: ``up [--hosts N] [--subnets S] [--reflectors H1,H2] [--ipip MODE]
[--nat-outgoing]``, ``set KEY=VALUE ...`` (cluster settings of a running
lab), ``add NAME --host H --ip IP --group G[,G2]``, ``remove NAME``,
``check``, ``status``, ``down``, ``demo``.  The lab lives in
``--lab-dir`` (``CALICO_LAB_DIR``, default /var/run/calico-lab) with
namespaces named by ``--prefix`` (``CALICO_LAB_PREFIX``, default clab-).
Errors are one line on stderr and exit status 1; ``check`` and ``demo``
exit 0 only when every probe matches what the groups allow.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Sequence

from calico.common.datafiles import IPIP_MODES, DataFileError
from calico.lab import check, containers, control, hosts, probe, state
from calico.lab.layout import LabError, Layout, host_name

SETTABLE = ("ipip", "nat_outgoing", "route_reflectors")
DEMO_CONTAINERS = (  # name, host, ip, group: the seed's layout
    ("web1", "host-1", "192.168.1.1", "web"),
    ("db1", "host-1", "192.168.1.2", "db"),
    ("web2", "host-2", "192.168.2.1", "web"),
    ("db2", "host-2", "192.168.2.2", "db"),
)


def _split(values: Sequence[str] | None) -> list[str]:
    return [item.strip() for value in values or () for item in value.split(",") if item.strip()]


def _components() -> tuple[str, ...] | None:
    """CALICO_LAB_COMPONENTS=bird,felix limits what runs (for debugging one part)."""
    text = os.environ.get("CALICO_LAB_COMPONENTS", "").strip()
    return tuple(_split([text])) if text else None


def _up_settings(args: argparse.Namespace) -> dict[str, str]:
    settings = {}
    if args.reflectors:
        settings["route_reflectors"] = ", ".join(_split(args.reflectors))
    if args.ipip:
        settings["ipip"] = args.ipip
    if args.nat_outgoing:
        settings["nat_outgoing"] = "true"
    return settings


def cmd_up(layout: Layout, args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = _up_settings(args)
    problems = control.up(layout, args.hosts, _components(), subnets=args.subnets, settings=settings)
    shape = f"{args.hosts} host(s)" + (f" on {args.subnets} subnets" if args.subnets > 1 else "")
    extra = "".join(f"; {k} = {v}" for k, v in settings.items())
    print(f"lab up: {shape} in {layout.lab_dir} ({time.monotonic() - started:.1f} s){extra}; "
          f"logs in {layout.log_dir}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_set(layout: Layout, args: argparse.Namespace) -> int:
    lab = state.require_up(layout)
    changes = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in SETTABLE:
            raise LabError(f"set {item!r}: want KEY=VALUE with KEY one of {', '.join(SETTABLE)}")
        changes[key.strip()] = value.strip()
    problems = hosts.set_settings(layout, lab.hosts, changes)
    print("lab set: " + ", ".join(f"{k} = {v}" for k, v in changes.items())
          + " (cluster file rewritten; Felix re-reads it within a second; BIRD reconfigured on every host)")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_add(layout: Layout, args: argparse.Namespace) -> int:
    container = containers.add(layout, args.name, args.host, _split(args.ip), _split(args.group))
    print(f"added {container.name} on {host_name(container.host)}: {', '.join(container.addrs)} "
          f"groups {','.join(container.groups)} (endpoint {container.endpoint_id[:12]}, "
          f"namespace {layout.container_ns(container.name)})")
    return 0


def cmd_remove(layout: Layout, args: argparse.Namespace) -> int:
    removed = containers.remove(layout, args.name)
    print(f"removed {args.name}" + (f": {', '.join(removed)}" if removed else ""))
    return 0


def _check(layout: Layout, wait_s: float) -> tuple[bool, str]:
    lab = state.require_up(layout)
    members = sorted(lab.containers.values(), key=lambda c: (c.host, c.name))
    if len(members) < 2:
        return True, "fewer than two containers: nothing to check"
    ok, cells = check.wait_until_correct(layout, hosts.load_lab_cluster(layout), members, wait_s)
    return ok, check.format_matrix(members, cells)


def cmd_check(layout: Layout, args: argparse.Namespace) -> int:
    ok, text = _check(layout, args.wait)
    print(text)
    return 0 if ok else 1


def cmd_status(layout: Layout, args: argparse.Namespace) -> int:
    print(control.status(layout))
    return 0


def cmd_down(layout: Layout, args: argparse.Namespace) -> int:
    done = control.down(layout)
    print("lab down: " + ("; ".join(done) if done else "nothing to remove"))
    return 0


class FirstPing(threading.Thread):
    """Pings ``target`` from ``ns`` until it answers; records when."""

    def __init__(self, ns: str, target: str, timeout_s: float):
        super().__init__(daemon=True)
        self.ns, self.target, self.timeout_s = ns, target, timeout_s
        self.answered_at: float | None = None

    def run(self) -> None:
        self.answered_at = probe.wait_for_echo(self.ns, self.target, True, self.timeout_s)


def cmd_demo(layout: Layout, args: argparse.Namespace) -> int:
    if state.load(layout).hosts or control.lab_namespaces(layout):
        raise LabError(f"a lab is already up in {layout.lab_dir} with prefix {layout.prefix}; "
                       "run 'calico-lab down' first (demo builds and removes its own)")
    try:
        print("demo: starting 2 hosts (BIRD and Felix on each; plugin and ACL manager on host-1)...")
        problems = control.up(layout, 2, _components())
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        probers: dict[str, tuple[FirstPing, str]] = {}
        added: dict[str, state.Container] = {}
        for name, host, ip, group in DEMO_CONTAINERS:
            container = containers.add(layout, name, host, [ip], [group])
            added[name] = container
            print(f"  added {name} ({ip}, group {group}) on {host}")
            for other in added.values():
                if other.host != container.host and set(other.groups) & set(container.groups):
                    # Ping each of the pair from the other, from the moment both exist.
                    for target, source in ((container, other), (other, container)):
                        prober = FirstPing(layout.container_ns(source.name), target.addrs[0], 30.0)
                        prober.start()
                        probers[target.name] = (prober, source.name)
        print("demo: waiting for convergence, then checking every pair (ICMP and TCP)...")
        ok, text = _check(layout, 30.0)
        print(text)
        print("\ntime from endpoint file written to first ping answered from the same group on the other host:")
        for name in added:
            prober, source = probers[name]
            prober.join(31)
            written = added[name].written_at
            if prober.answered_at is None:
                print(f"  {name:5} no answer to {source} within 30 s")
                ok = False
                continue
            peer_written = added[source].written_at
            note = (f" (includes waiting for {source}, attached {peer_written - written:.2f} s later)"
                    if peer_written > written else "")
            print(f"  {name:5} {prober.answered_at - written:6.3f} s (pinged from {source}){note}")
        print(f"\ndemo: {'PASS' if ok else 'FAIL'}: matrix {'matches' if ok else 'does not match'} the groups")
        return 0 if ok else 1
    finally:
        print("demo: " + "; ".join(control.down(layout) or ["nothing to remove"]))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="calico-lab", description=__doc__.splitlines()[0])
    top.add_argument("--lab-dir", help="lab directory (default $CALICO_LAB_DIR or /var/run/calico-lab)")
    top.add_argument("--prefix", help="namespace prefix (default $CALICO_LAB_PREFIX or clab-)")
    verbs = top.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="start the hosts")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--subnets", type=int, default=1,
                    help="spread the hosts over this many fabrics joined by a router (default 1: one fabric)")
    up.add_argument("--reflectors", action="append", help="route reflector hosts, e.g. host-1,host-2")
    up.add_argument("--ipip", choices=IPIP_MODES, help="IP-in-IP mode (default never)")
    up.add_argument("--nat-outgoing", action="store_true", help="masquerade container traffic leaving the pools")
    st = verbs.add_parser("set", help="change cluster settings of the running lab")
    st.add_argument("settings", nargs="+", metavar="KEY=VALUE", help=f"KEY one of {', '.join(SETTABLE)}")
    add = verbs.add_parser("add", help="add a container")
    add.add_argument("name")
    add.add_argument("--host", required=True, help="host-N or N")
    add.add_argument("--ip", action="append", required=True, help="address(es), comma-separated or repeated")
    add.add_argument("--group", action="append", required=True, help="group(s), comma-separated or repeated")
    remove = verbs.add_parser("remove", help="remove a container")
    remove.add_argument("name")
    chk = verbs.add_parser("check", help="probe every pair of containers against the groups' rules")
    chk.add_argument("--wait", type=float, default=0.0, help="retry for up to this many seconds until correct")
    verbs.add_parser("status", help="hosts, processes, BGP sessions, endpoints")
    verbs.add_parser("down", help="remove everything the lab made")
    verbs.add_parser("demo", help="up, four containers in two groups over two hosts, check, down")
    return top


HANDLERS = {"up": cmd_up, "set": cmd_set, "add": cmd_add, "remove": cmd_remove, "check": cmd_check, "status": cmd_status,
            "down": cmd_down, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.geteuid() != 0:
        print("calico-lab: must run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        layout = Layout.from_env(args.lab_dir, args.prefix)
        return HANDLERS[args.verb](layout, args)
    except (LabError, DataFileError) as exc:
        print(f"calico-lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
