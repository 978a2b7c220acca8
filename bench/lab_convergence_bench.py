"""How fast does a new endpoint become reachable from another host, and how
fast does a removed one stop being reachable?

A real lab (BIRD, Felix, plugin and ACL manager) of 3 hosts.  Two anchor
containers (host-1 and host-2) are attached first.  Then containers are
attached one after another, round-robin over the hosts, all in the anchors'
group; for each, the time from its endpoint file being written to the first
answered ping from an anchor on another host (pings every 10 ms, late
answers count).  Then each endpoint file is deleted in turn (the container
stays, so only the system's own reaction is measured) and the time from the
deletion to the first ping that goes unanswered is taken.  Figures are
printed; nothing is asserted.

    sudo .venv/bin/python bench/lab_convergence_bench.py [--containers 50] [--hosts 3] [--metrics off]

``--metrics off`` runs the lab's components without Prometheus metrics
(CALICO_LAB_METRICS=0; health is served either way), to see what they cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from calico.lab import containers, control, probe
from calico.lab.layout import Layout

GROUP = "bench"
TIMEOUT_S = 20.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def summary(label: str, values: list[float], failures: int) -> str:
    if not values:
        return f"{label}: no successful measurement ({failures} timed out)"
    return (f"{label}: n={len(values)} p50={statistics.median(values) * 1000:.0f} ms "
            f"p95={percentile(values, 95) * 1000:.0f} ms max={max(values) * 1000:.0f} ms"
            + (f"; {failures} timed out after {TIMEOUT_S:.0f} s" if failures else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="one line per container")
    parser.add_argument("--metrics", choices=("on", "off"), default="on",
                        help="Prometheus metrics in every component (default on, as in the lab)")
    args = parser.parse_args()
    os.environ["CALICO_LAB_METRICS"] = "1" if args.metrics == "on" else "0"
    layout = Layout.from_env("/tmp/calico-bench-lab", "tbench-")
    control.down(layout)
    try:
        started = time.monotonic()
        problems = control.up(layout, args.hosts)
        if problems:
            print("lab problems: " + "; ".join(problems), file=sys.stderr)
            return 1
        print(f"lab up: {args.hosts} hosts in {time.monotonic() - started:.1f} s (metrics {args.metrics})")
        anchors = {1: containers.add(layout, "anchor1", "host-1", ["192.168.100.1"], [GROUP]),
                   2: containers.add(layout, "anchor2", "host-2", ["192.168.100.2"], [GROUP])}
        if probe.wait_for_echo(layout.container_ns("anchor1"), "192.168.100.2", True, 60) is None:
            print("anchors never reached each other", file=sys.stderr)
            return 1
        added, add_fail = [], 0
        made = []
        for i in range(args.containers):
            index = i % args.hosts + 1
            name, ip = f"b{i}", f"192.168.{index}.{i // args.hosts + 1}"
            anchor = anchors[2] if index == 1 else anchors[1]
            container = containers.add(layout, name, f"host-{index}", [ip], [GROUP])
            made.append((container, anchor))
            answered = probe.wait_for_echo(layout.container_ns(anchor.name), ip, True, TIMEOUT_S)
            if answered is None:
                add_fail += 1
            else:
                added.append(answered - container.written_at)
            if args.verbose:
                print(f"  add {name} {ip} host-{index}: "
                      + (f"{(answered - container.written_at) * 1000:.0f} ms" if answered else "timeout"))
        removed, remove_fail = [], 0
        for container, anchor in made:
            path = os.path.join(layout.data_dir, container.addrs[0].replace(".", "_") + ".txt")
            os.unlink(path)
            deleted_at = time.time()
            lost = probe.wait_for_echo(layout.container_ns(anchor.name), container.addrs[0], False, TIMEOUT_S)
            if lost is None:
                remove_fail += 1
            else:
                removed.append(max(0.0, lost - deleted_at))
            if args.verbose:
                print(f"  remove {container.name}: "
                      + (f"{(lost - deleted_at) * 1000:.0f} ms" if lost else "timeout"))
        print(summary("file written -> cross-host ping answered", added, add_fail))
        print(summary("file deleted -> cross-host ping unanswered", removed, remove_fail))
        return 0
    finally:
        control.down(layout)


if __name__ == "__main__":
    sys.exit(main())
