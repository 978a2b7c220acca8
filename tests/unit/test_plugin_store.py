"""The plugin's pure store: per-file faults, cross-file checks, diffs."""

import pytest

from calico.common import messages
from calico.common.datafiles import default_group_rules
from calico.plugin import store
from calico.plugin.store import build_state, endpoint_changes, group_changes, parse_file

CLUSTER = "[felix h1]\nip=10.0.0.1\nhost=h1\n\n[felix h2]\nip=10.0.0.2\nhost=h2.example.com\n"


def ep_text(eid, ip, host="h1", mac="aa:bb:cc:00:00:01", group="web", name=None, extra=""):
    return (f"[endpoint {name or eid}]\nid={eid}\nip={ip}\nmac={mac}\nhost={host}\ngroup={group}\n{extra}")


def state_of(files, previous=store.EMPTY_STATE):
    """files: {name: text}; felix.txt is added unless given."""
    files = dict(files)
    files.setdefault("felix.txt", CLUSTER)
    return build_state([parse_file(name, text) for name, text in files.items()], previous)


def only_error(state):
    assert len(state.errors) == 1, state.errors
    return state.errors[0]


# --- one file's faults --------------------------------------------------------

@pytest.mark.parametrize("text, reason", [
    ("no sections here", "not a valid INI file"),
    ("[endpoint e]\nid=e\nid=f\n", "not a valid INI file"),
    ("[endpoint e]\nip=192.168.1.1\nmac=aa:bb:cc:00:00:01\nhost=h1\ngroup=web\n", "missing 'id'"),
    ("[endpoint e]\nid=e\nmac=aa:bb:cc:00:00:01\nhost=h1\ngroup=web\n", "missing 'ip'"),
    ("[endpoint e]\nid=e\nip=192.168.1.1\nhost=h1\ngroup=web\n", "missing 'mac'"),
    ("[endpoint e]\nid=e\nip=192.168.1.1\nmac=aa:bb:cc:00:00:01\ngroup=web\n", "missing 'host'"),
    (ep_text("e", "192.168.1.300"), "bad IP address '192.168.1.300'"),
    (ep_text("e", "192.168.1.1/24"), "bad IP address"),
    (ep_text("e", "127.0.0.5"), "not a unicast host address"),
    (ep_text("e", "192.168.1.1", mac="aa:bb:cc:dd:ee"), "bad MAC address"),
    (ep_text("e", "192.168.1.1", mac="01:bb:cc:dd:ee:ff"), "multicast"),
    (ep_text("-e", "192.168.1.1"), "bad endpoint id"),
    (ep_text("e", "192.168.1.1", group="we b"), "bad group name"),
    (ep_text("e", "192.168.1.1,192.168.1.1"), "listed twice"),
    (ep_text("e", "192.168.1.1", extra="state=paused\n"), "state 'paused'"),
    ("[group web]\ninbound = 0.0.0.0/0 tcp 99999\n", "[group web]"),
    ("[group web]\ninbound = group:\n", "[group web]"),
    ("[bogus]\nx=1\n", "unknown section"),
])
def test_bad_file_content_is_one_error_naming_file_and_skipped(text, reason):
    state = state_of({"bad.txt": text, "good.txt": ep_text("good", "192.168.1.9", mac="aa:bb:cc:00:00:09")})
    error = only_error(state)
    assert error.startswith("bad.txt: ") and reason in error
    assert "\n" not in error
    assert list(state.endpoints) == ["good"]


def test_bad_section_does_not_spoil_the_rest_of_its_file():
    text = ep_text("ok", "192.168.1.1") + "\n" + ep_text("bad", "nope", name="bad")
    state = state_of({"two.txt": text})
    assert list(state.endpoints) == ["ok"]
    assert "two.txt: [endpoint bad]" in only_error(state)


def test_unknown_host_is_rejected_and_host_compared_up_to_first_dot():
    state = state_of({"a.txt": ep_text("a", "192.168.1.1", host="h2.other.domain"),
                      "b.txt": ep_text("b", "192.168.1.2", host="h3")})
    assert state.endpoints["a"].host == "h2"
    assert "b.txt: [endpoint b]: host h3 is not a [felix] host" in only_error(state)


