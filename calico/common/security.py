"""The control plane's keys, and who may connect to which socket (CURVE and ZAP).

See docs/protocol.md, "Security handshake".

One cluster secret, 32 random bytes written as 64 lower-case hex digits on
one line, is given to every component.  Every CURVE key pair is derived
from it by role::

    secret key of R = HMAC-SHA256(key=secret, msg="calico-curve-v1/" + R)
    public key of R = curve25519 public key of that secret key

Roles: ``plugin-ep``, ``plugin-network``, ``acl-manager``, ``felix`` (every
Felix, as a client of the ACL manager) and ``felix/<host>`` (one Felix: the
client of the plugin's 9901 and the server of its own 9902).  Adding a host
therefore needs no new keys: its keys follow from the secret and its name.

Every listening socket is a CURVE server with a ZAP domain of its own.  The
ZAP handler is pyzmq's ``Authenticator``, served by the component's own
event loop (no thread): it admits on each domain only the roles of
``ADMITTED`` (the plugin's 9901: the Felixes of the cluster file's hosts)
and hands the client's role to the socket as the message's User-Id, which
the plugin compares with the host a RESYNCSTATE speaks for.  Everything
else fails at the handshake, before a message is read: a peer without the
secret cannot complete the CURVE handshake at all (logged from a monitor of
the socket), a key of the cluster in the wrong place is refused by ZAP
(logged with the peer's address).  Both logs are rate-limited.

Every host holds the secret and could derive any key: the hosts are
trusted, and what is kept out is everything else on the network.
``Insecure`` (no CURVE, no ZAP) exists for experiments and is announced
with a warning at every start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from typing import Callable, Iterable

import zmq
from zmq.auth.base import Authenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from calico.common.logs import RateLimitedLog
from calico.common.validation import ValidationError, shown
from calico.common.zmqloop import DEFAULT_MAX_MESSAGE_BYTES, EventLoop, make_socket

log = logging.getLogger(__name__)

DEFAULT_SECRET_FILE = "/etc/calico/cluster.secret"
SECRET_RE = re.compile(rb"[0-9a-f]{64}")
KEY_LABEL = b"calico-curve-v1/"
KEY_STEP = "make one with make_secret.sh (README: Deploying on real hosts with Docker)"

ROLE_PLUGIN_EP = "plugin-ep"
ROLE_PLUGIN_NETWORK = "plugin-network"
ROLE_ACL_MANAGER = "acl-manager"
ROLE_FELIX = "felix"


FIXED_ROLES = (ROLE_PLUGIN_EP, ROLE_PLUGIN_NETWORK, ROLE_ACL_MANAGER, ROLE_FELIX)


def felix_host_role(hostname: str) -> str:
    """The role of one host's Felix (its short host name)."""
    return f"{ROLE_FELIX}/{hostname}"


# One ZAP domain per listening socket, and who may connect to it.
DOMAIN_EP_RESYNC = "plugin-ep-9901"        # the cluster file's Felixes: given by the plugin
DOMAIN_FELIX_ENDPOINTS = "felix-9902"
DOMAIN_NET_REQ = "plugin-network-9903"
DOMAIN_NET_PUB = "plugin-network-9904"
DOMAIN_ACL_REQ = "acl-manager-9905"
DOMAIN_ACL_PUB = "acl-manager-9906"
ADMITTED: dict[str, tuple[str, ...]] = {
    DOMAIN_FELIX_ENDPOINTS: (ROLE_PLUGIN_EP,),
    DOMAIN_NET_REQ: (ROLE_ACL_MANAGER,),
    DOMAIN_NET_PUB: (ROLE_ACL_MANAGER,),
    DOMAIN_ACL_REQ: (ROLE_FELIX,),
    DOMAIN_ACL_PUB: (ROLE_FELIX,),
}

# Why a handshake failed before ZAP was asked, as the socket monitor tells it.
_HANDSHAKE_FAULTS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "the peer does not use CURVE (insecure mode, or not Calico)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "the peer's keys do not fit (no or another cluster secret)",
}

_TRUE = re.compile(r"true|yes|on|1", re.IGNORECASE)
_FALSE = re.compile(r"false|no|off|0", re.IGNORECASE)


class SecurityError(ValueError):
    """No usable credentials: start-up stops; str() is one line saying what to do."""


def parse_flag(text: str) -> bool:
    """A yes/no setting: true/yes/on/1 or false/no/off/0."""
    text = text.strip()
    if _TRUE.fullmatch(text):
        return True
    if _FALSE.fullmatch(text):
        return False
    raise ValidationError(f"{shown(text)} is not true or false")


# --- the secret -------------------------------------------------------------------

