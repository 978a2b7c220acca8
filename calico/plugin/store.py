"""The data directory as a model: what the files say, checked across files.

See docs/architecture.md, "The data directory".

Pure code, no I/O.  ``parse_file`` turns one file's text into a
``ParsedFile``.  A ``Store`` holds every file's parse and the ``DataState``
they describe (valid hosts, endpoints, groups, plus one line per thing
skipped); ``Store.apply`` takes a batch of changed files and returns a
``StateChange``: exactly what the endpoint and network APIs must send.  The
shell around it (watcher, APIs) only reads files and moves bytes.

Cross-file checks settle conflicts deterministically: whoever held a
resource first keeps it.  Every section that wants something is a claimant
of resources, checked in a fixed order: a ``[felix]`` host its name and
address; a ``[group]`` section its group's name; an endpoint its id, (its
host must exist,) its addresses and its interface name.  When deciding, the
store prefers claimants that are unchanged since the previous state, then
ones that changed but come from the same file as the previous holder of
their id, then new ones in sorted (file name, position) order; a claimant
that finds a resource taken is skipped, and reported once with the first of
its checks that fails against the current holders.  So a newly
written file can never steal an address, an endpoint id or an interface
name from a running endpoint, a fresh start picks the same winners as a
sorted listing of the directory, and when a holder goes away the first
skipped claimant in that order gets its resources.

A batch is decided incrementally, with the same outcome as deciding every
claimant again (the tests keep the old from-scratch rebuild as the oracle):
every unchanged holder keeps what it holds, so only the batch's new
claimants, the claimants of a resource let go (its holder's file changed or
went, or its host vanished) and those needing a host that appeared or
vanished can win or lose; the reasons of losers are restated only where a
holder changed.  One changed endpoint file costs the claimants of its own
resources, not the directory.

A ``[felix]`` section that still holds the seed's IP1/HOST1 placeholders is
not an error but "not configured": it is left out with a note, so the
shipped felix.txt can sit in the directory before the operator edits it.
"""

from __future__ import annotations

import collections
import configparser
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping

from calico.common import messages
from calico.common.cluster_env import PLACEHOLDER_RE
from calico.common.datafiles import DataFileError, Endpoint, FileContents, GroupRules, Host, default_group_rules, parse_data_text
from calico.common.kernel_names import interface_name


@dataclass(frozen=True)
class ParsedFile:
    """One file's own contents; ``contents`` is None when none of it is usable."""

    source: str
    contents: FileContents | None
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # sections skipped on purpose (placeholders)


@dataclass(frozen=True)
class Group:
    """A security group as published: members with their addresses, rules.

    In a store's state ``members`` is the store's live mapping, changed in
    place by later batches: read it when handed the group, do not keep it."""

    name: str
    members: Mapping[str, tuple[str, ...]]
    rules: GroupRules

    def message(self) -> dict:
        """The GROUPUPDATE announcing this group (no members: deleted)."""
        return messages.make(
            messages.GROUPUPDATE,
            group=self.name,
            members={eid: list(addrs) for eid, addrs in sorted(self.members.items())},
            rules=self.rules.to_wire(),
        )


@dataclass
class DataState:
    """The valid cluster the files describe, and why anything was left out.

    ``errors`` and ``notes`` count each line (a line can occur twice, e.g.
    two sections of one file naming the same host)."""

    hosts: dict[str, Host] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    notes: collections.Counter[str] = field(default_factory=collections.Counter)
    # Where each accepted host and group section came from.
    host_sources: dict[str, str] = field(default_factory=dict)
    group_sections: dict[str, tuple[str, GroupRules]] = field(default_factory=dict)
    by_host: dict[str, dict[str, Endpoint]] = field(default_factory=dict)

    def endpoints_on(self, host: str) -> list[Endpoint]:
        return sorted(self.by_host.get(host, {}).values(), key=lambda ep: ep.endpoint_id)

    @property
    def problems(self) -> int:
        return self.errors.total() + self.notes.total()


@dataclass(frozen=True)
class EndpointChange:
    host: str
    msg_type: str  # ENDPOINTCREATED, ENDPOINTUPDATED or ENDPOINTDESTROYED
    endpoint: Endpoint