# --- cross-file conflicts -----------------------------------------------------

def test_duplicate_ip_on_fresh_start_goes_to_the_first_file_in_sorted_order():
    state = state_of({"b.txt": ep_text("first", "192.168.1.1"),
                      "c.txt": ep_text("second", "192.168.1.2,192.168.1.1", mac="aa:bb:cc:00:00:02")})
    assert list(state.endpoints) == ["first"]
    assert only_error(state) == ("c.txt: [endpoint second]: address 192.168.1.1 is already used by "
                                 "endpoint first in b.txt; skipped")


def test_ipv6_duplicate_is_caught_in_any_spelling():
    state = state_of({"b.txt": ep_text("first", "fd00::1"),
                      "c.txt": ep_text("second", "FD00:0:0::1", mac="aa:bb:cc:00:00:02")})
    assert list(state.endpoints) == ["first"] and "fd00::1" in only_error(state)


def test_running_endpoint_keeps_its_ip_against_a_new_file_that_sorts_first():
    before = state_of({"m.txt": ep_text("running", "192.168.1.1")})
    after = state_of({"m.txt": ep_text("running", "192.168.1.1"),
                      "a.txt": ep_text("newcomer", "192.168.1.1", mac="aa:bb:cc:00:00:02")}, before)
    assert list(after.endpoints) == ["running"]
    assert only_error(after).startswith("a.txt: [endpoint newcomer]: address 192.168.1.1")


def test_unchanged_endpoint_beats_a_changed_one_for_an_address():
    before = state_of({"a.txt": ep_text("a", "192.168.1.1"),
                       "z.txt": ep_text("z", "192.168.1.2", mac="aa:bb:cc:00:00:02")})
    # a changes to take z's address; z did not change: z keeps it.
    after = state_of({"a.txt": ep_text("a", "192.168.1.2"),
                      "z.txt": ep_text("z", "192.168.1.2", mac="aa:bb:cc:00:00:02")}, before)
    assert list(after.endpoints) == ["z"]
    assert "a.txt: [endpoint a]" in only_error(after)


def test_address_freed_in_the_same_change_can_be_reused():
    before = state_of({"a.txt": ep_text("a", "192.168.1.1")})
    after = state_of({"b.txt": ep_text("b", "192.168.1.1", mac="aa:bb:cc:00:00:02")}, before)
    assert list(after.endpoints) == ["b"] and not after.errors


def test_duplicate_endpoint_id():
    state = state_of({"a.txt": ep_text("same", "192.168.1.1"),
                      "b.txt": ep_text("same", "192.168.1.2", mac="aa:bb:cc:00:00:02")})
    assert state.endpoints["same"].addrs == ("192.168.1.1",)
    assert only_error(state) == "b.txt: [endpoint same]: endpoint id same is already used in a.txt; skipped"


def test_interface_name_collision_only_on_the_same_host():
    same_prefix = {"a.txt": ep_text("0123456789abcdef", "192.168.1.1"),
                   "b.txt": ep_text("0123456789aXYZ", "192.168.1.2", mac="aa:bb:cc:00:00:02")}
    state = state_of(same_prefix)
    assert list(state.endpoints) == ["0123456789abcdef"]
    assert "interface tap0123456789a on host h1" in only_error(state)
    other_host = dict(same_prefix, **{"b.txt": ep_text("0123456789aXYZ", "192.168.1.2", host="h2",
                                                       mac="aa:bb:cc:00:00:02")})
    assert len(state_of(other_host).endpoints) == 2


def test_duplicate_host_and_host_address():
    state = state_of({"more.txt": "[felix h1]\nip=10.0.0.9\n\n[felix h3]\nip=10.0.0.2\n"})
    assert set(state.hosts) == {"h1", "h2"} and state.hosts["h1"].ip == "10.0.0.1"
    assert sorted(state.errors) == [
        "more.txt: [felix h1]: host h1 is already defined in felix.txt; skipped",
        "more.txt: [felix h3]: address 10.0.0.2 is already used by host h2; skipped",
    ]


