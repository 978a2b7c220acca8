"""Felix's resync with the plugin alone: a recording REQ channel, a clock that is a number."""

from __future__ import annotations

import logging

import pytest

from calico.common import messages
from calico.felix.endpoints import EndpointTable
from calico.felix.metrics import FelixMetrics
from calico.felix.resync_client import ResyncClient
from calico.felix.state import EndpointSpec

TIMEOUT_MS = 6000


class Channel:
    """Stands in for the plugin's ReqChannel: keeps what was sent."""

    def __init__(self, on_reply, on_reset) -> None:
        self.on_reply, self.on_reset = on_reply, on_reset
        self.sent: list[dict] = []
        self.cleared = 0
        self.connected = False

    def send(self, msg) -> None:
        self.sent.append(msg)

    def clear(self) -> None:
        self.cleared += 1

    def close(self) -> None:
        pass

    def answer(self, count=None, rc=messages.RC_SUCCESS, request=None) -> None:
        request = request or self.sent[-1]
        fields = {} if count is None else {"endpoint_count": count}
        self.on_reply(request, messages.reply(messages.RESYNCSTATE, rc, **fields))


class Felix:
    """What the resync asks of the rest of Felix, recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.table = EndpointTable()
        self.calls: list[tuple] = []
        self.dirty = 0
        self.last_pass_end = 0.0

    def client(self, interval_secs: float = 1800) -> ResyncClient:
        client = ResyncClient(Channel, self.table, lambda: self.now, FelixMetrics(), hostname="host-1",
                              timeout_ms=TIMEOUT_MS, interval_secs=interval_secs,
                              on_begin=lambda: self.calls.append(("begin",)),
                              remove_stale=lambda rid, stale: self.calls.append(("stale", rid, stale)),
                              mark_dirty=self.mark_dirty, repair=lambda: self.calls.append(("repair",)),
                              last_pass_end=lambda: self.last_pass_end)
        client.begin("start-up")
        return client

    def mark_dirty(self) -> None:
        self.dirty += 1

    def hold(self, *ids: str) -> None:
        for n, endpoint_id in enumerate(ids):
            self.table.upsert(EndpointSpec(endpoint_id, f"aa:bb:cc:dd:ee:{n:02x}", ()))


@pytest.fixture
def felix():
    return Felix()


def test_begin_asks_the_plugin_for_this_hosts_endpoints(felix):
    client = felix.client()
    (request,) = client.plugin.sent
    assert request["type"] == messages.RESYNCSTATE and request["hostname"] == "host-1"
    assert request["resync_id"] == client.current.resync_id and felix.calls == [("begin",)]
    assert client.plugin.cleared == 1  # nothing queued for an older resync goes out


def test_an_empty_resync_completes_at_the_reply_and_asks_for_the_first_pass(felix):
    client = felix.client()
    client.plugin.answer(count=0)
    assert client.current is None and client.synced_at == 100.0 and felix.dirty == 1
    assert felix.calls[-1] == ("stale", client.plugin.sent[0]["resync_id"], [])


def test_completion_names_the_endpoints_it_did_not_mention(felix):
    felix.hold("kept", "gone")
    client = felix.client()
    resync_id = client.current.resync_id
    client.plugin.answer(count=2)
    client.noted(messages.ENDPOINTCREATED, resync_id, "kept", "kept")
    assert client.synced_at is None  # one of two
    client.noted(messages.ENDPOINTCREATED, resync_id, "new", "new")
    assert felix.calls[-1] == ("stale", resync_id, ["gone"]) and client.synced_at is not None


def test_an_announcement_of_another_resync_does_not_count_but_a_live_one_is_kept(felix):
    felix.hold("live")
    client = felix.client()
    resync_id = client.current.resync_id
    client.plugin.answer(count=1)
    client.noted(messages.ENDPOINTCREATED, "some-old-id", "live", "live")  # kept, not counted
    assert client.current is not None
    client.noted(messages.ENDPOINTCREATED, resync_id, "other", "other")
    assert felix.calls[-1] == ("stale", resync_id, [])


def test_a_rejected_announcement_counts_once_however_often_it_is_retried(felix):
    client = felix.client()
    resync_id = client.current.resync_id
    client.plugin.answer(count=2)
    raw = messages.encode({"type": messages.ENDPOINTCREATED, "resync_id": resync_id, "mac": "nonsense"})
    client.count_rejected(raw)
    client.count_rejected(raw)
    assert client.current is not None
    client.count_rejected(messages.encode({"type": messages.ENDPOINTCREATED, "resync_id": resync_id}))
    assert client.current is None


def test_a_refused_resync_is_retried_after_the_connection_timeout(felix, caplog):
    client = felix.client()
    with caplog.at_level(logging.WARNING, logger="calico.felix.resync_client"):
        client.plugin.answer(rc=messages.RC_INVALID)
    assert client.current is None and "refused by the plugin" in caplog.text
    assert client.timer(felix.now) == pytest.approx(6.0)
    felix.now += 6.0
    client.timer(felix.now)
    assert len(client.plugin.sent) == 2 and client.current.reason == "retry"


def test_a_reply_to_an_abandoned_resync_is_ignored(felix):
    client = felix.client()
    old = client.plugin.sent[0]
    client.begin("again")
    client.plugin.answer(count=0, request=old)
    assert client.synced_at is None and client.current.expected is None


def test_a_resync_whose_announcements_stop_starts_again(felix):
    client = felix.client()
    client.plugin.answer(count=3)
    felix.now += 11.0
    felix.last_pass_end = felix.now  # a long pass delays our reading: not stalled yet
    client.timer(felix.now)
    assert len(client.plugin.sent) == 1
    felix.now += 12.0
    client.timer(felix.now)
    assert len(client.plugin.sent) == 2 and client.current.reason == "stalled"


def test_the_periodic_resync_repairs_the_dataplane_first(felix):
    client = felix.client(interval_secs=60)
    client.plugin.answer(count=0)
    felix.calls.clear()
    felix.now += 60
    client.timer(felix.now)
    assert felix.calls == [("repair",), ("begin",)] and client.current.reason == "periodic"


def test_a_plugin_that_stays_down_is_reported_once(felix, caplog):
    client = felix.client()
    with caplog.at_level(logging.INFO, logger="calico.felix.resync_client"):
        client.plugin.on_reset()
        client.plugin.on_reset()
    assert [m for m in caplog.messages if "plugin connection lost" in m] == [
        f"Resync {client.plugin.sent[1]['resync_id']} started (plugin connection lost) for host host-1"]
    assert len(client.plugin.sent) == 3
