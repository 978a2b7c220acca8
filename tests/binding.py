"""Binding a ZeroMQ socket to an address a test has just let go of.

ZeroMQ closes sockets asynchronously: ``socket.close()`` returns at once
and the listening file descriptor is closed later by the context's I/O
thread.  A test that closes a socket bound to ``tcp://A:P`` and binds
another to the same address straight away therefore races that thread,
and under load loses ("Address already in use").

Two rules, used by every fake peer that binds:

* a peer that will be closed and bound again owns its own context and
  ``close_and_wait`` terminates it: ``zmq_ctx_term`` returns only when
  every socket of the context is really closed, so the address is free
  when ``close_and_wait`` returns;
* ``bind_when_free`` still waits (bounded) while the address is in use,
  for the one case the first rule cannot cover: a real component process
  that was killed and whose sockets the kernel is still tearing down.
"""

from __future__ import annotations

import errno
import time

import zmq

BIND_WAIT_SECS = 30.0


def bind_when_free(sock: zmq.Socket, address: str, timeout: float = BIND_WAIT_SECS) -> None:
    """Bind ``sock`` to ``address``, waiting while the address is held.

    Only EADDRINUSE is waited out; any other error, or an address still
    held after ``timeout`` seconds, raises ``zmq.ZMQError``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.bind(address)
            return
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def close_and_wait(context: zmq.Context, *sockets: zmq.Socket) -> None:
    """Close ``sockets`` and terminate ``context``; when this returns, every
    address they were bound to is free.  Every other socket of the context
    must already be closed (or be among ``sockets``), or this blocks."""
    for sock in sockets:
        sock.close(linger=0)
    context.term()
