"""Figures for the larger shapes: IP-in-IP across subnets, and route reflectors.

1. Cross-subnet convergence with IP-in-IP: a lab of 4 hosts on 2 subnets
   with ``ipip = cross-subnet``; containers are attached one after another
   on hosts of the second subnet, and for each the time from its endpoint
   file being written to the first ping answered from an anchor container
   on the first subnet (through tunl0) is taken.
2. BGP sessions per host at 8 hosts: full mesh against 2 route reflectors
   (read from each host's ``birdc show protocols``).
3. Routes settling after a reflector stops: in the 8-host lab with
   reflectors host-1 and host-2, host-1's BIRD is stopped (SIGTERM) and the
   time until every other host's routes are what they must be (host-1's own
   containers withdrawn, every other route unchanged) is taken.

Figures are printed; nothing is asserted.  Holds the root tests' lock
(/tmp/calico-root-tests.lock) while it runs, so no test run shares the
machine with it.

    sudo .venv/bin/python bench/cluster_shapes_bench.py [--containers 20]
"""

from __future__ import annotations

import argparse
import fcntl
import statistics
import sys
import time

from calico.lab import containers, control, hosts, probe, processes
from calico.lab.layout import Layout

LOCK = "/tmp/calico-root-tests.lock"
TIMEOUT_S = 20.0


def routes(layout: Layout, index: int) -> dict[str, str]:
    return {line.split()[0]: line for line in control.kernel_state(layout, index)["routes4"].splitlines()
            if line.startswith("192.168.")}


def cross_subnet(count: int) -> None:
    layout = Layout.from_env("/tmp/calico-bench-shapes", "tbshape-")
    control.down(layout)
    try:
        problems = control.up(layout, 4, subnets=2, settings={"ipip": "cross-subnet"})
        if problems:
            raise SystemExit("lab problems: " + "; ".join(problems))
        anchor = containers.add(layout, "anchor", "host-1", ["192.168.100.1"], ["bench"])
        times, failures = [], 0
        for n in range(count):
            host = "host-2" if n % 2 == 0 else "host-4"
            ip = f"192.168.{101 + n}.1"
            container = containers.add(layout, f"x{n}", host, [ip], ["bench"])
            answered = probe.wait_for_echo(layout.container_ns(anchor.name), ip, True, TIMEOUT_S)
            if answered is None:
                failures += 1
            else:
                times.append(answered - container.written_at)
        tunnelled = "dev tunl0" in routes(layout, 1).get("192.168.101.1", "")
        print(f"cross-subnet (ipip cross-subnet, 4 hosts on 2 subnets): endpoint file -> first ping through "
              f"tunl0 ({'routed via tunl0' if tunnelled else 'NOT via tunl0'}): n={len(times)} "
              f"p50={statistics.median(times) * 1000:.0f} ms max={max(times) * 1000:.0f} ms"
              + (f"; {failures} timed out" if failures else ""))
    finally:
        control.down(layout)


def sessions(layout: Layout, count: int) -> list[int]:
    return [len(hosts.bgp_sessions(layout, i)) for i in range(1, count + 1)]


def reflectors() -> None:
    count = 8
    for settings in ({}, {"route_reflectors": "host-1, host-2"}):
        layout = Layout.from_env("/tmp/calico-bench-shapes", "tbshape-")
        control.down(layout)
        try:
            problems = control.up(layout, count, settings=settings)
            if problems:
                raise SystemExit("lab problems: " + "; ".join(problems))
            label = "2 reflectors" if settings else "full mesh"
            per_host = sessions(layout, count)
            print(f"BGP sessions per host, {count} hosts, {label}: {per_host} (total {sum(per_host) // 2})")
            if not settings:
                continue
            for i in range(1, count + 1):
                containers.add(layout, f"c{i}", f"host-{i}", [f"192.168.{i}.1"], ["bench"])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(len(routes(layout, i)) < count + 1
                                                     for i in range(1, count + 1)):
                time.sleep(0.1)
            before = {i: routes(layout, i) for i in range(2, count + 1)}
            want = {i: {k: v for k, v in r.items() if k != "192.168.1.1"} for i, r in before.items()}
            stopped = time.monotonic()
            processes.stop(layout, hosts.label(1, "bird"))
            changed: set[tuple[int, str]] = set()  # kept routes seen different at any sample
            while time.monotonic() - stopped < 30:
                now = {i: routes(layout, i) for i in range(2, count + 1)}
                changed |= {(i, k) for i in now for k in want[i] if now[i].get(k) != want[i][k]}
                if all(now[i] == want[i] for i in now):
                    break
                time.sleep(0.02)
            settled = time.monotonic() - stopped
            print(f"reflector host-1's BIRD stopped (SIGTERM): routes on the 7 other hosts settled in "
                  f"{settled * 1000:.0f} ms (host-1's own container withdrawn everywhere); "
                  f"{len(changed)} of the {sum(len(w) for w in want.values())} other routes ever differed "
                  f"while sampling every 20 ms")
        finally:
            control.down(layout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--lock", default=LOCK, help=f"lock file to hold while measuring (default {LOCK})")
    args = parser.parse_args()
    with open(args.lock, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cross_subnet(args.containers)
        reflectors()
    return 0


if __name__ == "__main__":
    sys.exit(main())
