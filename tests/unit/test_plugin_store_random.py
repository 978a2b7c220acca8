"""The incremental store against the from-scratch rebuild, on random histories.

Each history applies random batches of file writes, rewrites and removals
(endpoint files fighting over a few ids, addresses, interface names and
hosts; bad files; cluster files adding, moving and duplicating hosts and
group sections; placeholders) to a ``Store``, and after every batch compares
its state and its StateChange with ``build_state`` of every file, given the
previous state, and the diffs of the two states (tests/unit/plugin_store_oracle.py).
"""

import collections
import random

import pytest

import plugin_store_oracle as oracle
from calico.plugin.store import Store, parse_file

FILES = [f"{c}.txt" for c in "abcdefg"] + ["felix.txt", "more.txt"]
IDS = ["e1", "e2", "e3", "e4", "0123456789aX", "0123456789aY"]
ADDRS = ["192.168.1.1", "192.168.1.2", "192.168.1.3", "fd00::1", "FD00:0::1", "fd00::2"]
HOSTS = ["h1", "h2", "h3", "h1.example.com"]
GROUPS = ["web", "db", "ops"]
HOST_IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
RULES = ["inbound = 10.0.0.0/8\n", "inbound = group:web tcp 80\n", "outbound = 0.0.0.0/0 udp 53\n", "",
         "inbound = 0.0.0.0/0 tcp 99999\n"]


def endpoint_section(rng, name):
    addrs = rng.sample(ADDRS, rng.choice([1, 1, 1, 2]))
    lines = [f"[endpoint {name}]", f"id={rng.choice(IDS)}", f"ip={','.join(addrs)}",
             f"mac=aa:bb:cc:00:00:0{rng.randint(1, 3)}", f"host={rng.choice(HOSTS)}",
             f"group={','.join(rng.sample(GROUPS, rng.randint(1, 2)))}"]
    if rng.random() < 0.1:
        lines.append("state=disabled")
    if rng.random() < 0.05:
        del lines[3]  # no mac: a bad section
    return "\n".join(lines) + "\n"


def host_section(rng, index):
    name = rng.choice(["h1", "h2", "h3"])
    if rng.random() < 0.08:
        return f"[felix x{index}]\nip=IP1\nhost=HOST1\n"  # a placeholder: a note, not an error
    return f"[felix {name}{'.a' * index}]\nip={rng.choice(HOST_IPS)}\nhost={name}\n"


def random_text(rng, name):
    roll = rng.random()
    if roll < 0.05:
        return "not an ini file"
    sections = []
    if name in ("felix.txt", "more.txt") or roll < 0.1:
        sections += [host_section(rng, i) for i in range(rng.randint(0, 3))]
        sections += [f"[group {rng.choice(GROUPS)}]\n{rng.choice(RULES)}" for _ in range(rng.randint(0, 2))]
    sections += [endpoint_section(rng, f"s{i}") for i in range(rng.choice([0, 1, 1, 1, 2, 3]))]
    # Section names are unique within a file (a duplicate is an INI error).
    return "\n".join(dict.fromkeys(sections))


def oracle_groups(groups):
    return {name: (dict(g.members), g.rules) for name, g in groups.items()}


def compare(step, store, change, before, after):
    state = store.state
    assert state.hosts == after.hosts, step
    assert state.host_sources == after.host_sources, step
    assert state.group_sections == after.group_sections, step
    assert state.endpoints == after.endpoints, step
    assert oracle_groups(state.groups) == oracle_groups(after.groups), step
    assert state.errors == collections.Counter(after.errors), step
    assert state.notes == collections.Counter(after.notes), step
    assert {h: [e.endpoint_id for e in state.endpoints_on(h)] for h in state.hosts} == {
        h: sorted(e.endpoint_id for e in after.endpoints.values() if e.host == h) for h in after.hosts}, step
    assert [(c.host, c.msg_type, c.endpoint) for c in change.endpoints] == [
        (c.host, c.msg_type, c.endpoint) for c in oracle.endpoint_changes(before, after)], step
    assert [(g.name, dict(g.members), g.rules) for g in change.groups] == [
        (g.name, dict(g.members), g.rules) for g in oracle.group_changes(before, after)], step
    assert change.hosts_changed == (before.hosts != after.hosts), step
    new_lines = set(after.errors) | set(after.notes)
    old_lines = set(before.errors) | set(before.notes)
    assert sorted(change.new_errors + change.new_notes) == sorted(new_lines - old_lines), step


@pytest.mark.parametrize("seed", range(150))
def test_random_histories_match_a_rebuild_after_every_batch(seed):
    rng = random.Random(seed)
    store = Store()
    files: dict[str, str] = {}
    previous = oracle.EMPTY_STATE
    history = []
    for step in range(40):
        # Most histories start with two hosts, so that endpoints get placed.
        batch = {"felix.txt": "[felix h1]\nip=10.0.0.1\n\n[felix h2]\nip=10.0.0.2\n"} if step == 0 and seed % 4 else {}
        for _ in range(rng.choice([1, 1, 1, 2, 3, 6])):
            name = rng.choice(FILES)
            roll = rng.random()
            if name in files and roll < 0.25:
                batch[name] = None
            elif name in files and roll < 0.35:
                batch[name] = files[name]  # rewritten unchanged
            else:
                batch[name] = random_text(rng, name)
        history.append(batch)
        for name, text in batch.items():
            if text is None:
                files.pop(name, None)
            else:
                files[name] = text
        change = store.apply({name: None if text is None else parse_file(name, text) for name, text in batch.items()})
        parsed = [parse_file(name, text) for name, text in files.items()]
        decided = oracle.build_state(parsed, previous)
        # The rebuild names a loser's first conflict with the claimants
        # decided before it; deciding once more (nothing changed) names the
        # first conflict with the holders as they are, which the store does
        # at once.  Who holds what is the same.
        expected = oracle.build_state(parsed, decided)
        assert (expected.hosts, expected.endpoints, expected.group_sections) == (
            decided.hosts, decided.endpoints, decided.group_sections)
        compare((seed, step, history), store, change, previous, expected)
        previous = expected
