"""The network as the plugin announced it: groups, their members and rules.

See docs/protocol.md, "Groups: plugin and ACL manager".

Every GROUPUPDATE replaces one group whole.  ``parse_group_update`` turns a
decoded message into an immutable ``GroupSpec``; a rule that does not parse
is logged once (per group, direction and rule text) and skipped while the
rest of the group stands, so one typo in the cluster file never opens or
closes more than that rule.  A group with no members has been deleted.

Whole-state replacement after GETGROUPS
---------------------------------------
The plugin answers GETGROUPS and then publishes every group it has.  Groups
we hold that are missing from that burst were deleted while we were not
listening and must go.  The burst carries no end marker, so
``SnapshotTracker`` treats it as complete when, for every GETGROUPS sent,
the reply has arrived and then no GROUPUPDATE has come for a short quiet
period (``quiet`` seconds, 1 s by default) *while our subscription to the
plugin's PUB socket was connected*.  Groups announced at any time since the
first outstanding GETGROUPS was sent count as present (whatever the plugin
said then was its state then, and a later deletion would come as its own
empty-members update), except that a new connection of the subscription
starts the tally afresh: the plugin at the other end may have restarted with
other groups.  Only then are the unseen groups dropped.

Nothing is dropped merely because the plugin went away: a lost connection,
a REQ timeout or a silent heartbeat only cause a new GETGROUPS, and the old
groups stay in force ("the others carry on with what they last knew") until
a complete burst from the plugin says otherwise.  A failed GETGROUPS (rc not
SUCCESS) abandons the snapshot, which again drops nothing.

``issued`` is not used to bound the burst: it is the plugin's clock, which
need not agree with ours.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

from calico.common.rules import Rule, rule_from_wire
from calico.common.validation import ValidationError

log = logging.getLogger(__name__)

DIRECTIONS = ("inbound", "outbound")


@dataclass(frozen=True, eq=True)
class GroupSpec:
    """One security group as last announced.  Not hashable (members is a dict)."""

    name: str
    members: Mapping[str, tuple[str, ...]]  # endpoint id -> canonical addresses
    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()
    inbound_default: str = "deny"
    outbound_default: str = "deny"

    __hash__ = None  # type: ignore[assignment]

    @property
    def referenced_groups(self) -> frozenset[str]:
        """Groups named by this group's rules (their members feed our ACLs)."""
        return frozenset(r.group for r in self.inbound + self.outbound if r.group is not None)

    def same_rules(self, other: "GroupSpec | None") -> bool:
        return other is not None and (self.inbound, self.outbound, self.inbound_default, self.outbound_default) == (
            other.inbound, other.outbound, other.inbound_default, other.outbound_default)


class BadRuleReporter:
    """Logs each distinct bad rule once; repeats (every re-announcement) go to DEBUG."""

    def __init__(self) -> None:
        self._reported: set[tuple[str, str, str]] = set()

    def report(self, group: str, direction: str, wire: Any, reason: str) -> None:
        try:
            text = json.dumps(wire, sort_keys=True)
        except (TypeError, ValueError):
            text = repr(wire)
        key = (group, direction, text)
        # JSON escapes every control character: one line, but of any length.
        shown = text if len(text) <= 200 else text[:200] + "..."
        if key in self._reported:
            log.debug("group %s: %s rule %s skipped again: %s", group, direction, shown, reason)
            return
        self._reported.add(key)
        log.warning("group %s: %s rule %s skipped: %s", group, direction, shown, reason)


def parse_group_update(msg: Mapping[str, Any], reporter: BadRuleReporter | None = None) -> GroupSpec:
    """A GroupSpec from a GROUPUPDATE already checked by ``messages.decode_request``.

    Member addresses were canonicalised by the decoder; duplicates are folded.
    """
    reporter = reporter or BadRuleReporter()
    name = msg["group"]
    rules = msg["rules"]
    parsed: dict[str, tuple[Rule, ...]] = {}
    for direction in DIRECTIONS:
        good: list[Rule] = []
        for wire in rules.get(direction, []):
            try:
                rule = rule_from_wire(wire)
            except ValidationError as exc:
                reporter.report(name, direction, wire, str(exc))
                continue
            if rule not in good:
                good.append(rule)
        parsed[direction] = tuple(good)
    members = {ep: tuple(dict.fromkeys(ips)) for ep, ips in sorted(msg["members"].items())}
    return GroupSpec(
        name=name,
        members=members,
        inbound=parsed["inbound"],
        outbound=parsed["outbound"],
        inbound_default=rules.get("inbound_default", "deny"),
        outbound_default=rules.get("outbound_default", "deny"),
    )


class NetworkStore:
    """Groups as received, keyed by name; a group with no members is absent."""

    def __init__(self) -> None:
        self.groups: dict[str, GroupSpec] = {}
        self.reporter = BadRuleReporter()

    def parse(self, msg: Mapping[str, Any]) -> GroupSpec:
        return parse_group_update(msg, self.reporter)

    def apply(self, spec: GroupSpec) -> bool:
        """Store a group (or delete it when it has no members); True if it changed."""
        old = self.groups.get(spec.name)
        if not spec.members:
            return self.groups.pop(spec.name, None) is not None
        if old == spec:
            return False
        self.groups[spec.name] = spec
        return True

    def remove(self, name: str) -> bool:
        return self.groups.pop(name, None) is not None


class SnapshotTracker:
    """Decides when the burst after GETGROUPS is complete (see module docstring)."""

    def __init__(self, quiet: float = 1.0):
        self.quiet = quiet
        self.pending = 0                  # GETGROUPS sent, reply not yet in
        self.seen: set[str] | None = None  # None: no snapshot open
        self.last_activity = 0.0

    @property
    def open(self) -> bool:
        return self.seen is not None

    def request_sent(self, now: float) -> None:
        if self.seen is None:
            self.seen = set()
        self.pending += 1
        self.last_activity = now

    def reply_received(self, now: float) -> None:
        self.pending = max(0, self.pending - 1)
        self.last_activity = now

    def abandon(self) -> None:
        """The plugin refused GETGROUPS: no burst is coming, so drop nothing."""
        self.seen = None
        self.pending = 0

    def resubscribed(self) -> None:
        """A new connection to the plugin's PUB: it may be a new plugin with
        other groups, so what the old connection announced proves nothing."""
        if self.seen is not None:
            self.seen = set()

    def group_received(self, name: str, now: float) -> None:
        if self.seen is not None:
            self.seen.add(name)
            self.last_activity = now

    def complete(self, now: float, subscribed: bool) -> set[str] | None:
        """The names announced in a finished snapshot, once; else None."""
        if self.seen is None or self.pending or not subscribed or now - self.last_activity < self.quiet:
            return None
        seen, self.seen = self.seen, None
        return seen

    def next_due(self, now: float) -> float | None:
        if self.seen is None or self.pending:
            return None
        return max(0.0, self.last_activity + self.quiet - now)
