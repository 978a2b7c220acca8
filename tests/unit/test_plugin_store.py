"""The plugin's pure store: per-file faults, cross-file checks, the changes
each batch of files makes (the randomized comparison with a full rebuild is
in test_plugin_store_random.py)."""

import pytest

from calico.common import messages
from calico.common.datafiles import default_group_rules
from calico.plugin import store
from calico.plugin.store import Store, parse_file

CLUSTER = "[felix h1]\nip=10.0.0.1\nhost=h1\n\n[felix h2]\nip=10.0.0.2\nhost=h2.example.com\n"


def ep_text(eid, ip, host="h1", mac="aa:bb:cc:00:00:01", group="web", name=None, extra=""):
    return (f"[endpoint {name or eid}]\nid={eid}\nip={ip}\nmac={mac}\nhost={host}\ngroup={group}\n{extra}")


class Dir:
    """A data directory as the store sees it: each ``set`` is the whole
    directory; the files that differ go to the store as one batch."""

    def __init__(self):
        self.store = Store()
        self.files = {}
        self.change = None

    def set(self, files):
        """files: {name: text}; felix.txt is added unless given."""
        files = dict(files)
        files.setdefault("felix.txt", CLUSTER)
        batch = {name: parse_file(name, text) for name, text in files.items() if self.files.get(name) != text}
        batch.update({name: None for name in self.files if name not in files})
        self.files = files
        self.change = self.store.apply(batch)
        return self

    @property
    def state(self):
        return self.store.state


def state_of(files):
    return Dir().set(files).state


def only_error(state):
    assert state.errors.total() == 1, state.errors
    return next(iter(state.errors))


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


@pytest.mark.parametrize("text", [
    "[global]\nas=\u00b2\n",
    "[group web]\ninbound = 0.0.0.0/0 tcp \u00b2\n",
    "[group web]\ninbound = 0.0.0.0/0 \u00b2 80\n",
])
def test_a_fault_the_section_checks_miss_skips_the_file_and_nothing_else(text):
    state = state_of({"bad.txt": text, "good.txt": ep_text("good", "192.168.1.9")})
    # Whichever check catches it (the section's own or the file-wide guard),
    # it is one line naming the file and the offending character.
    error = only_error(state)
    assert error.startswith("bad.txt: ") and "\u00b2" in error and "\n" not in error
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
    data = Dir().set({"m.txt": ep_text("running", "192.168.1.1")})
    data.set({"m.txt": ep_text("running", "192.168.1.1"),
              "a.txt": ep_text("newcomer", "192.168.1.1", mac="aa:bb:cc:00:00:02")})
    assert list(data.state.endpoints) == ["running"]
    assert only_error(data.state).startswith("a.txt: [endpoint newcomer]: address 192.168.1.1")
    assert data.change.endpoints == [] and data.change.groups == []
    assert data.change.new_errors == [only_error(data.state)]


def test_unchanged_endpoint_beats_a_changed_one_for_an_address():
    data = Dir().set({"a.txt": ep_text("a", "192.168.1.1"),
                      "z.txt": ep_text("z", "192.168.1.2", mac="aa:bb:cc:00:00:02")})
    # a changes to take z's address; z did not change: z keeps it.
    data.set({"a.txt": ep_text("a", "192.168.1.2"),
              "z.txt": ep_text("z", "192.168.1.2", mac="aa:bb:cc:00:00:02")})
    assert list(data.state.endpoints) == ["z"]
    assert "a.txt: [endpoint a]" in only_error(data.state)
    assert changes(data.change) == [("h1", "ENDPOINTDESTROYED", "a")]


def test_address_freed_in_the_same_change_can_be_reused():
    data = Dir().set({"a.txt": ep_text("a", "192.168.1.1")})
    data.set({"b.txt": ep_text("b", "192.168.1.1", mac="aa:bb:cc:00:00:02")})
    assert list(data.state.endpoints) == ["b"] and not data.state.errors
    assert changes(data.change) == [("h1", "ENDPOINTDESTROYED", "a"), ("h1", "ENDPOINTCREATED", "b")]


def test_when_the_owner_goes_the_first_skipped_claimant_in_name_order_gets_it():
    data = Dir().set({"m.txt": ep_text("owner", "192.168.1.1")})
    data.set({"m.txt": ep_text("owner", "192.168.1.1"),
              "z.txt": ep_text("late", "192.168.1.1", mac="aa:bb:cc:00:00:03"),
              "b.txt": ep_text("early", "192.168.1.1", mac="aa:bb:cc:00:00:02")})
    assert list(data.state.endpoints) == ["owner"] and data.state.errors.total() == 2
    data.set({"z.txt": ep_text("late", "192.168.1.1", mac="aa:bb:cc:00:00:03"),
              "b.txt": ep_text("early", "192.168.1.1", mac="aa:bb:cc:00:00:02")})
    assert list(data.state.endpoints) == ["early"]
    assert changes(data.change) == [("h1", "ENDPOINTDESTROYED", "owner"), ("h1", "ENDPOINTCREATED", "early")]
    # The remaining loser is now reported against the new owner, once.
    line = "z.txt: [endpoint late]: address 192.168.1.1 is already used by endpoint early in b.txt; skipped"
    assert list(data.state.errors) == [line] and data.change.new_errors == [line]


