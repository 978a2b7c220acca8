"""Real packets for the root tests: captures, and packets built by hand.

``Capture`` reads every frame on one interface of a namespace (an AF_PACKET
socket opened inside it) while the body runs, and keeps the IPv4 headers:
protocol, source, destination and, for IP-in-IP (protocol 4), the same of
the inner packet.  ``echo_request`` builds a whole IPv4 ICMP echo request
and ``send_ipip`` sends one inside an outer IPv4 header the kernel adds
(raw IPPROTO_IPIP socket), the way a tunnel endpoint would.

For packets no ordinary socket would send (a chosen source address or MAC,
from 0.0.0.0, to 127.0.0.1 out of eth0): ``udp_frame`` and ``ethernet``
build Ethernet frames byte by byte, ``send_frame`` puts one on an
interface, ``send_raw`` sends a hand-built IPv4 packet through the
namespace's routing; ``send_udp``, ``udp_listening`` and ``received`` are
the plain datagram side.  Used by the e2e, dataplane and security tests.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from calico import netns

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806


@dataclass(frozen=True)
class Seen:
    proto: int
    src: str
    dst: str
    inner: tuple[int, str, str] | None = None  # (proto, src, dst) of an IP-in-IP packet's payload
    payload: bytes = b""


def _ipv4(packet: bytes) -> tuple[int, str, str, bytes] | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    return packet[9], socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), packet[ihl:]


class Capture:
    def __init__(self, ns: str, interface: str) -> None:
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((interface, 0))
        self.sock.settimeout(0.1)
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self.sock.recvfrom(65535)
            except OSError:
                continue
            # Ethernet (veth) frames carry a 14-byte header; a layer-3 device none.
            packet = frame[14:] if address[3] == 1 else frame
            if address[3] == 1 and struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
                continue
            outer = _ipv4(packet)
            if outer is None:
                continue
            proto, src, dst, payload = outer
            inner = _ipv4(payload) if proto == 4 else None
            self.seen.append(Seen(proto, src, dst, inner[:3] if inner else None,
                                  (inner[3] if inner else payload)[:64]))

    def __enter__(self) -> "Capture":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)  # frames already on their way
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def plain(self, src: str, dst: str, proto: int = 1) -> int:
        return sum(1 for s in self.seen if (s.proto, s.src, s.dst) == (proto, src, dst))

    def tunnelled(self, outer_src: str, outer_dst: str, inner_src: str, inner_dst: str) -> int:
        return sum(1 for s in self.seen if s.proto == 4 and (s.src, s.dst) == (outer_src, outer_dst)
                   and s.inner is not None and s.inner[1:] == (inner_src, inner_dst))

    def carrying(self, marker: bytes) -> list[Seen]:
        """Every packet seen (any protocol) whose payload holds ``marker``."""
        return [s for s in list(self.seen) if marker in s.payload]

    def echo_requests(self, marker: bytes) -> int:
        """ICMP echo requests (bare or tunnelled) carrying ``marker``."""
        return sum(1 for s in self.seen if (s.inner or (s.proto,))[0] == 1 and s.payload[:1] == b"\x08"
                   and marker in s.payload)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(src: str, dst: str, marker: bytes) -> bytes:
    """A whole IPv4 packet: ICMP echo request from ``src`` to ``dst`` carrying ``marker``."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + marker
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0x1234, 0, 64, 1, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + icmp


def send_ipip(ns: str, outer_dst: str, inner: bytes) -> None:
    """Send ``inner`` inside IP-in-IP from namespace ``ns`` to ``outer_dst``."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    try:
        sock.sendto(inner, (outer_dst, 0))
    finally:
        sock.close()


@contextmanager
def udp_listening(ns: str, port: int, address: str = "0.0.0.0"):
    """A UDP socket bound in ``ns`` for the body's duration (see ``received``)."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket, marker: bytes, timeout: float) -> tuple[str, int] | None:
    """The sender of a datagram carrying ``marker`` within ``timeout``, else None."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, sender = sock.recvfrom(2048)
        except OSError:
            return None
        if data == marker:
            return sender
    return None


def send_udp(ns: str, source: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
    """One datagram from inside ``ns``, from a chosen source address and port."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(source)
        sock.sendto(payload, dst)
    finally:
        sock.close()


def udp_packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """A whole IPv4 packet holding one UDP datagram, addresses as given."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload  # no UDP checksum (IPv4)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def ethernet(src_mac: str, dst_mac: str, payload: bytes, ethertype: int = ETH_P_IP) -> bytes:
    """An Ethernet frame around ``payload`` (an IPv4 packet unless ``ethertype`` says otherwise)."""
    return bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) \
        + struct.pack("!H", ethertype) + payload


def udp_frame(src_mac: str, dst_mac: str, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An Ethernet frame holding one IPv4 UDP datagram, built byte by byte, for
    packets no socket would send (from 0.0.0.0, or to 127.0.0.1 out of eth0)."""
    return ethernet(src_mac, dst_mac, udp_packet(src, dst, payload))


def gratuitous_arp(mac: str, ip: str) -> bytes:
    """A broadcast ARP reply saying that ``ip`` is at ``mac``."""
    hw, addr = bytes.fromhex(mac.replace(":", "")), socket.inet_aton(ip)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 2) + hw + addr + b"\xff" * 6 + addr
    return ethernet(mac, "ff:ff:ff:ff:ff:ff", arp, ETH_P_ARP)


def send_frame(ns: str, interface: str, frame: bytes) -> None:
    with netns.entered(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((interface, 0))
        sock.send(frame)
    finally:
        sock.close()


def send_raw(ns: str, packet: bytes) -> None:
    """Send a whole hand-built IPv4 packet (any source address) from inside
    ``ns``, routed by its destination (a raw IPPROTO_RAW socket)."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        sock.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
    finally:
        sock.close()
