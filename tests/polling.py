"""Waiting for a condition in tests: the one polling loop every suite uses.

Tests never assert on time; they wait, with a generous limit, for what a
user would see, and fail naming what never happened.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest


def poll(condition: Callable[[], Any], timeout: float, interval: float) -> Any:
    """Call ``condition`` until it returns something true or ``timeout``
    passes; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_until(condition: Callable[[], Any], what: str = "condition", timeout: float = 15.0,
               interval: float = 0.05, on_timeout: Callable[[], str] | None = None) -> Any:
    """Poll ``condition`` until true and return its value; fail naming ``what``."""
    value = poll(condition, timeout, interval)
    if not value:
        detail = on_timeout() if on_timeout else ""
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}" + (f"\n{detail}" if detail else ""))
    return value
