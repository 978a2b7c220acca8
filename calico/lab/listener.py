"""A container's TCP listener for ``check``: accept, say who we are, close.

Runs inside a container namespace as ``python -m calico.lab.listener PORT
LAB_DIR`` (the lab directory is there so ``down`` can recognise the process
as the lab's).  It binds the IPv6 wildcard with IPv4 mapped in, so one
socket answers both families.
"""

from __future__ import annotations

import socket
import sys


def serve(port: int) -> None:
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind(("::", port))
    server.listen(128)
    while True:
        conn, _ = server.accept()
        try:
            conn.sendall(b"calico-lab\n")
        except OSError:
            pass
        conn.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
