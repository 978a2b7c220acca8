"""The plugin store as it was before it became incremental: a from-scratch
rebuild of the whole state from every file.  Kept here, unchanged, as the
oracle the incremental store is compared with (tests only).

``build_state(files, previous)`` is the reference for the priority rule;
``endpoint_changes`` and ``group_changes`` the reference diffs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from calico.common import messages
from calico.common.datafiles import Endpoint, GroupRules, Host, default_group_rules
from calico.common.kernel_names import interface_name
from calico.plugin.store import Group, ParsedFile


@dataclass
class DataState:
    hosts: dict[str, Host] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    host_sources: dict[str, str] = field(default_factory=dict)
    group_sections: dict[str, tuple[str, GroupRules]] = field(default_factory=dict)


EMPTY_STATE = DataState()


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