def read_secret(path: str) -> bytes:
    """The 32 secret bytes from a file of 64 lower-case hex digits (and a newline)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(len("00" * 32) + 2)
    except FileNotFoundError:
        raise SecurityError(f"cluster secret {path}: no such file") from None
    except OSError as exc:
        raise SecurityError(f"cluster secret {path}: cannot read it ({exc.strerror})") from None
    text = data[:-1] if data.endswith(b"\n") else data
    if not SECRET_RE.fullmatch(text):
        raise SecurityError(f"cluster secret {path}: not 64 lower-case hex digits on one line")
    return bytes.fromhex(text.decode("ascii"))


def write_secret(path: str) -> bool:
    """Write a fresh secret to ``path`` (mode 0600) unless a file is there;
    True if it wrote one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return True


def _exposure(path: str) -> str | None:
    """A warning if others than the owner may read or change the secret."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"cluster secret {path} has mode {stat.S_IMODE(mode):04o}: group or others may read it "
                f"(and then speak as any component); chmod 600 it")
    return None


# --- keys -----------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85, as pyzmq's socket options want them
    secret: bytes = b""

    def __repr__(self) -> str:  # never the secret half, in a log or a traceback
        return f"KeyPair(public={self.public!r})"


class ClusterKeys:
    """Every role's key pair, derived from the cluster secret (and cached)."""

    def __init__(self, secret: bytes):
        if len(secret) != 32:
            raise ValueError("a cluster secret is 32 bytes")
        self._secret = secret
        self._pairs: dict[str, KeyPair] = {}
        self._roles: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return "ClusterKeys(<secret>)"

    def pair(self, role: str) -> KeyPair:
        pair = self._pairs.get(role)
        if pair is None:
            secret = z85.encode(hmac.new(self._secret, KEY_LABEL + role.encode(), hashlib.sha256).digest())
            pair = KeyPair(zmq.curve_public(secret), secret)
            self._pairs[role] = pair
            self._roles[pair.public] = role
        return pair

    def role_of(self, public: bytes) -> str | None:
        """The role whose public key (z85) this is, among those derived so far."""
        return self._roles.get(public)


@dataclass
class Credentials:
    """What a component starts with: its keys (None: insecure) and the
    warnings to log once logging is set up."""

    keys: ClusterKeys | None
    warnings: list[str]


def load_credentials(secret_file: str, insecure: bool, insecure_setting: str) -> Credentials:
    """The cluster's keys from ``secret_file``, or none in insecure mode.

    ``insecure_setting`` names how this component is made insecure, for
    the one line SecurityError gives when the secret is missing or bad."""
    if insecure:
        return Credentials(None, [
            f"INSECURE ({insecure_setting}): the control plane is neither authenticated nor encrypted; "
            "anything that reaches ports 9901-9906 can read, change or stop the cluster's security groups. "
            "For experiments only"])
    try:
        secret = read_secret(secret_file)
    except SecurityError as exc:
        raise SecurityError(f"{exc}; {KEY_STEP}, or for experiments only set {insecure_setting}") from None
    exposure = _exposure(secret_file)
    return Credentials(ClusterKeys(secret), [exposure] if exposure else [])


def curve_server(sock: zmq.Socket, keys: ClusterKeys, role: str, domain: str | None = None) -> None:
    """Make ``sock`` (not yet bound) a CURVE server speaking as ``role``;
    with a ZAP domain, ZAP must admit every client (no handler: nobody)."""
    pair = keys.pair(role)
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_server = True
    if domain is not None:
        sock.zap_domain = domain.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def curve_client(sock: zmq.Socket, keys: ClusterKeys, as_role: str, server_role: str) -> None:
    """Make ``sock`` (not yet connected) a CURVE client: ``as_role`` talking
    to the server of ``server_role``, whose key it checks."""
    mine = keys.pair(as_role)
    sock.curve_serverkey = keys.pair(server_role).public
    sock.curve_publickey = mine.public
    sock.curve_secretkey = mine.secret


def peer_role(frame: zmq.Frame) -> str | None:
    """The role ZAP gave the sender of a received frame (None: unauthenticated)."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None


# --- ZAP ------------------------------------------------------------------------------

class _Admission:
    """pyzmq's credentials-provider interface for one domain."""

    def __init__(self, authenticator: "ZapAuthenticator", roles: Callable[[], Iterable[str]]):
        self.authenticator = authenticator
        self.roles = roles

    def callback(self, domain: str, client_key: bytes) -> bool:
        keys = self.authenticator.keys
        if any(keys.pair(role).public == client_key for role in self.roles()):
            return True
        known = keys.role_of(client_key)
        self.authenticator.refusals(
            "refused a connection from %s on %s: %s is not admitted there", self.authenticator.peer, domain,
            f"the key of role {known!r}" if known else "an unknown key (another secret, or a host not in the cluster file)")
        return False


