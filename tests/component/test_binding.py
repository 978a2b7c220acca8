"""The contract the fake peers rely on (tests/binding.py): once
``close_and_wait`` returns, the address is free for a plain bind."""

import zmq

from binding import close_and_wait

ADDRESS = "tcp://127.0.9.1:9902"


def test_an_address_closed_with_close_and_wait_can_be_bound_again_at_once():
    client_context = zmq.Context()
    client = client_context.socket(zmq.REQ)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(ADDRESS)  # keeps reconnecting, so each listener has a peer to tear down
    try:
        for _ in range(200):
            context = zmq.Context()
            server = context.socket(zmq.REP)
            server.bind(ADDRESS)  # plain bind: no waiting, no retry
            close_and_wait(context, server)
    finally:
        close_and_wait(client_context, client)