def test_file_that_becomes_valid_is_picked_up():
    before = state_of({"a.txt": "[endpoint a]\nid=a\nip=192.168.1.1\nhost=h1\ngroup=web\n"})
    assert not before.endpoints and before.errors
    after = state_of({"a.txt": ep_text("a", "192.168.1.1")}, before)
    assert list(after.endpoints) == ["a"] and not after.errors
    assert [c.msg_type for c in endpoint_changes(before, after)] == [messages.ENDPOINTCREATED]


# --- placeholders -------------------------------------------------------------

def test_shipped_felix_txt_is_not_configured_rather_than_broken():
    import os
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(repo, "felix.txt")) as handle:
        parsed = parse_file("felix.txt", handle.read())
    assert not parsed.errors and not parsed.contents.hosts
    assert [n.split(":")[1].strip() for n in parsed.notes] == ["[felix HOST1]", "[felix HOST2]"]
    assert all("not configured" in n and "placeholder" in n for n in parsed.notes)


def test_placeholder_host_name_with_real_ip_is_not_configured_either():
    parsed = parse_file("felix.txt", "[felix x]\nip=10.0.0.1\nhost=HOST2\n\n[felix h1]\nip=10.0.0.2\n")
    assert [h.name for h in parsed.contents.hosts] == ["h1"]
    assert parsed.notes == ("felix.txt: [felix x]: not configured (still holds the placeholder HOST2); "
                            "host skipped until the file is edited",)


def test_sed_edited_placeholders_work():
    parsed = parse_file("felix.txt", "[felix host_1]\nip=1.2.3.4\nhost=host_1\n")
    assert [h.name for h in parsed.contents.hosts] == ["host_1"] and not parsed.notes


# --- groups -------------------------------------------------------------------

def test_groups_members_and_rules():
    state = state_of({
        "a.txt": ep_text("a", "192.168.1.1,fd00::1", group="web,db"),
        "b.txt": ep_text("b", "192.168.1.2", mac="aa:bb:cc:00:00:02", group="web"),
        "rules.txt": "[group db]\ninbound = group:web tcp 5432\n",
    })
    assert state.groups["web"].members == {"a": ("192.168.1.1", "fd00::1"), "b": ("192.168.1.2",)}
    assert state.groups["web"].rules == default_group_rules("web")
    db = state.groups["db"]
    assert [str(r) for r in db.rules.inbound] == ["group:web tcp 5432"]
    assert db.rules.outbound == default_group_rules("db").outbound
    msg = db.message()
    assert msg["type"] == "GROUPUPDATE" and msg["members"] == {"a": ["192.168.1.1", "fd00::1"]}
    assert msg["rules"]["inbound"] == [{"group": "web", "cidr": None, "protocol": "tcp", "port": 5432}]


def test_duplicate_group_section_keeps_the_first():
    state = state_of({"a.txt": ep_text("a", "192.168.1.1"),
                      "r1.txt": "[group web]\ninbound = 10.0.0.0/8\n",
                      "r2.txt": "[group web]\ninbound = 0.0.0.0/0\n"})
    assert str(state.groups["web"].rules.inbound[0]) == "10.0.0.0/8"
    assert only_error(state) == "r2.txt: [group web]: group web is already defined in r1.txt; skipped"


def test_group_with_section_but_no_members_is_not_a_group():
    assert state_of({"r.txt": "[group web]\ninbound = 10.0.0.0/8\n"}).groups == {}


# --- diffs --------------------------------------------------------------------

def changes(before, after):
    return [(c.host, c.msg_type, c.endpoint.endpoint_id) for c in endpoint_changes(before, after)]


