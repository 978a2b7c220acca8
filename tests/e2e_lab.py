"""Helpers for the lab tests (tests/e2e, tests/security): a real lab per test module.

Each module gets its own namespace prefix (``te2e`` + a letter, ``tsec-``)
and lab directory under /tmp/calico-e2e, so modules, and a user's own lab,
never meet.  A lab is always taken down, also when the test fails; a lab
left by a crashed earlier run with the same prefix is removed before
starting.  ``secret`` gives the lab a cluster secret of the test's (e.g.
tests/testkeys.py's) instead of a fresh one, so the test's own ZeroMQ
clients can speak as, or pose as, the lab's components.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Iterator

import pytest

import polling
import testkeys
from calico.lab import check, containers, control, hosts, state
from calico.lab.layout import Layout

E2E_ROOT = "/tmp/calico-e2e"
CONVERGE_S = 30.0


@contextlib.contextmanager
def running_lab(prefix: str, count: int, cluster_extra: str = "", subnets: int = 1,
                settings: dict[str, str] | None = None, secret: bytes | None = None) -> Iterator[Layout]:
    layout = Layout.from_env(os.path.join(E2E_ROOT, prefix.rstrip("-")), prefix)
    control.down(layout)
    try:
        if secret is not None:  # 'up' keeps a secret it finds
            os.makedirs(layout.lab_dir, exist_ok=True)
            testkeys.write_secret_file(layout.secret_file, secret)
        problems = control.up(layout, count, cluster_extra=cluster_extra, subnets=subnets, settings=settings)
        if problems:
            pytest.fail("lab did not come up: " + "; ".join(problems) + "\n" + control.status(layout))
        yield layout
    finally:
        control.down(layout)


def lab_containers(layout: Layout) -> list[state.Container]:
    return sorted(state.load(layout).containers.values(), key=lambda c: (c.host, c.name))


def assert_matrix_converges(layout: Layout, timeout_s: float = CONVERGE_S) -> dict:
    members = lab_containers(layout)
    ok, cells = check.wait_until_correct(layout, hosts.load_lab_cluster(layout), members, timeout_s)
    text = check.format_matrix(members, cells)
    assert ok, f"matrix did not converge within {timeout_s} s:\n{text}\n{control.status(layout)}"
    return {pair: cell.actual for pair, cell in cells.items()}


def add_all(layout: Layout, specs) -> None:
    for name, host, ips, groups in specs:
        containers.add(layout, name, host, ips.split(","), groups.split(","))


def _normal_iptables(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        lines.append(re.sub(r"\[\d+:\d+\]", "[0:0]", line))
    return lines


def _normal_ipset(text: str) -> list[str]:
    """Set headers and sorted members; sizes, reference counts and hash seeds dropped."""
    out: list[str] = []
    members: list[str] | None = None
    for line in text.splitlines() + [""]:
        if line.startswith("Members:"):
            members = []
        elif members is not None:
            if line.strip():
                members.append(line)
            else:
                out += sorted(members)
                members = None
        elif line.strip() and not line.startswith(("Size in memory", "References", "Number of entries")):
            out.append(re.sub(r" initval 0x[0-9a-f]+", "", line))
    return out


def kernel_snapshot(layout: Layout) -> dict[str, list[str]]:
    """Every host's routes, rules and sets, normalised for comparison."""
    snap = {}
    for index in range(1, state.load(layout).hosts + 1):
        raw = control.kernel_state(layout, index)
        snap[f"host-{index} routes"] = sorted(raw["routes4"].splitlines() + raw["routes6"].splitlines())
        snap[f"host-{index} iptables"] = _normal_iptables(raw["iptables"])
        snap[f"host-{index} ip6tables"] = _normal_iptables(raw["ip6tables"])
        snap[f"host-{index} ipset"] = _normal_ipset(raw["ipset"])
    return snap


def assert_no_duplicates(snapshot: dict[str, list[str]]) -> None:
    for key, lines in snapshot.items():
        if "iptables" in key:
            rules = [line for line in lines if line.startswith("-A ")]
            dupes = {r for r in rules if rules.count(r) > 1}
            assert not dupes, f"{key}: duplicate rules {sorted(dupes)[:5]}"
        if "routes" in key:
            dupes = {r for r in lines if lines.count(r) > 1}
            assert not dupes, f"{key}: duplicate routes {sorted(dupes)[:5]}"


def wait_until(predicate, timeout_s: float = CONVERGE_S, interval_s: float = 0.1, what: str = "condition"):
    return polling.wait_until(predicate, what, timeout_s, interval_s)


def assert_kernel_converges_to(layout: Layout, before: dict[str, list[str]], timeout_s: float = CONVERGE_S) -> None:
    last = {}

    def same():
        nonlocal last
        last = kernel_snapshot(layout)
        return last == before

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if same():
            assert_no_duplicates(last)
            return
        time.sleep(0.25)
    diffs = []
    for key in before:
        gone = [l for l in before[key] if l not in last.get(key, [])]
        new = [l for l in last.get(key, []) if l not in before[key]]
        if gone or new:
            diffs.append(f"{key}: missing {gone[:6]} extra {new[:6]}")
    pytest.fail("kernel state did not return to what it was:\n" + "\n".join(diffs))