@dataclass(frozen=True)
class StateChange:
    """What one batch changed, in the order the APIs send it.

    ``endpoints``: what each Felix must hear: destroys first, then updates,
    then creates (each by endpoint id), so an address moving between
    endpoints is released before it is reused; an endpoint moving host is
    destroyed on the old host and created on the new; a change of groups
    only is not Felix's business.  ``groups``: every group whose members or
    rules changed, by name; a group left with no members comes out once with
    empty members (deleted).  ``new_notes`` / ``new_errors``: lines that
    were not there before the batch (to be logged once)."""

    endpoints: list[EndpointChange]
    groups: list[Group]
    hosts_changed: bool
    new_notes: list[str]
    new_errors: list[str]
    initial: bool = False


# --- one file ---------------------------------------------------------------

def _placeholder_sections(text: str) -> dict[str, str]:
    """``[felix ...]`` sections whose ip or host still hold a seed placeholder."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return {}  # the real parse reports it
    found = {}
    for name in parser.sections():
        kind, _, host_name = name.strip().partition(" ")
        if kind != "felix":
            continue
        section = parser[name]
        values = [section.get("ip", ""), section.get("host", "") or host_name.strip()]
        held = [v.strip() for v in values if PLACEHOLDER_RE.fullmatch(v.strip())]
        if held:
            found[name] = "/".join(held)
    return found


def parse_file(source: str, text: str) -> ParsedFile:
    """Parse one file's text; never raises for bad content."""
    try:
        contents = parse_data_text(text, source)
    except DataFileError as exc:
        return ParsedFile(source, None, (str(exc),))
    except ValueError as exc:
        # A fault the section checks let through (int('²') after a
        # str.isdigit() check, say) must not take the plugin down.
        reason = " ".join(str(exc).split())
        return ParsedFile(source, None, (f"{source}: cannot be parsed ({reason}); skipped",))
    placeholders = _placeholder_sections(text) if "felix" in text else {}
    notes = []
    if placeholders:
        for section, held in placeholders.items():
            notes.append(f"{source}: [{section}]: not configured (still holds the placeholder {held}); "
                         "host skipped until the file is edited")
        prefixes = tuple(f"{source}: [{section}]:" for section in placeholders)
        contents.errors = [e for e in contents.errors if not e.startswith(prefixes)]
        # A placeholder host name with a real address parses; drop it too.
        contents.hosts = [h for h in contents.hosts if not PLACEHOLDER_RE.fullmatch(h.name)]
    return ParsedFile(source, contents, tuple(contents.errors), tuple(notes))


def unreadable_file(source: str, reason: str) -> ParsedFile:
    return ParsedFile(source, None, (f"{source}: {reason}",))


# --- claims -------------------------------------------------------------------

Resource = tuple[str, Hashable]  # (kind, key)


@dataclass(frozen=True)
class Need:
    """A condition a claimant needs, checked in its place among the resources."""

    key: Hashable


@dataclass(eq=False)  # compared and hashed by identity: one per section per parse
class Claimant:
    source: str
    index: int
    item: Any  # Host, GroupRules or Endpoint
    checks: tuple[Resource | Need, ...]  # checks[0] is the identity: (kind, id)

    @property
    def ident(self) -> Resource:
        return self.checks[0]

    @property
    def resources(self) -> Iterable[Resource]:
        return (c for c in self.checks if not isinstance(c, Need))


ConflictText = Callable[[Claimant, "Resource | Need", "Claimant | None"], str]