class ZapAuthenticator(Authenticator):
    """pyzmq's ZAP handler, with admission by role per domain and the role
    as User-Id; ``serve`` is its event-loop handler."""

    def __init__(self, context: zmq.Context, keys: ClusterKeys, refusals: RateLimitedLog):
        super().__init__(context, log=log.getChild("zap"))
        self.keys = keys
        for role in FIXED_ROLES:  # so that a refusal can name the role it met
            keys.pair(role)
        self.refusals = refusals
        self.peer = "?"

    def admit(self, domain: str, roles: Callable[[], Iterable[str]]) -> None:
        self.configure_curve_callback(domain, _Admission(self, roles))

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.keys.role_of(z85.encode(client_public_key)) or ""

    def handle_zap_message(self, msg: list[bytes]) -> None:
        # The address is only in the request; remember it for the refusal line
        # (IPv4 peers of our dual-stack sockets come as ::ffff:a.b.c.d).
        peer = msg[3].decode("ascii", "replace") if len(msg) > 3 else "?"
        self.peer = peer.removeprefix("::ffff:") if "." in peer else peer
        super().handle_zap_message(msg)

    def serve(self) -> None:
        while True:
            try:
                msg = self.zap_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handle_zap_message(msg)


# --- sockets ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Dial:
    transport: "Transport"
    kind: int
    address: str
    as_role: str
    server_role: str

    def open(self) -> zmq.Socket:
        return self.transport.connect(self.kind, self.address, self.as_role, self.server_role)


class Transport:
    """How one component makes its sockets: its context, the message size
    limit and, unless insecure, its keys and its ZAP handler (served by
    ``loop``)."""

    def __init__(self, context: zmq.Context, loop: EventLoop, keys: ClusterKeys | None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.context = context
        self.loop = loop
        self.keys = keys
        self.max_message_bytes = max_message_bytes
        self.refusals = RateLimitedLog(log, logging.WARNING)
        self._monitors: list[tuple[zmq.Socket, zmq.Socket]] = []
        self.authenticator: ZapAuthenticator | None = None
        if keys is not None:
            self.authenticator = ZapAuthenticator(context, keys, self.refusals)
            self.authenticator.start()
            loop.add_socket(self.authenticator.zap_socket, self.authenticator.serve)

    @property
    def secure(self) -> bool:
        return self.keys is not None

    def listen(self, kind: int, address: str, role: str, domain: str,
               admit: Callable[[], Iterable[str]] | None = None, options: dict[int, int] | None = None) -> zmq.Socket:
        """A socket bound to ``address``, serving as ``role``; clients must
        hold a role that ``admit`` (default: ``ADMITTED[domain]``) lists.
        ``options`` are set before binding (connections accepted later take
        the options the socket had when it was bound)."""
        sock = make_socket(self.context, kind, self.max_message_bytes)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if self.keys is not None:
            assert self.authenticator is not None
            self.authenticator.admit(domain, admit or (lambda: ADMITTED[domain]))
            curve_server(sock, self.keys, role, domain)
        try:
            sock.bind(address)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        if self.keys is not None:
            self._watch_handshakes(sock, address)
        return sock

    def client(self, kind: int, as_role: str, server_role: str,
               options: dict[int, int] | None = None) -> zmq.Socket:
        """A socket, not yet connected, that speaks as ``as_role`` and accepts
        only the server of ``server_role``; connect it after setting what
        must be set first (a monitor that must see the first handshake)."""
        sock = make_socket(self.context, kind, self.max_message_bytes)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if self.keys is not None:
            curve_client(sock, self.keys, as_role, server_role)
        return sock

    def connect(self, kind: int, address: str, as_role: str, server_role: str,
                options: dict[int, int] | None = None) -> zmq.Socket:
        """``client`` connected to ``address``."""
        sock = self.client(kind, as_role, server_role, options)
        sock.connect(address)
        return sock

    def dialer(self, kind: int, address: str, as_role: str, server_role: str) -> _Dial:
        """Opens a fresh client socket each time (for ``ReqChannel``)."""
        return _Dial(self, kind, address, as_role, server_role)

    def _watch_handshakes(self, sock: zmq.Socket, address: str) -> None:
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self._monitors.append((sock, monitor))

        def on_event() -> None:
            while True:
                try:
                    event = recv_monitor_message(monitor, zmq.NOBLOCK)
                except zmq.Again:
                    return
                value = int(event["value"])
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                    fault = f"the connection ended during the handshake ({os.strerror(value)})"
                else:
                    fault = _HANDSHAKE_FAULTS.get(value, f"protocol error {value:#x}")
                # libzmq names the listening address here, not the peer's.
                self.refusals("refused a connection on %s at the handshake: %s", address, fault)

        self.loop.add_socket(monitor, on_event)

    def close(self) -> None:
        """Close what the transport itself made (before the context's term)."""
        for sock, monitor in self._monitors:
            self.loop.remove_socket(monitor)
            if not sock.closed:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
            monitor.close(linger=0)
        self._monitors.clear()
        if self.authenticator is not None:
            self.loop.remove_socket(self.authenticator.zap_socket)
            self.authenticator.zap_socket.close(linger=0)
            self.authenticator = None
