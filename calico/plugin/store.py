"""The data directory as a model: what the files say, checked across files.

Pure code, no I/O.  ``parse_file`` turns one file's text into a
``ParsedFile``; ``build_state`` turns every parsed file into a ``DataState``
(valid hosts, endpoints, groups, plus one error line per thing skipped);
``endpoint_changes`` and ``group_changes`` diff two states into what the
endpoint and network APIs must send.  The shell around it (watcher, APIs)
only reads files and moves bytes.

Cross-file checks settle conflicts deterministically: whoever held a
resource first keeps it.  When building a new state the store prefers, in
order, endpoints (and hosts, and group sections) that are unchanged since the
previous state, then ones that changed but come from the same file, then new
ones in sorted file name order.  So a newly written file can never steal an
address, an endpoint id or an interface name from a running endpoint, and a
fresh start picks the same winners as a sorted listing of the directory.

A ``[felix]`` section that still holds the seed's IP1/HOST1 placeholders is
not an error but "not configured": it is left out with a note, so the
shipped felix.txt can sit in the directory before the operator edits it.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from calico.common import messages
from calico.common.config import PLACEHOLDER_RE
from calico.common.datafiles import DataFileError, Endpoint, FileContents, GroupRules, Host, default_group_rules, parse_data_text
from calico.common.validation import interface_name


@dataclass(frozen=True)
class ParsedFile:
    """One file's own contents; ``contents`` is None when none of it is usable."""

    source: str
    contents: FileContents | None
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # sections skipped on purpose (placeholders)


@dataclass(frozen=True)
class Group:
    """A security group as published: members with their addresses, rules."""

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
    hosts: dict[str, Host] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Where each accepted host and group section came from (for priority).
    host_sources: dict[str, str] = field(default_factory=dict)
    group_sections: dict[str, tuple[str, GroupRules]] = field(default_factory=dict)

    def endpoints_on(self, host: str) -> list[Endpoint]:
        return sorted((ep for ep in self.endpoints.values() if ep.host == host), key=lambda ep: ep.endpoint_id)


EMPTY_STATE = DataState()


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


# --- every file -------------------------------------------------------------

def _priority(unchanged: bool, same_source: bool, source: str, index: int) -> tuple:
    return (not unchanged, not same_source, source, index)


def _accept_hosts(files: list[ParsedFile], previous: DataState, state: DataState) -> None:
    candidates = []
    for parsed in files:
        for index, host in enumerate(parsed.contents.hosts if parsed.contents else ()):
            old_source = previous.host_sources.get(host.name)
            same_source = old_source == parsed.source
            unchanged = same_source and previous.hosts.get(host.name) == host
            candidates.append((_priority(unchanged, same_source, parsed.source, index), parsed.source, host))
    candidates.sort(key=lambda c: c[0])
    ip_owner: dict[str, str] = {}
    for _, source, host in candidates:
        if host.name in state.hosts:
            state.errors.append(f"{source}: [felix {host.name}]: host {host.name} is already defined "
                                f"in {state.host_sources[host.name]}; skipped")
        elif host.ip in ip_owner:
            state.errors.append(f"{source}: [felix {host.name}]: address {host.ip} is already used by "
                                f"host {ip_owner[host.ip]}; skipped")
        else:
            state.hosts[host.name] = host
            state.host_sources[host.name] = source
            ip_owner[host.ip] = host.name


def _accept_group_sections(files: list[ParsedFile], previous: DataState, state: DataState) -> None:
    candidates = []
    for parsed in files:
        for index, rules in enumerate(parsed.contents.groups if parsed.contents else ()):
            old = previous.group_sections.get(rules.name)
            same_source = old is not None and old[0] == parsed.source
            unchanged = same_source and old[1] == rules
            candidates.append((_priority(unchanged, same_source, parsed.source, index), parsed.source, rules))
    candidates.sort(key=lambda c: c[0])
    for _, source, rules in candidates:
        if rules.name in state.group_sections:
            state.errors.append(f"{source}: [group {rules.name}]: group {rules.name} is already defined "
                                f"in {state.group_sections[rules.name][0]}; skipped")
        else:
            state.group_sections[rules.name] = (source, rules)