class Arbiter:
    """Claimants of exclusive resources and who holds what, decided
    incrementally by the priority rule (module docstring)."""

    def __init__(self, conflict_text: ConflictText, need_met: Callable[[Hashable], bool] = lambda key: True):
        self.conflict_text = conflict_text
        self.need_met = need_met
        self.holder: dict[Resource, Claimant] = {}
        self.skipped: dict[Claimant, str] = {}  # claimant -> its error line
        self._claimants: dict[Resource, set[Claimant]] = {}
        self._needing: dict[Hashable, set[Claimant]] = {}

    def update(self, removed: Iterable[Claimant], added: Iterable[Claimant], needs_changed: Iterable[Hashable] = ()
               ) -> tuple[dict[Resource, tuple[Claimant | None, Claimant | None]], list[str], list[str]]:
        """Take claimants away and add new ones (a batch); decide again what
        may have changed.  Returns {identity: (previous holder, holder)} for
        every identity whose holder may differ, and the error lines removed
        and added."""
        before: dict[Resource, Claimant | None] = {}
        released: list[Resource] = []
        undecided: set[Claimant] = set()
        lines_gone: list[str] = []
        lines_new: list[str] = []

        def release(claimant: Claimant) -> None:
            before.setdefault(claimant.ident, claimant)
            for resource in claimant.resources:
                if self.holder.get(resource) is claimant:
                    del self.holder[resource]
                    released.append(resource)

        for claimant in removed:
            self._forget(claimant)
            if self.holder.get(claimant.ident) is claimant:
                release(claimant)
            line = self.skipped.pop(claimant, None)
            if line is not None:
                lines_gone.append(line)

        def previous(ident: Resource) -> Claimant | None:
            return before[ident] if ident in before else self.holder.get(ident)

        # Unchanged claimants keep what they held: in a full decision they
        # come first and never conflict with each other.
        for claimant in sorted(added, key=lambda c: (c.source, c.index)):
            self._remember(claimant)
            was = previous(claimant.ident)
            if (was is not None and was.source == claimant.source and was.item == claimant.item
                    and self._conflict(claimant) is None):
                self._take(claimant)
            else:
                undecided.add(claimant)

        for key in needs_changed:
            for claimant in self._needing.get(key, ()):
                if self.holder.get(claimant.ident) is not claimant:
                    undecided.add(claimant)
                elif not self.need_met(key):
                    release(claimant)
                    undecided.add(claimant)

        # Every other holder keeps what it holds, so only a claimant of a
        # resource let go can win where it lost.
        changed = {r for r in released if r not in self.holder}
        for resource in changed:
            undecided.update(c for c in self._claimants.get(resource, ()) if self.holder.get(c.ident) is not c)

        def priority(claimant: Claimant) -> tuple:
            was = previous(claimant.ident)
            same_source = was is not None and was.source == claimant.source
            unchanged = same_source and was.item == claimant.item
            return (not unchanged, not same_source, claimant.source, claimant.index)

        losers = set()
        for claimant in sorted(undecided, key=priority):
            if self._conflict(claimant) is None:
                before.setdefault(claimant.ident, None)
                self._take(claimant)
                changed.update(claimant.resources)
                line = self.skipped.pop(claimant, None)
                if line is not None:
                    lines_gone.append(line)
            else:
                losers.add(claimant)

        # A loser's reason names its first check that fails against the
        # holders as they now are, so it changes only when one of those does.
        for resource in changed:
            losers.update(c for c in self._claimants.get(resource, ()) if self.holder.get(c.ident) is not c)
        for claimant in losers:
            line = self.skipped.pop(claimant, None)
            if line is not None:
                lines_gone.append(line)
            line = self._conflict(claimant)
            assert line is not None, "a loser conflicts with a holder that stays"
            self.skipped[claimant] = line
            lines_new.append(line)

        changes = {ident: (was, self.holder.get(ident)) for ident, was in before.items()
                   if was is not self.holder.get(ident)}
        return changes, lines_gone, lines_new

    def _conflict(self, claimant: Claimant) -> str | None:
        for check in claimant.checks:
            if isinstance(check, Need):
                if not self.need_met(check.key):
                    return self.conflict_text(claimant, check, None)
            elif check in self.holder:
                return self.conflict_text(claimant, check, self.holder[check])
        return None

    def _take(self, claimant: Claimant) -> None:
        for resource in claimant.resources:
            self.holder[resource] = claimant

    def _remember(self, claimant: Claimant) -> None:
        for check in claimant.checks:
            if isinstance(check, Need):
                self._needing.setdefault(check.key, set()).add(claimant)
            else:
                self._claimants.setdefault(check, set()).add(claimant)

    def _forget(self, claimant: Claimant) -> None:
        for check in claimant.checks:
            index, key = (self._needing, check.key) if isinstance(check, Need) else (self._claimants, check)
            claimants = index.get(key)
            if claimants is not None:
                claimants.discard(claimant)
                if not claimants:
                    del index[key]


def _host_conflict(claimant: Claimant, check: Resource | Need, holder: Claimant | None) -> str:
    host: Host = claimant.item
    if check[0] == "host":
        reason = f"host {host.name} is already defined in {holder.source}"
    else:
        reason = f"address {host.ip} is already used by host {holder.item.name}"
    return f"{claimant.source}: [felix {host.name}]: {reason}; skipped"


def _section_conflict(claimant: Claimant, check: Resource | Need, holder: Claimant | None) -> str:
    name = claimant.item.name
    return f"{claimant.source}: [group {name}]: group {name} is already defined in {holder.source}; skipped"


def _endpoint_conflict(claimant: Claimant, check: Resource | Need, holder: Claimant | None) -> str:
    ep: Endpoint = claimant.item
    if isinstance(check, Need):
        reason = f"host {ep.host} is not a [felix] host of the cluster file"
    elif check[0] == "id":
        reason = f"endpoint id {ep.endpoint_id} is already used in {holder.source}"
    elif check[0] == "addr":
        reason = f"address {check[1]} is already used by endpoint {holder.item.endpoint_id} in {holder.source}"
    else:
        reason = (f"interface {check[1][1]} on host {ep.host} would also belong to endpoint "
                  f"{holder.item.endpoint_id} (ids share their first 11 characters)")
    return f"{claimant.source}: [endpoint {ep.name}]: {reason}; skipped"