def test_a_loser_with_two_conflicts_names_the_first_check_against_the_holders():
    data = Dir().set({"a.txt": ep_text("a", "192.168.1.1"),
                      "b.txt": ep_text("b", "192.168.1.2", mac="aa:bb:cc:00:00:02")})
    # c wants b's id and a's address: the id is checked first.
    data.set(dict(data.files, **{"c.txt": ep_text("b", "192.168.1.1", mac="aa:bb:cc:00:00:03", name="c")}))
    assert only_error(data.state) == "c.txt: [endpoint c]: endpoint id b is already used in b.txt; skipped"
    # b goes: c still loses, now for the address; said once more, as news.
    data.set({name: text for name, text in data.files.items() if name != "b.txt"})
    line = "c.txt: [endpoint c]: address 192.168.1.1 is already used by endpoint a in a.txt; skipped"
    assert only_error(data.state) == line and data.change.new_errors == [line]


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
    data = Dir().set({"a.txt": "[endpoint a]\nid=a\nip=192.168.1.1\nhost=h1\ngroup=web\n"})
    assert not data.state.endpoints and data.state.errors
    data.set({"a.txt": ep_text("a", "192.168.1.1")})
    assert list(data.state.endpoints) == ["a"] and not data.state.errors
    assert [c.msg_type for c in data.change.endpoints] == [messages.ENDPOINTCREATED]


def test_host_removed_then_added_takes_its_endpoints_with_it_and_back():
    data = Dir().set({"a.txt": ep_text("a", "192.168.2.1", host="h2"), "b.txt": ep_text("b", "192.168.1.2")})
    data.set(dict(data.files, **{"felix.txt": "[felix h1]\nip=10.0.0.1\n"}))
    assert data.change.hosts_changed and set(data.state.hosts) == {"h1"}
    assert changes(data.change) == [("h2", "ENDPOINTDESTROYED", "a")]
    assert only_error(data.state) == "a.txt: [endpoint a]: host h2 is not a [felix] host of the cluster file; skipped"
    data.set(dict(data.files, **{"felix.txt": CLUSTER}))
    assert changes(data.change) == [("h2", "ENDPOINTCREATED", "a")] and not data.state.errors
    assert [e.endpoint_id for e in data.state.endpoints_on("h2")] == ["a"]
    # A host's address changing is a host change, not an endpoint change.
    data.set(dict(data.files, **{"felix.txt": CLUSTER.replace("10.0.0.2", "10.0.0.9")}))
    assert data.change.hosts_changed and data.change.endpoints == []
    assert data.state.hosts["h2"].ip == "10.0.0.9"


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

def changes(change):
    return [(c.host, c.msg_type, c.endpoint.endpoint_id) for c in change.endpoints]


def groups_of(change):
    return [(g.name, dict(g.members)) for g in change.groups]


def test_endpoint_diff_create_update_destroy_move():
    data = Dir().set({"a.txt": ep_text("a", "192.168.1.1"),
                      "b.txt": ep_text("b", "192.168.1.2", mac="aa:bb:cc:00:00:02"),
                      "c.txt": ep_text("c", "192.168.1.3", mac="aa:bb:cc:00:00:03"),
                      "d.txt": ep_text("d", "192.168.1.4", mac="aa:bb:cc:00:00:04")})
    assert data.change.initial
    data.set({"a.txt": ep_text("a", "192.168.1.1", mac="aa:bb:cc:00:00:aa"),        # mac
              "b.txt": ep_text("b", "192.168.1.2", mac="aa:bb:cc:00:00:02", host="h2"),  # move
              "d.txt": ep_text("d", "192.168.1.4", mac="aa:bb:cc:00:00:04", extra="state=disabled\n"),  # state
              "e.txt": ep_text("e", "192.168.1.3", mac="aa:bb:cc:00:00:05")})      # new, c's ip
    assert not data.change.initial and not data.change.hosts_changed
    assert changes(data.change) == [
        ("h1", "ENDPOINTDESTROYED", "b"), ("h1", "ENDPOINTDESTROYED", "c"),
        ("h1", "ENDPOINTUPDATED", "a"), ("h1", "ENDPOINTUPDATED", "d"),
        ("h2", "ENDPOINTCREATED", "b"), ("h1", "ENDPOINTCREATED", "e"),
    ]


def test_unchanged_renamed_or_regrouped_endpoint_needs_no_endpoint_message():
    data = Dir().set({"a.txt": ep_text("a", "192.168.1.1")})
    assert changes(data.set({"a.txt": ep_text("a", "192.168.1.1") + "\n"}).change) == []
    assert changes(data.set({"z.txt": ep_text("a", "192.168.1.1")}).change) == []
    assert data.state.endpoints["a"].source == "z.txt"
    data.set({"z.txt": ep_text("a", "192.168.1.1", group="db")})
    assert changes(data.change) == []
    assert groups_of(data.change) == [("db", {"a": ("192.168.1.1",)}), ("web", {})]