def test_endpoint_diff_create_update_destroy_move():
    before = state_of({"a.txt": ep_text("a", "192.168.1.1"),
                       "b.txt": ep_text("b", "192.168.1.2", mac="aa:bb:cc:00:00:02"),
                       "c.txt": ep_text("c", "192.168.1.3", mac="aa:bb:cc:00:00:03"),
                       "d.txt": ep_text("d", "192.168.1.4", mac="aa:bb:cc:00:00:04")})
    after = state_of({"a.txt": ep_text("a", "192.168.1.1", mac="aa:bb:cc:00:00:aa"),        # mac
                      "b.txt": ep_text("b", "192.168.1.2", mac="aa:bb:cc:00:00:02", host="h2"),  # move
                      "d.txt": ep_text("d", "192.168.1.4", mac="aa:bb:cc:00:00:04",
                                       extra="state=disabled\n"),                          # state
                      "e.txt": ep_text("e", "192.168.1.3", mac="aa:bb:cc:00:00:05")},      # new, c's ip
                     before)
    assert changes(before, after) == [
        ("h1", "ENDPOINTDESTROYED", "b"), ("h1", "ENDPOINTDESTROYED", "c"),
        ("h1", "ENDPOINTUPDATED", "a"), ("h1", "ENDPOINTUPDATED", "d"),
        ("h2", "ENDPOINTCREATED", "b"), ("h1", "ENDPOINTCREATED", "e"),
    ]


def test_unchanged_renamed_or_regrouped_endpoint_needs_no_endpoint_message():
    before = state_of({"a.txt": ep_text("a", "192.168.1.1")})
    assert changes(before, state_of({"a.txt": ep_text("a", "192.168.1.1")}, before)) == []
    assert changes(before, state_of({"z.txt": ep_text("a", "192.168.1.1")}, before)) == []
    regrouped = state_of({"a.txt": ep_text("a", "192.168.1.1", group="db")}, before)
    assert changes(before, regrouped) == []
    assert [(g.name, dict(g.members)) for g in group_changes(before, regrouped)] == [
        ("db", {"a": ("192.168.1.1",)}), ("web", {})]


def test_group_diff_members_rules_and_nothing_when_unchanged():
    before = state_of({"a.txt": ep_text("a", "192.168.1.1", group="web,ops")})
    same = state_of({"a.txt": ep_text("a", "192.168.1.1", group="web,ops") + "\n"}, before)
    assert group_changes(before, same) == []
    readdressed = state_of({"a.txt": ep_text("a", "192.168.1.5", group="web,ops")}, before)
    assert [g.name for g in group_changes(before, readdressed)] == ["ops", "web"]
    new_rules = state_of({"a.txt": ep_text("a", "192.168.1.1", group="web,ops"),
                          "r.txt": "[group ops]\ninbound = 10.0.0.0/8 tcp 22\n"}, before)
    assert [g.name for g in group_changes(before, new_rules)] == ["ops"]
    gone = state_of({}, before)
    deleted = group_changes(before, gone)
    assert [(g.name, dict(g.members)) for g in deleted] == [("ops", {}), ("web", {})]
    assert deleted[0].message()["members"] == {}


def test_endpoint_message_shapes():
    ep = state_of({"a.txt": ep_text("a", "192.168.1.1")}).endpoints["a"]
    created = store.endpoint_message(messages.ENDPOINTCREATED, ep, "r1")
    assert {k: v for k, v in created.items() if k != "issued"} == {
        "type": "ENDPOINTCREATED", "endpoint_id": "a", "mac": "aa:bb:cc:00:00:01", "state": "enabled",
        "addrs": [{"addr": "192.168.1.1"}], "resync_id": "r1"}
    destroyed = store.endpoint_message(messages.ENDPOINTDESTROYED, ep)
    assert set(destroyed) == {"type", "endpoint_id", "issued"}


def test_endpoints_on_host_sorted():
    state = state_of({"a.txt": ep_text("zz", "192.168.1.1"),
                      "b.txt": ep_text("aa", "192.168.1.2", mac="aa:bb:cc:00:00:02"),
                      "c.txt": ep_text("mm", "192.168.1.3", host="h2", mac="aa:bb:cc:00:00:03")})
    assert [e.endpoint_id for e in state.endpoints_on("h1")] == ["aa", "zz"]
