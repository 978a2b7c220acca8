"""The serving helpers every component shares: answering a REP socket
(``rep_server.answer_one``) and the publishers' HEARTBEAT timer.

The REP tests use real ZeroMQ sockets over inproc and read what the asker
receives; the heartbeat test reads what a stand-in socket was given."""

from __future__ import annotations

import json
import logging

import pytest
import zmq

from calico.common import messages
from calico.common.heartbeat import PubHeartbeat
from calico.common.rep_server import answer_one


@pytest.fixture
def pair():
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.bind("inproc://rep-server-test")
    req = context.socket(zmq.REQ)
    req.connect("inproc://rep-server-test")
    yield rep, req
    req.close(linger=0)
    rep.close(linger=0)
    context.term()


def received(req) -> dict:
    assert req.poll(2000), "no reply"
    return json.loads(req.recv())


def test_nothing_waiting_is_reported_and_sends_nothing(pair):
    rep, _ = pair
    assert answer_one(rep, lambda frames: pytest.fail("called without a request"),
                      logging.getLogger("t"), "test API") is False


def test_the_answer_is_sent_and_its_follow_up_runs_after_it(pair):
    rep, req = pair
    seen = []
    req.send(messages.encode(messages.make(messages.HEARTBEAT)))
    assert rep.poll(2000)

    def answer(frames):
        seen.append(list(frames))
        return messages.reply(messages.HEARTBEAT), lambda: seen.append(req.poll(0))

    assert answer_one(rep, answer, logging.getLogger("t"), "test API") is True
    assert received(req)["type"] == messages.HEARTBEAT
    assert len(seen[0]) == 1 and json.loads(seen[0][0])["type"] == messages.HEARTBEAT
    assert seen[1], "the follow-up ran before the reply was sent"


def test_a_failing_handler_is_answered_invalid_and_the_socket_serves_on(pair, caplog):
    rep, req = pair

    def broken(frames):
        raise KeyError("bug")

    req.send(b"first")
    assert rep.poll(2000)
    with caplog.at_level(logging.ERROR, logger="calico.plugin.test"):
        answer_one(rep, broken, logging.getLogger("calico.plugin.test"), "test API")
    reply = received(req)
    assert (reply["rc"], reply["message"]) == (messages.RC_INVALID, "internal error")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("calico.plugin.test", "test API: internal error on a request; answered INVALID")]
    req.send(b"second")
    assert rep.poll(2000)
    answer_one(rep, lambda frames: (messages.reply("X"), None), logging.getLogger("t"), "test API")
    assert received(req)["type"] == "X"


def test_frames_are_handed_over_uncopied_when_asked(pair):
    rep, req = pair
    req.send(b"body")
    assert rep.poll(2000)
    kinds = []
    answer_one(rep, lambda frames: (kinds.append(type(frames[0])) or messages.reply("X"), None),
               logging.getLogger("t"), "test API", copy=False)
    assert kinds == [zmq.Frame]
    received(req)


class Recorder:
    def __init__(self):
        self.sent = []

    def send_multipart(self, frames):
        self.sent.append(frames)


def test_a_heartbeat_goes_out_at_once_then_once_per_interval():
    sock = Recorder()
    beat = PubHeartbeat(sock, b"aclheartbeat", 2.0, start=100.0)
    assert beat(100.0) == 2.0
    assert beat(101.5) == pytest.approx(0.5)
    assert beat(102.0) == 2.0
    assert [topic for topic, _ in sock.sent] == [b"aclheartbeat", b"aclheartbeat"]
    assert all(json.loads(body)["type"] == messages.HEARTBEAT for _, body in sock.sent)
