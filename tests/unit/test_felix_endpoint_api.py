"""Felix's endpoint API alone: requests in, replies out, with a recording stand-in for the resync."""

from __future__ import annotations

import logging

import netaddr
import pytest

from calico.common import messages
from calico.felix.endpoint_api import EndpointApi
from calico.felix.endpoints import EndpointTable
from calico.felix.metrics import FelixMetrics


class Resync:
    """Stands in for the ResyncClient: records what the API reports."""

    def __init__(self) -> None:
        self.notes: list[tuple] = []
        self.live_ids: list[str] = []
        self.destroyed_ids: list[str] = []
        self.rejected: list[bytes] = []

    def noted(self, *args) -> None:
        self.notes.append(args)

    def live(self, endpoint_id: str) -> None:
        self.live_ids.append(endpoint_id)

    def destroyed(self, endpoint_id: str) -> None:
        self.destroyed_ids.append(endpoint_id)

    def count_rejected(self, raw: bytes) -> None:
        self.rejected.append(raw)


class Felix:
    def __init__(self, max_endpoints: int = 10) -> None:
        self.table = EndpointTable({4: (netaddr.IPNetwork("192.168.0.0/16"),), 6: ()}, max_endpoints)
        self.resync = Resync()
        self.created: list[str] = []
        self.forgotten: list[str] = []
        self.dirty = 0
        self.api = EndpointApi(None, self.table, self.resync, FelixMetrics(),  # type: ignore[arg-type]
                               max_endpoints=max_endpoints, on_created=self.created.append, forget=self.forget,
                               mark_dirty=self.mark_dirty)

    def forget(self, endpoint_id: str) -> None:
        self.forgotten.append(endpoint_id)
        self.table.remove(endpoint_id)

    def mark_dirty(self) -> None:
        self.dirty += 1

    def send(self, msg_type: str, endpoint_id: str, addr: str = "192.168.1.1", **extra) -> dict:
        msg = messages.make(msg_type, endpoint_id=endpoint_id, mac="aa:bb:cc:dd:ee:01", state="enabled",
                            addrs=[{"addr": addr}], **extra)
        return self.api.handle(messages.encode(msg))

    def destroy(self, endpoint_id: str) -> dict:
        return self.api.handle(messages.encode(messages.make(messages.ENDPOINTDESTROYED, endpoint_id=endpoint_id)))


@pytest.fixture
def felix():
    return Felix()


def test_a_creation_is_taken_heard_of_and_counted_towards_the_resync(felix):
    reply = felix.send(messages.ENDPOINTCREATED, "a", resync_id="r1")
    assert reply["rc"] == messages.RC_SUCCESS and felix.table.get("a").addrs == ("192.168.1.1",)
    assert felix.created == ["a"] and felix.dirty == 1
    assert felix.resync.notes == [(messages.ENDPOINTCREATED, "r1", "a", "a")]


def test_the_same_creation_again_changes_nothing(felix):
    felix.send(messages.ENDPOINTCREATED, "a")
    felix.send(messages.ENDPOINTCREATED, "a")
    assert felix.created == ["a"] and felix.dirty == 1


def test_update_and_destroy_of_an_unknown_endpoint_are_notexist(felix):
    assert felix.send(messages.ENDPOINTUPDATED, "ghost")["rc"] == messages.RC_NOTEXIST
    assert felix.destroy("ghost")["rc"] == messages.RC_NOTEXIST
    assert felix.forgotten == [] and "ghost" not in felix.table


def test_a_destroyed_endpoint_is_forgotten_everywhere(felix):
    felix.send(messages.ENDPOINTCREATED, "a")
    assert felix.destroy("a")["rc"] == messages.RC_SUCCESS
    assert felix.forgotten == ["a"] and felix.resync.destroyed_ids == ["a"] and felix.dirty == 2


def test_a_malformed_request_is_invalid_and_offered_to_the_resync(felix):
    raw = b'{"type": "ENDPOINTCREATED"}'
    assert felix.api.handle(raw)["rc"] == messages.RC_INVALID
    assert felix.resync.rejected == [raw]


def test_an_address_outside_the_pools_is_refused_and_still_counts(felix, caplog):
    with caplog.at_level(logging.WARNING, logger="calico.felix.endpoint_api"):
        reply = felix.send(messages.ENDPOINTCREATED, "a", addr="10.9.9.9", resync_id="r1")
    assert reply["rc"] == messages.RC_INVALID and "a" not in felix.table
    assert felix.resync.notes == [(messages.ENDPOINTCREATED, "r1", "a", None)]
    assert len(caplog.records) == 1 and "refused (INVALID)" in caplog.text


def test_a_claim_on_anothers_address_is_parked_and_taken_when_it_lets_go(felix, caplog):
    felix.send(messages.ENDPOINTCREATED, "a", addr="192.168.1.5")
    with caplog.at_level(logging.WARNING, logger="calico.felix.endpoint_api"):
        assert felix.send(messages.ENDPOINTCREATED, "b", addr="192.168.1.5")["rc"] == messages.RC_INVALID
    assert "; taken when that clears" in caplog.text
    felix.send(messages.ENDPOINTUPDATED, "a", addr="192.168.1.6")
    assert felix.table.owner_of("192.168.1.5") == "b" and felix.resync.live_ids == ["b"]


def test_a_new_resync_drops_parked_claims(felix):
    felix.send(messages.ENDPOINTCREATED, "a", addr="192.168.1.5")
    felix.send(messages.ENDPOINTCREATED, "b", addr="192.168.1.5")
    felix.api.drop_parked()
    felix.destroy("a")
    assert "b" not in felix.table


def test_stale_endpoints_are_forgotten_then_parked_claims_retried(felix, caplog):
    felix.send(messages.ENDPOINTCREATED, "old", addr="192.168.1.5")
    felix.send(messages.ENDPOINTCREATED, "new", addr="192.168.1.5")
    with caplog.at_level(logging.INFO, logger="calico.felix.endpoint_api"):
        felix.api.remove_stale("r9", ["old"])
    assert felix.forgotten == ["old"] and felix.table.owner_of("192.168.1.5") == "new"
    assert "Endpoint old removed: not in resync r9" in caplog.messages


def test_a_full_host_says_so_once_until_it_has_room(caplog):
    felix = Felix(max_endpoints=1)
    felix.send(messages.ENDPOINTCREATED, "a")
    with caplog.at_level(logging.WARNING, logger="calico.felix.endpoint_api"):
        felix.send(messages.ENDPOINTCREATED, "b", addr="192.168.1.2")
        felix.send(messages.ENDPOINTCREATED, "c", addr="192.168.1.3")
    assert len(caplog.records) == 1
    felix.destroy("a")
    assert len(felix.table) == 1  # a parked claim took the room


def test_heartbeat_is_answered(felix):
    assert felix.api.handle(messages.encode(messages.make(messages.HEARTBEAT)))["rc"] == messages.RC_SUCCESS
