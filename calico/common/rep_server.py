"""Answering one request on a REP socket, whatever goes wrong.

A ZeroMQ REP socket that took a request cannot take the next until it has
sent a reply, so a handler that raised would leave it deaf for good.
``answer_one`` always replies: the handler's answer, or, when the handler
itself failed, rc INVALID with "internal error" (and the traceback logged).
Work that must follow the reply (an endpoint resync, a burst of groups) is
returned by the handler and run only once the reply is on its way, so the
asker hears the acknowledgement before what it announces.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import zmq

from calico.common import messages

FollowUp = Callable[[], None]
# The request's frames -> (the reply, what to do once it is sent, or None).
Answer = Callable[[Sequence[Any]], "tuple[dict[str, Any], FollowUp | None]"]


def internal_error_reply() -> dict[str, Any]:
    """What a REP side sends when its own code failed on a request."""
    return messages.reply("UNKNOWN", messages.RC_INVALID, "internal error")


def answer_one(sock: zmq.Socket, answer: Answer, log: logging.Logger, api: str, copy: bool = True) -> bool:
    """Take one waiting request from ``sock`` and reply to it; False if none waited.

    ``api`` names the API in the log line of a failed handler; ``log`` is the
    caller's logger, so the line carries the component's name.  ``copy``
    False hands the handler zmq.Frame objects (to read a peer's identity)."""
    try:
        frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
    except zmq.Again:
        return False
    follow_up = None
    try:
        reply, follow_up = answer(frames)
    except Exception:  # a bug must not leave the REP socket owing a reply
        log.exception("%s: internal error on a request; answered INVALID", api)
        reply = internal_error_reply()
    sock.send(messages.encode(reply))
    if follow_up is not None:
        follow_up()
    return True
