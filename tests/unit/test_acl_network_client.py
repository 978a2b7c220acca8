"""The ACL manager's client of the plugin's network API, on a fake clock.

A PUB and a REP stand in for the plugin, on loopback TCP (the subscription's
monitor needs a real handshake) at ports the test picks; the loop's clock
stands still unless the test moves it, so what completes a snapshot is the
client's own timer, woken by the events that let it complete.
"""

from __future__ import annotations

import pytest
import zmq

import polling
from calico.acl_manager.metrics import AclMetrics
from calico.acl_manager.network_client import NetworkApiClient
from calico.common import messages
from calico.common.config import Config
from calico.common.zmqloop import EventLoop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LoopbackTransport:
    """Plain sockets; the plugin's well-known ports map to the test's own."""

    def __init__(self, ctx: zmq.Context, ports: dict[int, int]) -> None:
        self.ctx = ctx
        self.ports = ports

    def _address(self, address: str) -> str:
        host, port = address.rsplit(":", 1)
        return f"{host}:{self.ports[int(port)]}"

    def client(self, kind, as_role, server_role, options=None):
        transport = self

        class Remapped(zmq.Socket):
            def connect(self, address):
                return super().connect(transport._address(address))

        sock = Remapped(self.ctx, kind)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        return sock

    def dialer(self, kind, address, as_role, server_role):
        transport = self

        class Dial:
            def __init__(self) -> None:
                self.address = address

            def open(self):
                sock = transport.client(kind, as_role, server_role)
                sock.connect(address)
                return sock
        return Dial()


@pytest.fixture
def plugin():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    rep = ctx.socket(zmq.REP)
    for sock in (pub, rep):
        sock.setsockopt(zmq.LINGER, 0)
    ports = {messages.PORT_NET_PUB: pub.bind_to_random_port("tcp://127.0.0.1"),
             messages.PORT_NET_REQ: rep.bind_to_random_port("tcp://127.0.0.1")}
    yield ctx, pub, rep, ports
    ctx.destroy(linger=0)


def test_a_snapshot_completes_one_quiet_period_after_the_getgroups_reply(plugin):
    ctx, pub, rep, ports = plugin
    clock = Clock()
    loop = EventLoop(clock=clock)
    config = Config(plugin_address="127.0.0.1", connection_timeout_millis=6000,
                    connection_keepalive_interval_millis=2000)
    snapshots = []
    client = NetworkApiClient(loop, LoopbackTransport(ctx, ports), config, 1.0, AclMetrics(),
                              on_group=lambda msg: None, on_batch=lambda batch: None,
                              on_snapshot=snapshots.append)
    try:
        # The handshake asks for every group; the first publication proves
        # the subscription (heartbeats until one gets through the slow join).
        polling.wait_until(lambda: loop.run_once(0.01) or rep.poll(0), what="GETGROUPS", interval=0)
        assert messages.decode_request(rep.recv(), {messages.GETGROUPS})["type"] == messages.GETGROUPS

        def proven():
            pub.send_multipart([messages.TOPIC_NETWORK_HEARTBEAT, messages.encode(messages.make(messages.HEARTBEAT))])
            loop.run_once(0.01)
            return client.proven
        polling.wait_until(proven, what="the first publication", interval=0)
        rep.send(messages.encode(messages.reply(messages.GETGROUPS)))
        polling.wait_until(lambda: loop.run_once(0.01) or not client.snapshot.pending, what="the reply",
                           interval=0)
        loop.run_once(0)
        assert snapshots == []  # the burst may still be coming
        clock.now += 1.0  # the quiet period; the timer's own deadline (the 6 s timeout) is far off
        loop.run_once(0)
        assert snapshots == [set()]
    finally:
        client.close()
