"""Logging set-up shared by every component.

Three destinations, each with its own level from the config's [log] keys:
a rotating file, the screen (stderr) and syslog.  Level NONE turns one off.
Every record is one line: component, level, logger, message.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from typing import Callable


def _level(name: str) -> int | None:
    return None if name.upper() == "NONE" else getattr(logging, name.upper())


def setup_logging(component: str, log_file: str = "", file_level: str = "INFO",
                  screen_level: str = "INFO", sys_level: str = "NONE") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(f"%(asctime)s [{component}] %(levelname)s %(name)s: %(message)s")
    levels = []

    def add(handler: logging.Handler, level: int | None) -> None:
        if level is None:
            return
        handler.setLevel(level)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        levels.append(level)

    if log_file:
        directory = os.path.dirname(log_file)
        if directory:
            os.makedirs(directory, exist_ok=True)
        add(logging.handlers.RotatingFileHandler(log_file, maxBytes=10 * 1024 * 1024, backupCount=5),
            _level(file_level))
    add(logging.StreamHandler(sys.stderr), _level(screen_level))
    sys_lvl = _level(sys_level)
    if sys_lvl is not None and os.path.exists("/dev/log"):
        syslog = logging.handlers.SysLogHandler(address="/dev/log")
        syslog.ident = f"calico-{component}: "
        add(syslog, sys_lvl)
    root.setLevel(min(levels) if levels else logging.CRITICAL + 1)


class RateLimitedLog:
    """One kind of log line that a stranger can cause (a refused handshake):
    at most ``burst`` lines per ``period`` seconds, the rest counted and the
    count given with the next line let through, so a flood costs a few
    lines a minute rather than the disk."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, burst: int = 10,
                 period: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.level = level
        self.burst = burst
        self.period = period
        self.clock = clock
        self._window_start = -period
        self._in_window = 0
        self.suppressed = 0

    def __call__(self, fmt: str, *args: object) -> bool:
        """Log the line unless over the limit; True if it was logged."""
        now = self.clock()
        if now - self._window_start >= self.period:
            self._window_start = now
            self._in_window = 0
        if self._in_window >= self.burst:
            self.suppressed += 1
            return False
        self._in_window += 1
        if self.suppressed:
            fmt += " (%d similar lines suppressed before this one)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(self.level, fmt, *args)
        return True