def _claimants(parsed: ParsedFile | None) -> tuple[list[Claimant], list[Claimant], list[Claimant]]:
    if parsed is None or parsed.contents is None:
        return [], [], []
    contents, source = parsed.contents, parsed.source
    hosts = [Claimant(source, i, h, (("host", h.name), ("hostip", h.ip))) for i, h in enumerate(contents.hosts)]
    sections = [Claimant(source, i, g, (("group", g.name),)) for i, g in enumerate(contents.groups)]
    endpoints = [Claimant(source, i, ep, (("id", ep.endpoint_id), Need(ep.host),
                                          *(("addr", a) for a in ep.addrs),
                                          ("iface", (ep.host, interface_name(ep.endpoint_id)))))
                 for i, ep in enumerate(contents.endpoints)]
    return hosts, sections, endpoints


# --- every file -------------------------------------------------------------

class _Lines:
    """A multiset of log lines that tells which lines a batch made appear."""

    def __init__(self, counter: collections.Counter[str]):
        self.counter = counter
        self._before: dict[str, int] = {}

    def add(self, lines: Iterable[str], delta: int) -> None:
        for line in lines:
            self._before.setdefault(line, self.counter[line])
            self.counter[line] += delta
            if self.counter[line] <= 0:
                del self.counter[line]

    def appeared(self) -> list[str]:
        new = [line for line, count in self._before.items() if count == 0 and line in self.counter]
        self._before = {}
        return new


class Store:
    """Every file's parse and the DataState they describe, kept current one
    batch at a time."""

    def __init__(self) -> None:
        self.state = DataState()
        self.files: dict[str, ParsedFile] = {}
        self._file_claimants: dict[str, tuple[list[Claimant], list[Claimant], list[Claimant]]] = {}
        self._hosts = Arbiter(_host_conflict)
        self._sections = Arbiter(_section_conflict)
        self._endpoints = Arbiter(_endpoint_conflict, need_met=lambda host: host in self.state.hosts)
        self._errors = _Lines(self.state.errors)
        self._notes = _Lines(self.state.notes)
        self._applied = False

    def apply(self, batch: Mapping[str, ParsedFile | None]) -> StateChange:
        """Files changed (name -> new parse, None when gone), all at once."""
        removed: tuple[list[Claimant], list[Claimant], list[Claimant]] = ([], [], [])
        added: tuple[list[Claimant], list[Claimant], list[Claimant]] = ([], [], [])
        for name, parsed in batch.items():
            old = self.files.pop(name, None)
            if old is not None:
                self._errors.add(old.errors, -1)
                self._notes.add(old.notes, -1)
            for kept, gone in zip(removed, self._file_claimants.pop(name, ([], [], []))):
                kept.extend(gone)
            if parsed is not None:
                self.files[name] = parsed
                self._errors.add(parsed.errors, +1)
                self._notes.add(parsed.notes, +1)
                claimants = _claimants(parsed)
                self._file_claimants[name] = claimants
                for kept, new in zip(added, claimants):
                    kept.extend(new)

        hosts_changed, needs_changed = self._apply_hosts(removed[0], added[0])
        rules_changed = self._apply_sections(removed[1], added[1])
        changes, gone, new = self._endpoints.update(removed[2], added[2], needs_changed)
        self._errors.add(gone, -1)
        self._errors.add(new, +1)

        group_tracker = _GroupTracker(self.state)
        for name in rules_changed:
            group_tracker.touch(name)
        endpoint_changes = []
        for _, (was, now) in sorted(changes.items(), key=lambda item: item[0]):
            before = was.item if was is not None else None
            after = now.item if now is not None else None
            if before == after:
                continue
            self._move_endpoint(before, after, group_tracker)
            endpoint_changes.append((before, after))

        initial = not self._applied
        self._applied = True
        return StateChange(
            endpoints=_order_endpoint_changes(endpoint_changes),
            groups=group_tracker.finish(self._rules_for),
            hosts_changed=hosts_changed,
            new_notes=self._notes.appeared(),
            new_errors=self._errors.appeared(),
            initial=initial,
        )

    def _apply_hosts(self, removed: list[Claimant], added: list[Claimant]) -> tuple[bool, set[str]]:
        if not removed and not added:
            return False, set()
        changes, gone, new = self._hosts.update(removed, added)
        self._errors.add(gone, -1)
        self._errors.add(new, +1)
        hosts, sources = self.state.hosts, self.state.host_sources
        changed, existence = False, set()
        for (_, name), (was, now) in changes.items():
            if now is None:
                hosts.pop(name, None)
                sources.pop(name, None)
            else:
                hosts[name] = now.item
                sources[name] = now.source
            changed |= was is None or now is None or was.item != now.item
            if (was is None) != (now is None):
                existence.add(name)
        return changed, existence

    def _apply_sections(self, removed: list[Claimant], added: list[Claimant]) -> list[str]:
        if not removed and not added:
            return []
        changes, gone, new = self._sections.update(removed, added)
        self._errors.add(gone, -1)
        self._errors.add(new, +1)
        changed = []
        for (_, name), (was, now) in changes.items():
            if now is None:
                del self.state.group_sections[name]
            else:
                self.state.group_sections[name] = (now.source, now.item)
            changed.append(name)
        return changed

    def _rules_for(self, group: str) -> GroupRules:
        section = self.state.group_sections.get(group)
        return section[1] if section else default_group_rules(group)

    def _move_endpoint(self, before: Endpoint | None, after: Endpoint | None, groups: "_GroupTracker") -> None:
        state = self.state
        if before is not None:
            del state.endpoints[before.endpoint_id]
            on_host = state.by_host[before.host]
            del on_host[before.endpoint_id]
            if not on_host:
                del state.by_host[before.host]
            for group in before.groups:
                groups.set_member(group, before.endpoint_id, None)
        if after is not None:
            state.endpoints[after.endpoint_id] = after
            state.by_host.setdefault(after.host, {})[after.endpoint_id] = after
            for group in after.groups:
                groups.set_member(group, after.endpoint_id, after.addrs)