def test_group_diff_members_rules_and_nothing_when_unchanged():
    data = Dir().set({"a.txt": ep_text("a", "192.168.1.1", group="web,ops")})
    assert data.set({"a.txt": ep_text("a", "192.168.1.1", group="web,ops") + "\n"}).change.groups == []
    data.set({"a.txt": ep_text("a", "192.168.1.5", group="web,ops")})
    assert groups_of(data.change) == [("ops", {"a": ("192.168.1.5",)}), ("web", {"a": ("192.168.1.5",)})]
    data.set({"a.txt": ep_text("a", "192.168.1.5", group="web,ops"),
              "r.txt": "[group ops]\ninbound = 10.0.0.0/8 tcp 22\n"})
    assert [g.name for g in data.change.groups] == ["ops"]
    assert [str(r) for r in data.change.groups[0].rules.inbound] == ["10.0.0.0/8 tcp 22"]
    # The same rules as the default, spelled out: no change.
    data.set({"a.txt": ep_text("a", "192.168.1.5", group="web,ops"),
              "r.txt": "[group web]\ninbound = group:web\n"})
    assert [g.name for g in data.change.groups] == ["ops"]
    assert data.change.groups[0].rules == default_group_rules("ops")
    data.set({})
    assert groups_of(data.change) == [("ops", {}), ("web", {})]
    assert data.change.groups[0].message()["members"] == {}
    assert data.state.groups == {}


def test_member_leaving_and_coming_back_in_one_batch_is_no_group_change():
    data = Dir().set({"a.txt": ep_text("a", "192.168.1.1"), "b.txt": ep_text("b", "192.168.1.2")})
    data.set({"z.txt": ep_text("a", "192.168.1.1"), "b.txt": ep_text("b", "192.168.1.2")})
    assert data.change.groups == [] and data.change.endpoints == []


def test_endpoint_message_shapes():
    ep = state_of({"a.txt": ep_text("a", "192.168.1.1")}).endpoints["a"]
    created = store.endpoint_message(messages.ENDPOINTCREATED, ep, "r1")
    assert {k: v for k, v in created.items() if k != "issued"} == {
        "type": "ENDPOINTCREATED", "endpoint_id": "a", "mac": "aa:bb:cc:00:00:01", "state": "enabled",
        "addrs": [{"addr": "192.168.1.1"}], "resync_id": "r1"}
    destroyed = store.endpoint_message(messages.ENDPOINTDESTROYED, ep)
    assert set(destroyed) == {"type", "endpoint_id", "issued"}


def test_problems_count_every_line():
    data = Dir().set({"more.txt": "[felix h1]\nip=10.0.0.9\n\n[felix h1.x]\nip=10.0.0.8\n",
                      "felix.txt": "[felix HOST1]\nip=IP1\n\n[felix h1]\nip=10.0.0.1\n"})
    assert data.state.errors == {"more.txt: [felix h1]: host h1 is already defined in felix.txt; skipped": 2}
    assert data.state.problems == 3


def test_endpoints_on_host_sorted():
    state = state_of({"a.txt": ep_text("zz", "192.168.1.1"),
                      "b.txt": ep_text("aa", "192.168.1.2", mac="aa:bb:cc:00:00:02"),
                      "c.txt": ep_text("mm", "192.168.1.3", host="h2", mac="aa:bb:cc:00:00:03")})
    assert [e.endpoint_id for e in state.endpoints_on("h1")] == ["aa", "zz"]


@pytest.mark.parametrize("change", ["rewrite", "readdress", "remove", "add"])
def test_one_changed_file_decides_the_same_few_claimants_at_any_directory_size(monkeypatch, change):
    decided = []
    real = store.Arbiter._conflict
    monkeypatch.setattr(store.Arbiter, "_conflict", lambda self, claimant: decided.append(claimant) or
                        real(self, claimant))

    def cost(size):
        files = {f"e{n}.txt": ep_text(f"e{n}", f"10.1.{n // 250}.{n % 250 + 1}", group=f"g{n % 10}")
                 for n in range(size)}
        # A contested address: two losers wait for e0's.
        files["x.txt"] = ep_text("x", "10.1.0.1", mac="aa:bb:cc:00:00:02")
        files["y.txt"] = ep_text("y", "10.1.0.1", mac="aa:bb:cc:00:00:03")
        data = Dir().set(files)
        if change == "rewrite":
            files["e5.txt"] = ep_text("e5", "10.1.0.6", mac="aa:bb:cc:00:00:55", group="g5")
        elif change == "readdress":
            files["e5.txt"] = ep_text("e5", "10.2.0.1", group="g5")
        elif change == "remove":
            del files["e0.txt"]
        else:
            files["new.txt"] = ep_text("new", "10.9.0.1")
        decided.clear()
        data.set(files)
        return len(decided)

    assert cost(200) == cost(2000) <= 4
