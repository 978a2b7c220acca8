"""Join and leave latency against group size, in a real 2-host lab.

Every container is in one group, as the seed's users put them.  Two anchors
(host-1 and host-2) come first; the group is then grown with filler
containers (round-robin over the hosts, no listener process: only pinged)
to each size asked for, and at each size ``--joins`` containers join and
leave one at a time:

* join: from the joiner's endpoint file written to the first ping answered
  from the anchor on the *other* host (pings every 10 ms; the joiner is on
  host-1 and host-2 in turn);
* leave: from its endpoint file deleted to the first ping from that anchor
  that goes unanswered (the container is then removed).

Figures are printed (p50, p95, max per size) and, with ``--json``, written
for ``--plot``, which draws latency against group size as a PNG (one line
per results file, e.g. before and after a change; needs matplotlib, the
``bench`` extra).  Nothing is asserted.

    sudo .venv/bin/python bench/lab_group_scale_bench.py --sizes 10,100,300,1000 --json after.json
    .venv/bin/python bench/lab_group_scale_bench.py --plot before.json after.json --png curve.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

GROUP = "bench"
TIMEOUT_S = 30.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": statistics.median(values) * 1000, "p95": percentile(values, 95) * 1000,
            "max": max(values) * 1000}


def line(label: str, values: list[float], failures: int) -> str:
    s = stats(values)
    if s["p50"] is None:
        return f"  {label}: no successful measurement ({failures} timed out)"
    return (f"  {label}: n={len(values)} p50={s['p50']:.0f} ms p95={s['p95']:.0f} ms max={s['max']:.0f} ms"
            + (f" ({failures} timed out after {TIMEOUT_S:.0f} s)" if failures else ""))


def address(n: int) -> str:
    """Distinct pool addresses for the n-th container (fillers and joiners)."""
    return f"192.168.{10 + n // 250}.{n % 250 + 1}"


def measure(sizes: list[int], joins: int, verbose: bool) -> list[dict]:
    from calico.lab import containers, control, probe
    from calico.lab.layout import Layout

    layout = Layout.from_env("/tmp/calico-bench-groupscale", "tgscale-")
    control.down(layout)
    results = []
    try:
        started = time.monotonic()
        problems = control.up(layout, 2)
        if problems:
            raise SystemExit("lab problems: " + "; ".join(problems))
        print(f"lab up: 2 hosts in {time.monotonic() - started:.1f} s")
        anchors = {1: containers.add(layout, "anchor1", "host-1", ["192.168.100.1"], [GROUP], listen=False),
                   2: containers.add(layout, "anchor2", "host-2", ["192.168.100.2"], [GROUP], listen=False)}
        if probe.wait_for_echo(layout.container_ns("anchor1"), "192.168.100.2", True, 60) is None:
            raise SystemExit("the anchors never reached each other")
        members, serial = 2, 0
        for size in sizes:
            grow_started = time.monotonic()
            while members < size:
                host = members % 2 + 1
                containers.add(layout, f"f{serial}", f"host-{host}", [address(serial)], [GROUP], listen=False)
                serial += 1
                members += 1
            # Let the fillers' own changes settle before measuring.
            last = f"f{serial - 1}" if serial else None
            if last is not None:
                probe.wait_for_echo(layout.container_ns("anchor1"), address(serial - 1), True, 120)
                probe.wait_for_echo(layout.container_ns("anchor2"), address(serial - 1), True, 120)
            print(f"group of {members}: grown in {time.monotonic() - grow_started:.1f} s")
            joined, left, join_fail, leave_fail = [], [], 0, 0
            for j in range(joins):
                host = j % 2 + 1
                anchor = anchors[2 if host == 1 else 1]
                name, ip = f"j{serial}", address(serial)
                serial += 1
                container = containers.add(layout, name, f"host-{host}", [ip], [GROUP], listen=False)
                answered = probe.wait_for_echo(layout.container_ns(anchor.name), ip, True, TIMEOUT_S)
                if answered is None:
                    join_fail += 1
                else:
                    joined.append(answered - container.written_at)
                os.unlink(os.path.join(layout.data_dir, ip.replace(".", "_") + ".txt"))
                deleted_at = time.time()
                lost = probe.wait_for_echo(layout.container_ns(anchor.name), ip, False, TIMEOUT_S)
                if lost is None:
                    leave_fail += 1
                else:
                    left.append(max(0.0, lost - deleted_at))
                containers.remove(layout, name)
                if verbose:
                    print(f"    {name} host-{host}: join "
                          + (f"{(answered - container.written_at) * 1000:.0f} ms" if answered else "timeout")
                          + ", leave " + (f"{(lost - deleted_at) * 1000:.0f} ms" if lost else "timeout"))
            print(line("join (file written -> ping from the other host answered)", joined, join_fail))
            print(line("leave (file deleted -> ping from the other host unanswered)", left, leave_fail))
            results.append({"size": members, "join": stats(joined), "leave": stats(left),
                            "join_failures": join_fail, "leave_failures": leave_fail})
        return results
    finally:
        control.down(layout)


def plot(paths: list[str], png: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install -e '.[bench]'") from None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        label = data.get("label") or os.path.splitext(os.path.basename(path))[0]
        for ax, kind in zip(axes, ("join", "leave")):
            rows = [r for r in data["results"] if r[kind]["p50"] is not None]
            sizes = [r["size"] for r in rows]
            line_, = ax.plot(sizes, [r[kind]["p50"] for r in rows], marker="o", label=f"{label} p50")
            ax.plot(sizes, [r[kind]["p95"] for r in rows], marker="^", linestyle="--", color=line_.get_color(),
                    label=f"{label} p95")
    for ax, kind in zip(axes, ("join", "leave")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("group size (members)")
        ax.set_title(f"{kind}: endpoint file -> ping from the other host")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("latency (ms)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,300,1000", help="group sizes to measure at (%(default)s)")
    parser.add_argument("--joins", type=int, default=20, help="joins (and leaves) measured per size (%(default)s)")
    parser.add_argument("--json", help="write the figures here (for --plot)")
    parser.add_argument("--label", help="the curve's name in the plot (default: the JSON file's name)")
    parser.add_argument("--plot", nargs="+", metavar="JSON", help="draw these results instead of measuring")
    parser.add_argument("--png", default="group_scale.png", help="where --plot writes (%(default)s)")
    parser.add_argument("--verbose", action="store_true", help="one line per join")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.png)
        return 0
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] < 3:
        parser.error("--sizes: whole numbers of at least 3 (two anchors are members)")
    results = measure(sizes, args.joins, args.verbose)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"label": args.label, "joins": args.joins, "results": results}, handle, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
