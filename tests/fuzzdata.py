"""Hostile input for the fuzz tests: the same corpus for decoders and processes.

Deterministic (seeded), so a failure names a case that fails again.  Three
kinds of input:

* ``nasty_values()``: JSON values that have broken parsers before: deep
  nesting (10,000 levels), huge and odd numbers, wrong types, Unicode
  digits, NUL, newlines, lone surrogates, very long strings;
* ``raw_payloads()``: byte strings that are not a message at all: random
  bytes, bad UTF-8, truncated and deeply nested JSON, numbers of thousands
  of digits, NaN;
* ``mutations(message)``: a valid message with one field (or the type, or
  an extra field) replaced by each nasty value, or dropped.
"""

from __future__ import annotations

import json
import random
from typing import Any, Iterator

DEPTH = 10_000
LONG = 100_000

# Text that looks like a number or a name to a careless check.
UNICODE_DIGITS = ["²", "٣", "１２３", "8０", "߀"]
CONTROL = ["\x00", "abc\x00def", "abc\n", "\nabc", "a\r\nb", "a\tb", "\u2028", "\x1b[31mred"]


def deep_list(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int = DEPTH) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def nasty_values() -> list[Any]:
    """Python values to put into JSON messages (each JSON-encodable)."""
    nested: Any = []
    for _ in range(40):  # deep, yet within what json.dumps can write
        nested = [nested]
    values: list[Any] = [
        None, True, False, 0, -1, 1.5, 2**63, 2**64, -(2**63) - 1, 10**300, float(1e308),
        "", " ", "x" * LONG, "1" * 5000, "é" * 1000, "\ud800", "\udfff",
        [], {}, [None], {"": None}, [[]], nested, {"a": nested}, ["x"] * 10_000,
        {"addr": "192.168.1.1\n"}, [{"addr": "192.168.1.1\x00"}], [{"addr": nested}],
        {"v4": nested, "v6": {"inbound": nested}},
        "192.168.1.1\n", "fd00::1\n", "192.168.1.1/32\n", "aa:bb:cc:dd:ee:ff\n", "enabled\n",
        "-rf", "../../etc/passwd", "a" * 65, "a b", "tap$(reboot)", "x;y",
    ]
    values += UNICODE_DIGITS + CONTROL
    values += [f"192.168.1.{d}" for d in UNICODE_DIGITS] + [f"10.0.0.0/{d}" for d in UNICODE_DIGITS]
    return values


def raw_payloads(seed: int = 9, count: int = 300) -> list[bytes]:
    """Byte strings that are no message at all."""
    rng = random.Random(seed)
    payloads = [
        b"", b"\x00", b"\xff\xfe\xfd", b"\xc3\x28", b"{", b"}", b"[", b"null", b"1", b'"x"', b"[]",
        deep_list().encode(), deep_object().encode(), ('{"type":' + deep_list() + "}").encode(),
        ('{"type":"HEARTBEAT","x":' + deep_list() + "}").encode(),
        b'{"type":"HEARTBEAT","issued":1e999999}', b'{"type":"HEARTBEAT","issued":' + b"9" * 5000 + b"}",
        b'{"type":"HEARTBEAT","issued":NaN}', b'{"type":"HEARTBEAT","issued":-Infinity}',
        b'{"type":"HEARTBEAT"' + b',"a":1' * 10_000 + b"}",
        b'{"type":"\\u0000"}', b'{"type":"HEARTBEAT\\n"}', b'{"type":"\\ud800"}',
        '{"type":"HEARTBEAT","issued":١٢٣}'.encode(), b'{"type": "HEARTBEAT"}' + b" " * LONG,
        json.dumps({"type": "x" * LONG}).encode(), "\ufeff{}".encode("utf-8"), '{"type":"HEARTBEAT"}'.encode("utf-16"),
    ]
    for _ in range(count):
        length = rng.choice((1, 2, 8, 64, 1024))
        payloads.append(bytes(rng.randrange(256) for _ in range(length)))
    for _ in range(count // 3):
        # JSON-ish fragments glued at random
        parts = [rng.choice(['{', '}', '[', ']', '"type"', ':', ',', '"HEARTBEAT"', '1e9', '"\\u0000"', 'null'])
                 for _ in range(rng.randrange(1, 30))]
        payloads.append("".join(parts).encode())
    return payloads


def mutations(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``message`` with each field (and the type, and an extra field) set to
    each nasty value, and with each field dropped."""
    values = nasty_values()
    for field in [*message, "extra"]:
        for value in values:
            yield {**message, field: value}
        if field in message:
            yield {k: v for k, v in message.items() if k != field}
    # One level down: inside lists and objects of the message.
    for field, inner in message.items():
        if isinstance(inner, dict):
            for key in [*inner, "extra"]:
                for value in values:
                    yield {**message, field: {**inner, key: value}}
        elif isinstance(inner, list) and inner and isinstance(inner[0], dict):
            for key in [*inner[0], "extra"]:
                for value in values:
                    yield {**message, field: [{**inner[0], key: value}]}


def encode(message: Any) -> bytes:
    return json.dumps(message).encode("utf-8", "surrogatepass")


def barrage(*valid: dict[str, Any], oversize: int | None = None) -> list[bytes]:
    """Everything a process's request socket should survive: the raw
    payloads, the mutations of each valid request, and (given the limit)
    messages just over MaxMessageBytes."""
    payloads = raw_payloads(count=100)
    for message in valid:
        payloads += [encode(m) for m in mutations(message)]
    if oversize is not None:
        payloads += [b"x" * (oversize + 1), encode({"type": "HEARTBEAT", "pad": "x" * oversize})]
    return payloads