class _GroupTracker:
    """The groups one batch touches: what they were, to say which changed."""

    def __init__(self, state: DataState):
        self.state = state
        self.before: dict[str, Group | None] = {}
        self.members_before: dict[str, dict[str, tuple[str, ...] | None]] = {}

    def touch(self, name: str) -> None:
        if name not in self.before:
            self.before[name] = self.state.groups.get(name)
            self.members_before[name] = {}

    def set_member(self, name: str, endpoint_id: str, addrs: tuple[str, ...] | None) -> None:
        self.touch(name)
        group = self.state.groups.get(name)
        members = group.members if group is not None else {}
        self.members_before[name].setdefault(endpoint_id, members.get(endpoint_id))
        if addrs is None:
            members.pop(endpoint_id, None)
        else:
            members[endpoint_id] = addrs
        if group is None:
            # Rules are settled in finish(); a placeholder holds the members.
            self.state.groups[name] = Group(name, members, default_group_rules(name))

    def finish(self, rules_for: Callable[[str], GroupRules]) -> list[Group]:
        changed = []
        for name in sorted(self.before):
            was = self.before[name]
            group = self.state.groups.get(name)
            if group is None or not group.members:
                if group is not None:
                    del self.state.groups[name]
                if was is not None:
                    changed.append(Group(name, {}, was.rules))
                continue
            rules = rules_for(name)
            if group.rules != rules:
                group = self.state.groups[name] = Group(name, group.members, rules)
            members_changed = any(group.members.get(eid) != addrs
                                  for eid, addrs in self.members_before[name].items())
            if was is None or was.rules != rules or members_changed:
                changed.append(group)
        return changed


def _order_endpoint_changes(pairs: list[tuple[Endpoint | None, Endpoint | None]]) -> list[EndpointChange]:
    destroyed, updated, created = [], [], []
    for before, after in pairs:
        if before is not None and (after is None or after.host != before.host):
            destroyed.append(EndpointChange(before.host, messages.ENDPOINTDESTROYED, before))
        if after is not None and (before is None or after.host != before.host):
            created.append(EndpointChange(after.host, messages.ENDPOINTCREATED, after))
        elif after is not None and before is not None and not after.same_dataplane(before):
            updated.append(EndpointChange(after.host, messages.ENDPOINTUPDATED, after))
    return destroyed + updated + created


def endpoint_message(change_type: str, endpoint: Endpoint, resync_id: str | None = None) -> dict:
    """The wire message for one endpoint change."""
    if change_type == messages.ENDPOINTDESTROYED:
        return messages.make(messages.ENDPOINTDESTROYED, endpoint_id=endpoint.endpoint_id)
    return endpoint.message(change_type, resync_id)
