"""Felix's copy of group memberships: which groups are needed, and who is in them (pure)."""

from __future__ import annotations

from calico.felix.groups import GroupMembers, Outcome


def members(group="web", epoch="e1", seq=1, addrs=()):
    return {"type": "GROUPMEMBERS", "group": group, "epoch": epoch, "seq": seq, "addrs": list(addrs)}


def update(group="web", epoch="e1", seq=2, added=(), removed=()):
    return {"type": "MEMBERSUPDATE", "group": group, "epoch": epoch, "seq": seq, "added": list(added),
            "removed": list(removed)}


def holding(addrs=("10.0.0.1",), seq=1) -> GroupMembers:
    """Needed by endpoint a, with a snapshot at ``seq``."""
    g = GroupMembers()
    g.need("a", ["web"])
    assert g.snapshot(members(seq=seq, addrs=addrs)) is Outcome.CHANGED
    return g


# --- which groups are needed ---------------------------------------------------------

def test_need_reports_groups_newly_needed_and_no_longer_needed_by_anyone():
    g = GroupMembers()
    assert g.need("a", ["web", "db"]) == (["db", "web"], [])
    assert g.need("b", ["web"]) == ([], [])          # web already needed by a
    assert g.need("a", ["web", "ops"]) == (["ops"], ["db"])
    assert g.need("a", []) == ([], ["ops"])          # web still needed by b
    assert g.needed() == ["web"]
    assert g.forget("b") == ["web"]
    assert g.needed() == [] and not g.is_needed("web")


def test_forgetting_an_endpoint_that_needed_nothing_changes_nothing():
    g = GroupMembers()
    g.need("a", ["web"])
    assert g.forget("ghost") == []
    assert g.need("a", ["web"]) == ([], [])
    assert g.needed() == ["web"]


def test_needed_groups_are_unknown_until_their_first_groupmembers():
    g = GroupMembers()
    g.need("a", ["web", "db"])
    assert g.unknown() == ["db", "web"] and g.known() == {}
    g.snapshot(members(addrs=["10.0.0.1"]))
    assert g.unknown() == ["db"]
    assert g.known() == {"web": {"10.0.0.1"}}
    assert g.held("web").seq == 1 and g.held("db") is None


def test_a_group_no_longer_needed_is_dropped_and_unknown_again_when_needed_again():
    g = holding()
    g.need("a", [])
    assert g.known() == {} and g.held("web") is None
    g.need("a", ["web"])
    assert g.unknown() == ["web"]


# --- GROUPMEMBERS --------------------------------------------------------------------

def test_groupmembers_for_a_group_nobody_needs_is_ignored():
    g = GroupMembers()
    assert g.snapshot(members(addrs=["10.0.0.1"])) is Outcome.IGNORED
    assert g.known() == {}


def test_groupmembers_with_the_same_addresses_is_unchanged_and_keeps_the_same_set_object():
    g = holding(addrs=["10.0.0.1", "10.0.0.2"])
    before = g.known()["web"]
    assert g.snapshot(members(seq=3, addrs=["10.0.0.2", "10.0.0.1"])) is Outcome.UNCHANGED
    assert g.known()["web"] is before  # the dataplane rebuilds a group's set only when this object changes
    assert g.held("web").seq == 3


def test_groupmembers_is_always_taken_even_older_or_of_another_epoch():
    g = holding(addrs=["10.0.0.1"], seq=7)
    assert g.snapshot(members(seq=2, addrs=["10.0.0.2"])) is Outcome.CHANGED
    assert g.known() == {"web": {"10.0.0.2"}} and g.held("web").seq == 2
    assert g.snapshot(members(epoch="e2", seq=1, addrs=["10.0.0.3"])) is Outcome.CHANGED
    held = g.held("web")
    assert (held.epoch, held.seq, held.addrs) == ("e2", 1, {"10.0.0.3"})


# --- MEMBERSUPDATE -------------------------------------------------------------------

def test_membersupdate_one_past_what_we_hold_is_applied():
    g = holding(addrs=["10.0.0.1", "10.0.0.2"])
    assert g.delta(update(seq=2, added=["10.0.0.3", "fd00::3"], removed=["10.0.0.1"])) is Outcome.CHANGED
    assert g.known() == {"web": {"10.0.0.2", "10.0.0.3", "fd00::3"}}
    assert g.delta(update(seq=3, removed=["10.0.0.2"])) is Outcome.CHANGED
    assert g.known() == {"web": {"10.0.0.3", "fd00::3"}} and g.held("web").seq == 3


def test_membersupdate_that_changes_nothing_advances_the_seq_and_keeps_the_set_object():
    g = holding(addrs=["10.0.0.1"])
    before = g.known()["web"]
    assert g.delta(update(seq=2, added=["10.0.0.1"], removed=["10.9.9.9"])) is Outcome.UNCHANGED
    assert g.known()["web"] is before and g.held("web").seq == 2
    assert g.delta(update(seq=3, added=["10.0.0.4"])) is Outcome.CHANGED  # 3 is next now


def test_old_membersupdates_are_ignored():
    g = holding(addrs=["10.0.0.1"], seq=5)
    for seq in (5, 4, 1, 0):
        assert g.delta(update(seq=seq, removed=["10.0.0.1"])) is Outcome.IGNORED
    held = g.held("web")
    assert (held.seq, held.addrs) == (5, {"10.0.0.1"})


def test_a_gap_keeps_what_we_hold_and_says_so():
    g = holding(addrs=["10.0.0.1"], seq=5)
    assert g.delta(update(seq=7, added=["10.0.0.2"], removed=["10.0.0.1"])) is Outcome.GAP
    held = g.held("web")
    assert (held.epoch, held.seq, held.addrs) == ("e1", 5, {"10.0.0.1"})  # neither widened nor emptied
    assert g.delta(update(seq=6, added=["10.0.0.6"])) is Outcome.CHANGED  # 6 still applies


def test_another_epoch_is_a_gap_whatever_its_seq():
    g = holding(addrs=["10.0.0.1"], seq=5)
    for seq in (1, 5, 6, 99):
        assert g.delta(update(epoch="e2", seq=seq, added=["10.0.0.2"])) is Outcome.GAP
    held = g.held("web")
    assert (held.epoch, held.seq, held.addrs) == ("e1", 5, {"10.0.0.1"})


def test_membersupdate_before_any_groupmembers_is_ignored():
    g = GroupMembers()
    g.need("a", ["web"])
    assert g.delta(update(seq=2, added=["10.0.0.1"])) is Outcome.IGNORED
    assert g.unknown() == ["web"] and g.known() == {}


def test_membersupdate_for_a_group_nobody_needs_is_ignored():
    g = holding()
    assert g.delta(update(group="db", seq=2, added=["10.0.0.9"])) is Outcome.IGNORED
    assert g.known() == {"web": {"10.0.0.1"}}
