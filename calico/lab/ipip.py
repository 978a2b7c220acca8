"""A user-space tunl0, for lab hosts whose kernel has no IP-in-IP (ipip) driver.

Some kernels (small VM kernels, built without modules) have no ipip driver,
so no tunl0 can exist.  On such a machine the lab runs this instead, one
process per host namespace, doing what the kernel's tunl0 (mode ipip,
remote "any") does, and nothing more:

* a TUN device named ``tunl0`` (layer 3, no packet information), which
  Felix then sets up exactly as it would the kernel's: MTU, address, up;
* out: a packet the kernel routes into tunl0 is read, its route looked up
  again (``RTM_GETROUTE`` for its destination: the gateway is the other
  host, as BIRD installed it, ``via <host> dev tunl0 onlink``), and sent to
  that gateway through a raw IPPROTO_IPIP socket, which gives it its outer
  IPv4 header (protocol 4, source chosen by the kernel's routing);
* in: the raw socket receives every protocol-4 packet addressed to this
  host that the host's INPUT rules let through (Felix's check of the source
  comes first), and the inner packet is written to tunl0, where the kernel
  receives and forwards it as it would a decapsulated one.

So everything else (BIRD's routes, Felix's rules and tunl0 set-up, the
packets on the fabric) is the real thing, and the device's counters count
real packets.  It is started by ``calico-lab up`` only when the kernel
cannot create an ipip device, and stopped with the host.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import socket
import struct
import sys
from typing import Sequence

log = logging.getLogger("calico.lab.ipip")

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
DEVICE = "tunl0"
IPPROTO_IPIP = 4


def kernel_can_create(ns_argv_prefix: Sequence[str] = ()) -> bool:
    """True if the kernel has (or loads) the ipip driver: tunl0 exists in
    every namespace once it is loaded, and asking for one loads it."""
    import subprocess

    show = subprocess.run([*ns_argv_prefix, "ip", "link", "show", DEVICE], capture_output=True)
    if show.returncode == 0:
        return True
    add = subprocess.run([*ns_argv_prefix, "ip", "link", "add", DEVICE, "type", "ipip"], capture_output=True)
    return add.returncode == 0 or b"File exists" in add.stderr


def open_tun(name: str = DEVICE) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def outer_destination(ipr, inner: bytes, tun_index: int) -> str | None:
    """The host to send an inner packet to: the gateway of its route via tunl0."""
    if len(inner) < 20 or inner[0] >> 4 != 4:
        return None
    dst = socket.inet_ntoa(inner[16:20])
    for route in ipr.route("get", dst=dst):
        if route.get_attr("RTA_OIF") == tun_index:
            return route.get_attr("RTA_GATEWAY")
    return None


def run() -> None:
    from pyroute2 import IPRoute

    tun = open_tun()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
    tun_index = socket.if_nametoindex(DEVICE)
    log.info("user-space %s (index %d) running", DEVICE, tun_index)
    with IPRoute() as ipr:
        while True:
            readable, _, _ = select.select([tun, raw], [], [])
            if tun in readable:
                inner = os.read(tun, 65535)
                gateway = outer_destination(ipr, inner, tun_index)
                if gateway:
                    try:
                        raw.sendto(inner, (gateway, 0))
                    except OSError as exc:
                        log.debug("send to %s failed: %s", gateway, exc)
            if raw in readable:
                packet = raw.recv(65535)
                inner = packet[(packet[0] & 0x0F) * 4:]
                try:
                    os.write(tun, inner)
                except OSError as exc:  # tunl0 down: the kernel's would drop it too
                    log.debug("tunl0 write failed: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    # The arguments (the lab directory) only mark the process as the lab's.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        run()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
