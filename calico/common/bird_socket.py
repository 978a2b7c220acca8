"""BIRD's control socket: the protocol ``birdc`` speaks, read-only.

Used by ``calico-status`` (the BGP sessions) and by ``calico-health bird``
(the bird image's health check); standard library only, since both run in
the bird image, which carries no ZeroMQ.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Iterable

BIRD_SOCKETS = ("/run/bird/bird.ctl", "/var/run/bird/bird.ctl", "/run/bird.ctl", "/var/run/bird.ctl")
BIRD_TIMEOUT = 5.0
BIRD_MAX_REPLY = 4 << 20


class BirdError(RuntimeError):
    """BIRD refused a command or said something we cannot read."""


def find_bird_socket(candidates: Iterable[str] = BIRD_SOCKETS) -> str | None:
    return next((path for path in candidates if os.path.exists(path)), None)


def bird_command(path: str, command: str, timeout: float = BIRD_TIMEOUT) -> str:
    """Send one command over BIRD's control socket; its reply, raw (the
    coded lines of the protocol birdc speaks).  The session is restricted
    first (birdc -r): only ``show`` commands are allowed on it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        reader = sock.makefile("rb")
        greeting = reader.readline(4096).decode("utf-8", "replace")
        if not greeting.startswith("0001 "):
            raise BirdError(f"unexpected greeting {greeting.strip()!r}")
        replies = []
        for line in ("restrict", command):
            sock.sendall(line.encode() + b"\n")
            replies.append(_read_reply(reader))
        return replies[-1]
    except socket.timeout:
        raise BirdError(f"no answer within {timeout:g} s") from None
    finally:
        sock.close()


def _read_reply(reader: Any) -> str:
    lines, size = [], 0
    while True:
        raw = reader.readline(65536)
        if not raw:
            raise BirdError("BIRD closed the connection mid-reply")
        size += len(raw)
        if size > BIRD_MAX_REPLY:
            raise BirdError("reply too long")
        line = raw.decode("utf-8", "replace").rstrip("\n")
        lines.append(line)
        if len(line) >= 5 and line[:4].isdigit() and line[4] == " ":
            code = int(line[:4])
            if code >= 8000:
                raise BirdError(line[5:].strip())
            return "\n".join(lines) + "\n"
