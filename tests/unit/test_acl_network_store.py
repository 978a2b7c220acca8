"""The ACL manager's view of the network: parsing GROUPUPDATEs and snapshot completion."""

from calico.acl_manager.network_store import NetworkStore, SnapshotTracker, parse_group_update
from calico.common import messages
from calico.common.rules import Rule


def group_msg(name, members, inbound=(), outbound=()):
    return messages.decode_request(messages.encode(messages.make(
        messages.GROUPUPDATE, group=name, members=members,
        rules={"inbound": list(inbound), "outbound": list(outbound),
               "inbound_default": "deny", "outbound_default": "deny"})), {messages.GROUPUPDATE})


def test_parse_canonicalises_and_folds_duplicates():
    spec = parse_group_update(group_msg(
        "web", {"b": ["fd00:0::1", "fd00::1"], "a": ["10.0.0.1"]},
        inbound=[{"group": "web", "cidr": None, "protocol": 6, "port": [80, 81]},
                 {"group": "web", "cidr": None, "protocol": "tcp", "port": [80, 81]}]))
    assert spec.members == {"a": ("10.0.0.1",), "b": ("fd00::1",)}
    assert spec.inbound == (Rule(group="web", protocol="tcp", port=(80, 81)),)
    assert spec.referenced_groups == {"web"}


def test_store_apply_reports_changes_and_deletes_empty_groups():
    store = NetworkStore()
    web = store.parse(group_msg("web", {"a": ["10.0.0.1"]}))
    assert store.apply(web) is True
    assert store.apply(store.parse(group_msg("web", {"a": ["10.0.0.1"]}))) is False
    assert store.apply(store.parse(group_msg("web", {}))) is True
    assert store.groups == {}
    assert store.apply(store.parse(group_msg("web", {}))) is False


def test_snapshot_completes_after_reply_and_quiet_while_subscribed():
    snap = SnapshotTracker(quiet=1.0)
    assert snap.complete(100.0, subscribed=True) is None  # none open
    snap.request_sent(10.0)
    snap.group_received("early", 10.5)        # announced after we asked: counts
    assert snap.complete(20.0, subscribed=True) is None  # no reply yet: burst not started
    snap.reply_received(20.0)
    snap.group_received("web", 20.2)
    assert abs(snap.next_due(20.5) - 0.7) < 1e-9
    assert snap.complete(21.0, subscribed=True) is None  # not quiet long enough
    assert snap.complete(21.3, subscribed=False) is None  # subscription down: burst may be lost
    assert snap.complete(21.3, subscribed=True) == {"early", "web"}
    assert snap.complete(30.0, subscribed=True) is None  # reported once
    snap.group_received("later", 31.0)
    assert not snap.open


def test_snapshot_waits_for_every_outstanding_getgroups():
    snap = SnapshotTracker(quiet=1.0)
    snap.request_sent(0.0)
    snap.group_received("a", 0.1)
    snap.request_sent(0.2)   # the subscription reconnected: asked again
    snap.reply_received(0.3)
    assert snap.complete(5.0, subscribed=True) is None
    snap.reply_received(5.0)
    snap.group_received("b", 5.1)
    assert snap.complete(6.2, subscribed=True) == {"a", "b"}


def test_refused_getgroups_drops_nothing():
    snap = SnapshotTracker(quiet=1.0)
    snap.request_sent(0.0)
    snap.abandon()
    assert snap.complete(10.0, subscribed=True) is None


def test_resubscription_forgets_what_the_old_connection_announced():
    snap = SnapshotTracker(quiet=1.0)
    snap.request_sent(0.0)
    snap.reply_received(0.1)
    snap.group_received("old", 0.2)
    snap.resubscribed()      # the plugin restarted before the quiet period ended
    snap.request_sent(0.5)
    snap.reply_received(0.6)
    snap.group_received("web", 0.7)
    assert snap.complete(2.0, subscribed=True) == {"web"}
