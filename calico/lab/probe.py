"""Traffic probes from inside a container namespace.

``ping`` runs the real ``ping -c1 -W1`` (what a user would type);
``tcp_connect`` and the ICMP ``Echoer`` run in this process: a socket made while
the calling thread is inside a namespace stays in that namespace, so a
thread can probe from any container without starting a process.  The
in-process echo sends one request and waits a short, chosen time, which
lets convergence timing poll every few tens of milliseconds.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time

from calico import netns

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def ping(ns: str, dst: str, timeout_s: int = 1) -> bool:
    family = "-6" if ":" in dst else "-4"
    result = subprocess.run(netns.argv(ns, ["ping", family, "-n", "-q", "-c1", f"-W{timeout_s}", dst]),
                            capture_output=True, timeout=timeout_s + 10)
    return result.returncode == 0


def tcp_connect(ns: str, dst: str, port: int, timeout_s: float = 1.0) -> bool:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with netns.entered(ns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect((dst, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class Echoer:
    """An ICMP (IPv4) echo client living in one namespace; reuse it for many probes."""

    def __init__(self, ns: str):
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.ident = (os.getpid() ^ id(self)) & 0xFFFF
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _send(self, dst: str) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, self.ident, self.seq)
        payload = b"calico-lab-probe"
        packet = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + payload), self.ident,
                             self.seq) + payload
        try:
            self.sock.sendto(packet, (dst, 0))
        except OSError:
            pass  # e.g. no route yet: a probe that goes unanswered
        return self.seq

    def _replies(self, dst: str, wait_s: float) -> list[int]:
        """Sequence numbers of our echo replies from ``dst`` arriving within ``wait_s``."""
        seqs = []
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.sock], [], [], max(left, 0))
            if not ready:
                return seqs
            data, (source, _) = self.sock.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8 or source != dst:
                continue
            icmp_type, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if icmp_type == ICMP_ECHO_REPLY and ident == self.ident:
                seqs.append(seq)

    def first_answer(self, dst: str, timeout_s: float, interval_s: float = 0.01) -> float | None:
        """Probe every ``interval_s``; time.time() of the first reply (to any probe), or None."""
        deadline = time.monotonic() + timeout_s
        sent: set[int] = set()
        while time.monotonic() < deadline:
            sent.add(self._send(dst))
            if set(self._replies(dst, interval_s)) & sent:
                return time.time()
        return None

    def first_loss(self, dst: str, timeout_s: float, interval_s: float = 0.01,
                   loss_after_s: float = 0.3) -> float | None:
        """Probe every ``interval_s`` until one goes unanswered for ``loss_after_s``;
        the time.time() that probe was sent, or None if all were answered."""
        deadline = time.monotonic() + timeout_s
        pending: dict[int, tuple[float, float]] = {}  # seq -> (monotonic, wall) sent
        while time.monotonic() < deadline:
            pending[self._send(dst)] = (time.monotonic(), time.time())
            for seq in self._replies(dst, interval_s):
                pending.pop(seq, None)
            now = time.monotonic()
            lost = [wall for mono, wall in pending.values() if now - mono > loss_after_s]
            if lost:
                return min(lost)
        return None


def wait_for_echo(ns: str, dst: str, want: bool, timeout_s: float, interval_s: float = 0.01) -> float | None:
    """When pings from ``ns`` to ``dst`` start (``want`` True) or stop working:
    time.time() of the first answer, or of the first unanswered probe; None on timeout."""
    echoer = Echoer(ns)
    try:
        if want:
            return echoer.first_answer(dst, timeout_s, interval_s)
        return echoer.first_loss(dst, timeout_s, interval_s)
    finally:
        echoer.close()
