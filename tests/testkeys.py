"""The test cluster's secret, and the CURVE set-up of the tests' fake peers.

Every test run has one cluster secret (random, made when this module is
first imported); the real processes read it from the file the
``cluster_secret_file`` fixture (tests/conftest.py) writes, and every fake
peer derives its keys from it with ``calico.common.security``, as the role
it plays.  ``OTHER_KEYS`` come from another secret: a stranger's.

The fixed ports say who is the server and who its rightful client, except
for the two whose role names a host (9901's clients and 9902's server are
``felix/<host>``): ``server_role`` and ``client_role`` want ``host`` there.
"""

from __future__ import annotations

import os
import secrets

import zmq

from calico.common import messages, security
from calico.common.security import ClusterKeys, felix_host_role

SECRET = secrets.token_bytes(32)
KEYS = ClusterKeys(SECRET)
OTHER_KEYS = ClusterKeys(secrets.token_bytes(32))

_SERVER_ROLES = {
    messages.PORT_EP_RESYNC: security.ROLE_PLUGIN_EP,
    messages.PORT_NET_REQ: security.ROLE_PLUGIN_NETWORK,
    messages.PORT_NET_PUB: security.ROLE_PLUGIN_NETWORK,
    messages.PORT_ACL_REQ: security.ROLE_ACL_MANAGER,
    messages.PORT_ACL_PUB: security.ROLE_ACL_MANAGER,
}
_CLIENT_ROLES = {
    messages.PORT_EP_FELIX: security.ROLE_PLUGIN_EP,
    messages.PORT_NET_REQ: security.ROLE_ACL_MANAGER,
    messages.PORT_NET_PUB: security.ROLE_ACL_MANAGER,
    messages.PORT_ACL_REQ: security.ROLE_FELIX,
    messages.PORT_ACL_PUB: security.ROLE_FELIX,
}


def write_secret_file(path: str, secret: bytes = SECRET) -> str:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(secret.hex() + "\n")
    return path


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def server_role(address: str, host: str | None = None) -> str:
    port = port_of(address)
    if port == messages.PORT_EP_FELIX:
        assert host is not None, "a Felix's 9902 serves as felix/<host>: give host"
        return felix_host_role(host)
    return _SERVER_ROLES[port]


def client_role(address: str, host: str | None = None) -> str:
    port = port_of(address)
    if port == messages.PORT_EP_RESYNC:
        assert host is not None, "the plugin's 9901 takes felix/<host>: give host"
        return felix_host_role(host)
    return _CLIENT_ROLES[port]


def as_server(sock: zmq.Socket, address: str, role: str | None = None, host: str | None = None,
              keys: ClusterKeys | None = KEYS) -> None:
    """CURVE server options (no ZAP: a fake admits whoever has the keys)."""
    if keys is not None:
        security.curve_server(sock, keys, role or server_role(address, host))


def as_client(sock: zmq.Socket, address: str, role: str | None = None, host: str | None = None,
              keys: ClusterKeys | None = KEYS, server: str | None = None) -> None:
    """CURVE client options for a fake peer: ``role`` (default: the port's
    rightful client), checking the server's key (default: the port's
    server role, derived from the *test* secret); ``keys`` None: plain."""
    if keys is not None:
        server = server or server_role(address, host)
        security.curve_client(sock, keys, role or client_role(address, host), server)
        # A stranger may well know the server's public key: it is no secret.
        sock.curve_serverkey = KEYS.pair(server).public


# Roles a peer of the cluster may hold; an intruder holds one of the wrong ones.
KNOWN_ROLES = (security.ROLE_PLUGIN_EP, security.ROLE_PLUGIN_NETWORK, security.ROLE_ACL_MANAGER,
               security.ROLE_FELIX, felix_host_role("h1"), felix_host_role("h9"))


def intruders(rightful: str) -> list[tuple[str, str, ClusterKeys | None]]:
    """(label, role, keys) of every peer that must not get through where
    ``rightful`` may: each other role of the cluster, the rightful role
    with another secret's keys, and a client without CURVE."""
    wrong = [(f"role {role}", role, KEYS) for role in KNOWN_ROLES if role != rightful]
    return wrong + [("another secret", rightful, OTHER_KEYS), ("no CURVE", rightful, None)]
