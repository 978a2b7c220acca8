"""Making the kernel's felix- ipsets match the desired ones.

See docs/dataplane.md, "Shared group sets".

Reading: one netlink dump (``ipset_dump``: numbers, not the names ``ipset
list`` prints), on the first pass and after ``forget``; later passes trust
what was last written.

Writing happens in two phases of the dataplane pass, around the iptables
commit: ``sync`` (before it) creates new sets and replaces changed ones;
``delete_unused`` (after it, once no rule references them) destroys felix-
sets that are no longer wanted, leftover temporaries included.

A set named by its content (an endpoint's CIDR rules) never needs
changing: its name changes with its content.  Should the kernel hold
something else under such a name (left over, or altered by hand), it is
never edited in place: a temporary twin (``<name>-t``) is filled, swapped
with it in one kernel operation, and destroyed, so a packet never sees a
half-written ACL.  A group's shared
set (``ipsets.group_set``) is edited in place, member by member, removals
first: each member stands for one address, so any moment in between allows
no address that neither the old nor the new membership holds, and a join
costs one ``add`` however large the group.  It is refilled whole (fill and
swap) only when more than half of it changes (a resync or a gap found a
different membership).  A set that does not exist yet is created and
filled directly (no rule can reference it yet).

Two ways to write, chosen per pass by size, both from the same plan:
- pyroute2's IPSet (one netlink request per set operation and per member;
  about 0.4 ms each) for small changes;
- ``ipset restore`` for bulk ones: 100,000 members through pyroute2 would
  take some 45 s (its per-request cost, or 150 us per member just to encode
  a batched message), against 4-5 s for ipset restore, most of it kernel time.

Pitfalls kept away: pyroute2's ``destroy()``/``flush()`` with no name act on
every set on the host, so every call here passes a name (and flush is never
used); creates and adds are not exclusive, which is safe because the plan
is made from a fresh read of the kernel (a pass that fails drops what it
knew, and the next one reads again).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Mapping

from calico.felix.ipset_dump import read_felix_sets
from calico.felix.ipsets import HASH_NET, SetSpec, is_group_set, member_text, temp_name
from calico.felix.kernel_writes import WriteCounter
from calico.felix.tools import Runner, run_tool

log = logging.getLogger(__name__)

LIBRARY, RESTORE, AUTO = "library", "restore", "auto"
DEFAULT_MAXELEM = 65536
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_FAMILY_WORD = {4: "inet", 6: "inet6"}


@dataclass(frozen=True)
class SetEdit:
    """A set changed in place: these members removed, then these added."""

    spec: SetSpec  # what the set holds afterwards
    removed: tuple = ()
    added: tuple = ()


@dataclass
class SetPlan:
    creates: list[SetSpec] = field(default_factory=list)
    replaces: list[SetSpec] = field(default_factory=list)
    edits: list[SetEdit] = field(default_factory=list)
    stale_temps: list[str] = field(default_factory=list)  # destroy before reuse

    def is_empty(self) -> bool:
        return not (self.creates or self.replaces or self.edits or self.stale_temps)

    def operations(self) -> int:
        """Roughly how many pyroute2 requests the plan costs."""
        members = sum(len(s.members) for s in self.creates + self.replaces)
        edited = sum(len(e.removed) + len(e.added) for e in self.edits)
        return members + edited + len(self.creates) + 3 * len(self.replaces) + len(self.stale_temps)


def plan_sets(kernel: Mapping[str, SetSpec], desired: Mapping[str, SetSpec]) -> SetPlan:
    """Creates, edits and replacements (pure); deletions are ``unused_sets``."""
    plan = SetPlan()
    for name in sorted(desired):
        want = desired[name]
        have = kernel.get(name)
        if have is None:
            plan.creates.append(want)
        elif have != want:
            removed, added = have.members - want.members, want.members - have.members
            if (is_group_set(name) and (have.set_type, have.version) == (want.set_type, want.version)
                    and maxelem(have) == maxelem(want) and 2 * (len(removed) + len(added)) <= len(want.members)):
                plan.edits.append(SetEdit(want, tuple(sorted(removed)), tuple(sorted(added))))
                continue
            plan.replaces.append(want)
            if temp_name(name) in kernel:
                plan.stale_temps.append(temp_name(name))
    return plan


def unused_sets(kernel: Mapping[str, SetSpec], desired: Mapping[str, SetSpec]) -> list[str]:
    return sorted(name for name in kernel if name not in desired)


def maxelem(spec: SetSpec) -> int:
    size = DEFAULT_MAXELEM
    while size < len(spec.members):
        size *= 2
    return size


def restore_input(plan: SetPlan, deletions: list[str] = ()) -> str:  # type: ignore[assignment]
    """A plan as ``ipset restore`` input."""
    lines = [f"destroy {name}" for name in plan.stale_temps]
    for edit in plan.edits:
        lines += [f"del {edit.spec.name} {member_text(m, edit.spec.set_type)}" for m in edit.removed]
        lines += [f"add {edit.spec.name} {member_text(m, edit.spec.set_type)}" for m in edit.added]
    for spec, target in [(s, s.name) for s in plan.creates] + [(s, temp_name(s.name)) for s in plan.replaces]:
        extra = f" maxelem {maxelem(spec)}" if maxelem(spec) != DEFAULT_MAXELEM else ""
        lines.append(f"create {target} {spec.set_type} family {_FAMILY_WORD[spec.version]}{extra}")
        lines += [f"add {target} {member_text(m, spec.set_type)}" for m in sorted(spec.members)]
        if target != spec.name:
            lines += [f"swap {target} {spec.name}", f"destroy {target}"]
    lines += [f"destroy {name}" for name in deletions]
    return "\n".join(lines) + "\n"


class IpsetWriter:
    def __init__(self, counter: WriteCounter, mode: str = AUTO, library_max_ops: int = 200,
                 runner: Runner = subprocess.run) -> None:
        self.counter = counter
        self.mode = mode
        self.library_max_ops = library_max_ops
        self.runner = runner
        self.kernel: dict[str, SetSpec] | None = None
        self._ipset = None
        self.request_errors = 0  # pyroute2 requests the kernel refused (Felix's metrics)

    def close(self) -> None:
        if self._ipset is not None:
            self._ipset.close()
            self._ipset = None

    def forget(self) -> None:
        self.kernel = None

    def _socket(self):
        if self._ipset is None:
            from pyroute2 import IPSet
            self._ipset = IPSet()
        return self._ipset

    def read(self) -> dict[str, SetSpec]:
        if self.kernel is None:
            self.kernel = read_felix_sets()
        return self.kernel

    def sync(self, desired: Mapping[str, SetSpec]) -> SetPlan:
        """Create new sets and replace changed ones (before the iptables commit)."""
        kernel = self.read()
        plan = plan_sets(kernel, desired)
        if plan.is_empty():
            return plan
        started = time.perf_counter()
        library = self._use_library(plan.operations())
        try:
            if library:
                self._sync_library(plan)
            else:
                self._restore(restore_input(plan))
        except Exception:
            self.kernel = None
            raise
        for name in plan.stale_temps:
            kernel.pop(name, None)
        for spec in plan.creates + plan.replaces + [edit.spec for edit in plan.edits]:
            kernel[spec.name] = spec
        log.info("ipsets: %d created, %d edited (%d members), %d replaced via %s in %.0f ms", len(plan.creates),
                 len(plan.edits), sum(len(e.removed) + len(e.added) for e in plan.edits), len(plan.replaces),
                 "pyroute2" if library else "ipset restore", (time.perf_counter() - started) * 1000)
        return plan

    def delete_unused(self, desired: Mapping[str, SetSpec]) -> list[str]:
        """Destroy felix- sets not in ``desired`` (after the iptables commit)."""
        kernel = self.read()
        names = unused_sets(kernel, desired)
        if not names:
            return names
        try:
            if self._use_library(len(names)):
                for name in names:
                    self._destroy(name)
            else:
                self._restore(restore_input(SetPlan(), names))
        except Exception:
            self.kernel = None
            raise
        for name in names:
            del kernel[name]
        log.info("ipsets: destroyed %d unused set(s)", len(names))
        return names

    def _use_library(self, operations: int) -> bool:
        return self.mode == LIBRARY or (self.mode == AUTO and operations <= self.library_max_ops)

    def _restore(self, text: str) -> None:
        run_tool(["ipset", "restore"], stdin=text, runner=self.runner)
        self.counter.ipset_restores += 1

    def _request(self, method: str, *args, **kwargs):
        self.counter.ipset_requests += 1
        try:
            return getattr(self._socket(), method)(*args, **kwargs)
        except Exception:
            self.request_errors += 1
            raise

    def _destroy(self, name: str) -> None:
        if not name:  # a nameless destroy would remove every set on the host
            raise ValueError("refusing to destroy an ipset with no name")
        self._request("destroy", name)

    def _member(self, method: str, target: str, spec: SetSpec, member) -> None:
        family = _FAMILY[spec.version]
        if spec.set_type == HASH_NET:
            self._request(method, target, member, family=family, etype="net", exclusive=False)
        else:
            from pyroute2.ipset import PortEntry

            cidr, proto, port = member
            self._request(method, target, (cidr, PortEntry(port, protocol=proto)), family=family,
                          etype="net,port", exclusive=False)

    def _fill(self, target: str, spec: SetSpec) -> None:
        self._request("create", target, stype=spec.set_type, family=_FAMILY[spec.version], exclusive=False,
                      maxelem=maxelem(spec) if maxelem(spec) != DEFAULT_MAXELEM else None)
        for member in sorted(spec.members):
            self._member("add", target, spec, member)

    def _sync_library(self, plan: SetPlan) -> None:
        for name in plan.stale_temps:
            self._destroy(name)
        for edit in plan.edits:
            for member in edit.removed:
                self._member("delete", edit.spec.name, edit.spec, member)
            for member in edit.added:
                self._member("add", edit.spec.name, edit.spec, member)
        for spec in plan.creates:
            self._fill(spec.name, spec)
        for spec in plan.replaces:
            temp = temp_name(spec.name)
            self._fill(temp, spec)
            self._request("swap", temp, spec.name)
            self._destroy(temp)

