"""The ACL manager's group memberships: once per group, then as changes (pure).

``Memberships`` turns each group's current addresses into what goes out on
the group's topic: a whole GROUPMEMBERS the first time, a MEMBERSUPDATE
with the next sequence number of the same epoch for each change, nothing
for no change.
"""

from __future__ import annotations

import pytest

from calico.acl_manager.memberships import Memberships, addresses_of
from calico.acl_manager.network_store import GroupSpec
from calico.acl_manager.publisher import aclupdate_body
from calico.acl_manager.rule_processor import RuleProcessor
from calico.common import messages
from calico.common.rules import parse_rule_list

EPOCH = "5eed"


def without_issued(msg: dict) -> dict:
    assert isinstance(msg["issued"], int)  # stamped like every publication
    return {k: v for k, v in msg.items() if k != "issued"}


def published(pairs) -> list[tuple[str, dict]]:
    return [(group, without_issued(msg)) for group, msg in pairs]


def group(name: str, members: dict[str, list[str]], inbound: str = "", outbound: str = "") -> GroupSpec:
    return GroupSpec(name=name, members={ep: tuple(ips) for ep, ips in members.items()},
                     inbound=tuple(parse_rule_list(inbound)), outbound=tuple(parse_rule_list(outbound)))


def test_a_group_seen_for_the_first_time_is_one_whole_groupmembers_at_seq_1_v4_first():
    m = Memberships(EPOCH)
    out = m.update({"web": frozenset({"fd00::2", "10.0.0.2", "fd00::1", "10.0.0.1"})})
    assert published(out) == [("web", {"type": "GROUPMEMBERS", "group": "web", "epoch": "5eed", "seq": 1,
                                       "addrs": ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"]})]


def test_unchanged_addresses_publish_nothing_and_keep_the_seq():
    m = Memberships(EPOCH)
    m.update({"web": frozenset({"10.0.0.1"})})
    assert m.update({"web": frozenset({"10.0.0.1"})}) == []
    assert m.update({}) == []
    assert without_issued(m.snapshot("web"))["seq"] == 1


def test_a_join_is_one_small_membersupdate_with_the_next_seq_whatever_the_group_size():
    m = Memberships(EPOCH)
    members = frozenset(f"10.1.{i // 250}.{i % 250 + 1}" for i in range(1000))
    m.update({"web": members})
    out = m.update({"web": members | {"10.9.9.9"}})
    assert published(out) == [("web", {"type": "MEMBERSUPDATE", "group": "web", "epoch": "5eed", "seq": 2,
                                       "added": ["10.9.9.9"], "removed": []})]
    assert len(messages.encode(out[0][1])) < 200


def test_a_leave_and_a_moved_address_are_removals_and_additions_seq_by_seq():
    m = Memberships(EPOCH)
    m.update({"web": frozenset({"10.0.0.1", "10.0.0.2", "fd00::1"})})
    leave = m.update({"web": frozenset({"10.0.0.1", "fd00::1"})})
    assert published(leave) == [("web", {"type": "MEMBERSUPDATE", "group": "web", "epoch": "5eed", "seq": 2,
                                         "added": [], "removed": ["10.0.0.2"]})]
    moved = m.update({"web": frozenset({"10.0.0.7", "fd00::7"})})
    assert published(moved) == [("web", {"type": "MEMBERSUPDATE", "group": "web", "epoch": "5eed", "seq": 3,
                                         "added": ["10.0.0.7", "fd00::7"], "removed": ["10.0.0.1", "fd00::1"]})]


def test_several_groups_come_out_in_group_order_each_with_its_own_seq():
    m = Memberships(EPOCH)
    m.update({"web": frozenset({"10.0.0.1"})})
    out = m.update({"zeta": frozenset({"10.0.0.9"}), "web": frozenset(), "alpha": frozenset({"10.0.0.5"})})
    assert [(g, msg["type"], msg["seq"]) for g, msg in out] == [
        ("alpha", "GROUPMEMBERS", 1), ("web", "MEMBERSUPDATE", 2), ("zeta", "GROUPMEMBERS", 1)]


def test_snapshot_is_the_current_whole_membership_or_none_for_an_untracked_group():
    m = Memberships(EPOCH)
    assert m.snapshot("web") is None
    m.update({"web": frozenset({"10.0.0.1", "10.0.0.2"})})
    m.update({"web": frozenset({"10.0.0.2", "10.0.0.3"})})
    assert without_issued(m.snapshot("web")) == {"type": "GROUPMEMBERS", "group": "web", "epoch": "5eed",
                                                 "seq": 2, "addrs": ["10.0.0.2", "10.0.0.3"]}


def test_an_empty_group_is_tracked_and_published_as_empty_not_unknown():
    m = Memberships(EPOCH)
    assert published(m.update({"ops": frozenset()})) == [
        ("ops", {"type": "GROUPMEMBERS", "group": "ops", "epoch": "5eed", "seq": 1, "addrs": []})]
    assert without_issued(m.snapshot("ops"))["addrs"] == []


def test_every_message_decodes_as_its_wire_type_unchanged():
    m = Memberships(EPOCH)
    out = m.update({"web": frozenset({"10.0.0.1", "fd00::1"})})
    out += m.update({"web": frozenset({"10.0.0.2", "fd00::1"})})
    out.append(("web", m.snapshot("web")))
    for _, msg in out:
        decoded = messages.decode_request(messages.encode(msg), {messages.GROUPMEMBERS, messages.MEMBERSUPDATE})
        assert decoded == msg


def test_each_process_picks_its_own_epoch_of_lower_case_hex():
    first, second = Memberships(), Memberships()
    assert first.epoch != second.epoch
    for epoch in (first.epoch, second.epoch):
        assert 1 <= len(epoch) <= 32 and set(epoch) <= set("0123456789abcdef")


def test_addresses_of_are_every_address_of_every_member():
    spec = group("web", {"a": ["10.0.0.1", "fd00::1"], "b": ["10.0.0.2"]})
    assert addresses_of(spec) == {"10.0.0.1", "fd00::1", "10.0.0.2"}
    assert addresses_of(None) == frozenset()


# --- what to update with after a batch of group changes ---------------------------

def test_changes_for_covers_the_batch_including_deleted_groups():
    m = Memberships(EPOCH)
    current = {"web": group("web", {"a": ["10.0.0.1"], "b": ["10.0.0.2", "fd00::2"]})}
    wanted = m.changes_for({"web": current["web"], "gone": None}, current, referenced=())
    assert wanted == {"web": {"10.0.0.1", "10.0.0.2", "fd00::2"}, "gone": frozenset()}


def test_changes_for_adds_named_groups_not_tracked_yet_and_only_those():
    m = Memberships(EPOCH)
    m.update({"ops": frozenset({"10.0.3.1"})})
    current = {"ops": group("ops", {"o": ["10.0.3.1"]}), "db": group("db", {"d": ["10.0.2.1"]})}
    wanted = m.changes_for({}, current, referenced=["ops", "db", "nowhere"])
    assert wanted == {"db": {"10.0.2.1"}, "nowhere": frozenset()}  # ops is tracked and not in the batch


def run_batch(proc: RuleProcessor, m: Memberships, batch: dict) -> tuple[dict, list]:
    """What the ACL manager's _apply does with a batch: ACL changes and membership messages."""
    changes = proc.update(batch)
    return changes, m.update(m.changes_for(batch, proc.groups, proc.referenced))


def test_a_group_named_before_it_exists_is_published_empty_then_updated_when_it_appears():
    proc, m = RuleProcessor(), Memberships(EPOCH)
    web = group("web", {"w": ["10.0.1.1"]}, inbound="group:ops tcp 22")
    _, out = run_batch(proc, m, {"web": web})
    assert [(g, msg["type"], msg["seq"]) for g, msg in out] == [("ops", "GROUPMEMBERS", 1),
                                                               ("web", "GROUPMEMBERS", 1)]
    assert out[0][1]["addrs"] == []
    changes, out = run_batch(proc, m, {"ops": group("ops", {"o": ["10.0.3.9"]})})
    assert list(changes) == ["o"]  # w's ACLs are unchanged
    assert published(out) == [("ops", {"type": "MEMBERSUPDATE", "group": "ops", "epoch": "5eed", "seq": 2,
                                       "added": ["10.0.3.9"], "removed": []})]


def test_a_deleted_group_is_emptied_by_a_membersupdate_and_stays_tracked():
    proc, m = RuleProcessor(), Memberships(EPOCH)
    run_batch(proc, m, {"ops": group("ops", {"o1": ["10.0.3.1"], "o2": ["10.0.3.2"]})})
    _, out = run_batch(proc, m, {"ops": None})
    assert published(out) == [("ops", {"type": "MEMBERSUPDATE", "group": "ops", "epoch": "5eed", "seq": 2,
                                       "added": [], "removed": ["10.0.3.1", "10.0.3.2"]})]
    assert without_issued(m.snapshot("ops")) == {"type": "GROUPMEMBERS", "group": "ops", "epoch": "5eed",
                                                 "seq": 2, "addrs": []}


@pytest.mark.parametrize("size", [10, 4000])
def test_one_join_publishes_the_joiners_acls_and_one_membership_change_well_under_1_mb(size):
    """Issue 10: a join into a group of 4,000 must cost at most 1 MB on all topics."""
    proc, m = RuleProcessor(), Memberships(EPOCH)
    members = {f"m{i}": [f"10.1.{i // 250}.{i % 250 + 1}"] for i in range(size)}
    rules = dict(inbound="group:big", outbound="group:big; 0.0.0.0/0")
    run_batch(proc, m, {"big": group("big", members, **rules)})
    changes, out = run_batch(proc, m, {"big": group("big", dict(members, joiner=["10.9.9.9"]), **rules)})
    assert list(changes) == ["joiner"]
    assert [(g, msg["type"], msg["added"], msg["removed"]) for g, msg in out] == [
        ("big", "MEMBERSUPDATE", ["10.9.9.9"], [])]
    total = sum(len(aclupdate_body(acls, 1)) for acls in changes.values())
    total += sum(len(messages.encode(msg)) for _, msg in out)
    assert total < 2000  # the same at 10 members as at 4,000
