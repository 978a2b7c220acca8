"""FelixLink's outboxes: coalescing per endpoint, resync first, bounded.

The link's ReqChannel is swapped for a recording stand-in, so only the
outbox logic is under test here (the component tests drive the real one).
"""

import zmq

from calico.common import messages
from calico.common.datafiles import Endpoint, Host
from calico.common.security import Transport
from calico.common.zmqloop import EventLoop
from calico.plugin.ep_api import FelixLink


class RecordingChannel:
    def __init__(self):
        self.sent = []
        self.in_flight = None

    @property
    def idle(self):
        return self.in_flight is None

    def send(self, msg):
        assert self.in_flight is None
        self.in_flight = msg
        self.sent.append(msg)

    def answer(self, link, rc="SUCCESS"):
        request, self.in_flight = self.in_flight, None
        link._on_reply(request, {"type": request["type"], "rc": rc, "message": ""})

    def abandon_in_flight(self, reason):
        self.in_flight = None

    def close(self):
        pass


def ep(eid, mac="aa:bb:cc:00:00:01"):
    return Endpoint(eid, ("192.168.1.1",), mac, "h1", ("web",))


def make_link(missing=None):
    loop = EventLoop()
    link = FelixLink(loop, Transport(zmq.Context.instance(), loop, None), Host("h1", "127.0.1.250"), 1000, 1000,
                     on_missing=lambda host, eid: (missing if missing is not None else []).append((host, eid)))
    link.channel.close()
    link.channel = RecordingChannel()
    return link


def summary(msgs):
    return [(m["type"], m["endpoint_id"], m.get("mac"), m.get("resync_id")) for m in msgs]


def test_changes_to_one_endpoint_coalesce_while_the_channel_is_busy():
    link = make_link()
    link.push(ep("a").message(messages.ENDPOINTCREATED))          # in flight
    for n in range(2, 100):
        link.push(ep("a", f"aa:bb:cc:00:00:{n:02x}").message(messages.ENDPOINTUPDATED))
    link.push(ep("b").message(messages.ENDPOINTCREATED))
    link.push(ep("b", "aa:bb:cc:00:00:bb").message(messages.ENDPOINTUPDATED))
    assert link.pending == 2
    for _ in range(3):
        link.channel.answer(link)
    assert summary(link.channel.sent) == [
        ("ENDPOINTCREATED", "a", "aa:bb:cc:00:00:01", None),
        ("ENDPOINTUPDATED", "a", "aa:bb:cc:00:00:63", None),
        # b was never sent: its update stays a CREATED, with the new fields.
        ("ENDPOINTCREATED", "b", "aa:bb:cc:00:00:bb", None),
    ]
    assert link.pending == 0


def test_destroy_replaces_queued_changes():
    link = make_link()
    link.push(ep("x").message(messages.ENDPOINTCREATED))
    link.push(ep("a").message(messages.ENDPOINTCREATED))
    link.push(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="a"))
    link.channel.answer(link)
    link.channel.answer(link)
    assert summary(link.channel.sent)[1] == ("ENDPOINTDESTROYED", "a", None, None)
    assert link.pending == 0


def test_resync_replaces_live_queue_and_goes_first():
    link = make_link()
    link.push(ep("busy").message(messages.ENDPOINTCREATED))   # in flight
    link.push(ep("stale").message(messages.ENDPOINTUPDATED))
    link.resync([ep("a").message(messages.ENDPOINTCREATED, "r1"), ep("b").message(messages.ENDPOINTCREATED, "r1")])
    # A live change after the resync follows it, never merged into it.
    link.push(ep("a", "aa:bb:cc:00:00:aa").message(messages.ENDPOINTUPDATED))
    while not link.channel.idle:
        link.channel.answer(link)
    # "busy" was abandoned: the resync covers it.
    assert summary(link.channel.sent) == [
        ("ENDPOINTCREATED", "busy", "aa:bb:cc:00:00:01", None),
        ("ENDPOINTCREATED", "a", "aa:bb:cc:00:00:01", "r1"),
        ("ENDPOINTCREATED", "b", "aa:bb:cc:00:00:01", "r1"),
        ("ENDPOINTUPDATED", "a", "aa:bb:cc:00:00:aa", None),
    ]


def test_notexist_on_update_asks_for_a_create_and_on_destroy_is_fine():
    missing = []
    link = make_link(missing)
    link.push(ep("a").message(messages.ENDPOINTUPDATED))
    link.channel.answer(link, rc="NOTEXIST")
    assert missing == [("h1", "a")]
    link.push(messages.make(messages.ENDPOINTDESTROYED, endpoint_id="a"))
    link.channel.answer(link, rc="NOTEXIST")
    assert missing == [("h1", "a")]