def _endpoint_conflict(ep: Endpoint, state: DataState, ip_owner: dict[str, str],
                       iface_owner: dict[tuple[str, str], str]) -> str | None:
    if ep.endpoint_id in state.endpoints:
        return f"endpoint id {ep.endpoint_id} is already used in {state.endpoints[ep.endpoint_id].source}"
    if ep.host not in state.hosts:
        return f"host {ep.host} is not a [felix] host of the cluster file"
    for addr in ep.addrs:
        if addr in ip_owner:
            owner = state.endpoints[ip_owner[addr]]
            return f"address {addr} is already used by endpoint {owner.endpoint_id} in {owner.source}"
    iface = (ep.host, interface_name(ep.endpoint_id))
    if iface in iface_owner:
        return (f"interface {iface[1]} on host {ep.host} would also belong to endpoint {iface_owner[iface]} "
                "(ids share their first 11 characters)")
    return None


def _accept_endpoints(files: list[ParsedFile], previous: DataState, state: DataState) -> None:
    candidates = []
    for parsed in files:
        for index, ep in enumerate(parsed.contents.endpoints if parsed.contents else ()):
            old = previous.endpoints.get(ep.endpoint_id)
            same_source = old is not None and old.source == ep.source
            candidates.append((_priority(old == ep, same_source, parsed.source, index), ep))
    candidates.sort(key=lambda c: c[0])
    ip_owner: dict[str, str] = {}
    iface_owner: dict[tuple[str, str], str] = {}
    for _, ep in candidates:
        conflict = _endpoint_conflict(ep, state, ip_owner, iface_owner)
        if conflict is not None:
            state.errors.append(f"{ep.source}: [endpoint {ep.name}]: {conflict}; skipped")
            continue
        state.endpoints[ep.endpoint_id] = ep
        for addr in ep.addrs:
            ip_owner[addr] = ep.endpoint_id
        iface_owner[(ep.host, interface_name(ep.endpoint_id))] = ep.endpoint_id


def _build_groups(state: DataState) -> None:
    members: dict[str, dict[str, tuple[str, ...]]] = {}
    for ep in state.endpoints.values():
        for group in ep.groups:
            members.setdefault(group, {})[ep.endpoint_id] = ep.addrs
    for name in sorted(members):
        section = state.group_sections.get(name)
        rules = section[1] if section else default_group_rules(name)
        state.groups[name] = Group(name, dict(sorted(members[name].items())), rules)


def build_state(files: Iterable[ParsedFile], previous: DataState = EMPTY_STATE) -> DataState:
    """The valid cluster the files describe, and why anything was left out."""
    ordered = sorted(files, key=lambda f: f.source)
    state = DataState()
    for parsed in ordered:
        state.errors.extend(parsed.errors)
        state.notes.extend(parsed.notes)
    _accept_hosts(ordered, previous, state)
    _accept_group_sections(ordered, previous, state)
    _accept_endpoints(ordered, previous, state)
    _build_groups(state)
    return state


# --- diffs ------------------------------------------------------------------

@dataclass(frozen=True)
class EndpointChange:
    host: str
    msg_type: str  # ENDPOINTCREATED, ENDPOINTUPDATED or ENDPOINTDESTROYED
    endpoint: Endpoint


def endpoint_changes(old: DataState, new: DataState) -> list[EndpointChange]:
    """What each Felix must hear: destroys first, then updates, then creates,
    so an address moving between endpoints is released before it is reused.
    An endpoint moving host is destroyed on the old host, created on the new.
    Group membership is not Felix's business (GROUPUPDATE carries it)."""
    destroyed, updated, created = [], [], []
    for endpoint_id in sorted(old.endpoints.keys() | new.endpoints.keys()):
        before = old.endpoints.get(endpoint_id)
        after = new.endpoints.get(endpoint_id)
        if before is not None and (after is None or after.host != before.host):
            destroyed.append(EndpointChange(before.host, messages.ENDPOINTDESTROYED, before))
        if after is not None and (before is None or after.host != before.host):
            created.append(EndpointChange(after.host, messages.ENDPOINTCREATED, after))
        elif after is not None and before is not None and not after.same_dataplane(before):
            updated.append(EndpointChange(after.host, messages.ENDPOINTUPDATED, after))
    return destroyed + updated + created


def group_changes(old: DataState, new: DataState) -> list[Group]:
    """Every group whose members or rules changed; a group left with no
    members comes out once with empty members (deleted)."""
    changed = []
    for name in sorted(old.groups.keys() | new.groups.keys()):
        before = old.groups.get(name)
        after = new.groups.get(name)
        if after is None:
            changed.append(Group(name, {}, before.rules))
        elif after != before:
            changed.append(after)
    return changed


def endpoint_message(change_type: str, endpoint: Endpoint, resync_id: str | None = None) -> dict:
    """The wire message for one endpoint change."""
    if change_type == messages.ENDPOINTDESTROYED:
        return messages.make(messages.ENDPOINTDESTROYED, endpoint_id=endpoint.endpoint_id)
    return endpoint.message(change_type, resync_id)
