"""Felix's copy of group memberships: which groups it needs, and who is in them.

See docs/protocol.md, "ACLs and memberships: ACL manager and Felix".

Pure state.  An endpoint's rules may name groups (``Acls.groups``); Felix
needs the members' addresses of exactly the groups its endpoints' rules
name, subscribes to each such group's topic while some endpoint needs it,
and keeps one copy per group, shared by every endpoint (and, in the
dataplane, one ipset per group and family).

What the ACL manager publishes on a group's topic (``acl_manager.memberships``):
GROUPMEMBERS replaces the whole membership; MEMBERSUPDATE adds and removes
addresses and carries the next sequence number of the same epoch.  So:

* a GROUPMEMBERS is always taken (it may be the answer to our own request
  after a gap, or the ACL manager's first word after a restart);
* a MEMBERSUPDATE exactly one past what we hold is applied;
* one at or below what we hold is old news (the snapshot we took already
  includes it) and is ignored;
* one further ahead, or of another epoch, means we missed something: the
  members we hold stay in force (never widened, never emptied on a
  suspicion) and the agent asks for the whole group (GETGROUPMEMBERS);
* a MEMBERSUPDATE for a group we hold no copy of yet is ignored: the
  GROUPMEMBERS our subscription triggers is on its way.

Until a group's first GROUPMEMBERS arrives, the endpoints naming it stay
fail-closed (``EndpointTable.desired``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


class Outcome(enum.Enum):
    CHANGED = "changed"      # members changed: a dataplane pass is due
    UNCHANGED = "unchanged"  # taken, nothing new
    IGNORED = "ignored"      # old news, or not a group we need
    GAP = "gap"              # missed something: ask for the whole group


@dataclass(frozen=True)
class Held:
    epoch: str
    seq: int
    addrs: frozenset[str]


class GroupMembers:
    def __init__(self) -> None:
        self._held: dict[str, Held] = {}
        self._needed_by: dict[str, set[str]] = {}    # group -> endpoints whose rules name it
        self._needs: dict[str, frozenset[str]] = {}  # endpoint -> groups its rules name

    # --- which groups are needed ------------------------------------------------

    def need(self, endpoint_id: str, groups: Iterable[str]) -> tuple[list[str], list[str]]:
        """Record the groups an endpoint's rules name now; returns the groups
        newly needed (subscribe) and those no longer needed by anyone
        (unsubscribe; their copy is dropped)."""
        new = frozenset(groups)
        old = self._needs.get(endpoint_id, frozenset())
        if new:
            self._needs[endpoint_id] = new
        else:
            self._needs.pop(endpoint_id, None)
        added, dropped = [], []
        for group in sorted(new - old):
            users = self._needed_by.setdefault(group, set())
            if not users:
                added.append(group)
            users.add(endpoint_id)
        for group in sorted(old - new):
            users = self._needed_by[group]
            users.discard(endpoint_id)
            if not users:
                del self._needed_by[group]
                self._held.pop(group, None)
                dropped.append(group)
        return added, dropped

    def forget(self, endpoint_id: str) -> list[str]:
        """An endpoint is gone; the groups nobody needs any more."""
        return self.need(endpoint_id, ())[1]

    def needed(self) -> list[str]:
        return sorted(self._needed_by)

    def is_needed(self, group: str) -> bool:
        return group in self._needed_by

    # --- what is in them ------------------------------------------------------------

    def known(self) -> Mapping[str, frozenset[str]]:
        """Every needed group whose members we know: group -> addresses."""
        return {group: held.addrs for group, held in self._held.items()}

    def held(self, group: str) -> Held | None:
        return self._held.get(group)

    def unknown(self) -> list[str]:
        """Needed groups whose first GROUPMEMBERS has not arrived."""
        return sorted(set(self._needed_by) - set(self._held))

    def snapshot(self, msg: Mapping[str, Any]) -> Outcome:
        """A decoded GROUPMEMBERS."""
        group = msg["group"]
        if group not in self._needed_by:
            return Outcome.IGNORED
        old = self._held.get(group)
        addrs = frozenset(msg["addrs"])
        changed = old is None or old.addrs != addrs
        # An unchanged copy keeps its object: the dataplane rebuilds a set
        # only when the object it was built from is replaced.
        self._held[group] = Held(msg["epoch"], msg["seq"], addrs if changed else old.addrs)  # type: ignore[union-attr]
        return Outcome.CHANGED if changed else Outcome.UNCHANGED

    def delta(self, msg: Mapping[str, Any]) -> Outcome:
        """A decoded MEMBERSUPDATE."""
        group = msg["group"]
        held = self._held.get(group)
        if group not in self._needed_by or held is None:
            return Outcome.IGNORED
        if msg["epoch"] != held.epoch or msg["seq"] > held.seq + 1:
            return Outcome.GAP
        if msg["seq"] <= held.seq:
            return Outcome.IGNORED
        addrs = (held.addrs - frozenset(msg["removed"])) | frozenset(msg["added"])
        changed = addrs != held.addrs
        self._held[group] = Held(held.epoch, msg["seq"], addrs if changed else held.addrs)
        return Outcome.CHANGED if changed else Outcome.UNCHANGED
