"""Who is in each group, as Felix needs it: addresses, once per group, then changes.

See docs/protocol.md, "ACLs and memberships: ACL manager and Felix".

Pure code.  Per-endpoint ACLs only name groups (``rule_processor``); the
addresses behind a name travel separately, on the group's own topic
(``messages.members_topic``), to every Felix that subscribed to it because
one of its endpoints has a rule naming the group:

* ``GROUPMEMBERS``: the whole membership (every address of every member,
  IPv4 and IPv6), with the group's current sequence number;
* ``MEMBERSUPDATE``: the addresses added and removed since the previous
  number, with the next one.

A join into a group of any size is then one small MEMBERSUPDATE on one
topic (delivered once to each subscribed host) plus the joiner's own
ACLUPDATE.

Sequence numbers count per group from 1 within one *epoch*, a random id
this ACL manager process picks at start.  A Felix holding ``seq`` n of an
epoch applies exactly n + 1 of the same epoch; anything else that is newer
(a gap, or another epoch: the ACL manager restarted) makes it ask for the
whole group again (GETGROUPMEMBERS), keeping the members it had meanwhile.

A group is tracked from the first time it has members or some rule names
it; a named group with no members is published as an empty GROUPMEMBERS so
that Felix knows it is empty rather than unknown.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from calico.common import messages
from calico.acl_manager.network_store import GroupSpec


def new_epoch() -> str:
    return secrets.token_hex(8)


def addresses_of(spec: GroupSpec | None) -> frozenset[str]:
    """Every address of every member (canonical, as the decoder left them)."""
    if spec is None:
        return frozenset()
    return frozenset(addr for addrs in spec.members.values() for addr in addrs)


@dataclass(frozen=True)
class Members:
    seq: int
    addrs: frozenset[str]


def _sorted_addrs(addrs: Iterable[str]) -> list[str]:
    return sorted(addrs, key=lambda a: (":" in a, a))


class Memberships:
    """Each tracked group's addresses and sequence number."""

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self.groups: dict[str, Members] = {}

    def snapshot(self, group: str) -> dict[str, Any] | None:
        """The GROUPMEMBERS of a tracked group, or None if it is not tracked."""
        held = self.groups.get(group)
        if held is None:
            return None
        return messages.make(messages.GROUPMEMBERS, group=group, epoch=self.epoch, seq=held.seq,
                             addrs=_sorted_addrs(held.addrs))

    def update(self, addrs: Mapping[str, frozenset[str]]) -> list[tuple[str, dict[str, Any]]]:
        """Take each named group's new addresses; the (group, message) pairs to
        publish, in group order: a GROUPMEMBERS for a group seen for the first
        time, a MEMBERSUPDATE for one whose addresses changed, nothing else."""
        out: list[tuple[str, dict[str, Any]]] = []
        for group in sorted(addrs):
            new = addrs[group]
            held = self.groups.get(group)
            if held is None:
                self.groups[group] = Members(1, new)
                out.append((group, self.snapshot(group)))  # type: ignore[arg-type]
                continue
            if held.addrs == new:
                continue
            self.groups[group] = Members(held.seq + 1, new)
            out.append((group, messages.make(messages.MEMBERSUPDATE, group=group, epoch=self.epoch,
                                             seq=held.seq + 1, added=_sorted_addrs(new - held.addrs),
                                             removed=_sorted_addrs(held.addrs - new))))
        return out

    def changes_for(self, batch: Mapping[str, GroupSpec | None], current: Mapping[str, GroupSpec],
                    referenced: Iterable[str]) -> dict[str, frozenset[str]]:
        """The addresses to ``update`` with after a batch of group changes:
        every group in the batch, and every named group not tracked yet."""
        wanted = {name: addresses_of(current.get(name)) for name in batch}
        for name in referenced:
            if name not in self.groups and name not in wanted:
                wanted[name] = addresses_of(current.get(name))
        return wanted
