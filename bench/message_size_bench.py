"""How large the largest wire messages get, against MaxMessageBytes (prints figures).

The default MaxMessageBytes (16 MiB, ``calico.common.zmqloop``) must pass
the largest message a real cluster sends.  That is a GROUPUPDATE of a big
group (every member's id and addresses, plugin to ACL manager) or the
GROUPMEMBERS of it (every member's addresses, ACL manager to Felix); a
member's ACLUPDATE only names the group and stays small whatever its size.
Built here exactly as the plugin and the ACL manager build them, for groups
of 1,000 to 100,000 members with 64-character ids (Docker's) and an IPv4
and an IPv6 address each (the worst case; most endpoints have one
address), with the seed's default group rules.  The GROUPUPDATE is the
larger: about 100 bytes per member, so the default passes groups of well
over 100,000 members.

Run: ``.venv/bin/python bench/message_size_bench.py``
"""

from __future__ import annotations

import time

from calico.acl_manager.memberships import Memberships, addresses_of
from calico.acl_manager.network_store import parse_group_update
from calico.acl_manager.publisher import aclupdate_body
from calico.acl_manager.rule_processor import RuleProcessor
from calico.common import messages
from calico.common.datafiles import Endpoint, default_group_rules
from calico.common.zmqloop import DEFAULT_MAX_MESSAGE_BYTES


def members(count: int) -> list[Endpoint]:
    return [Endpoint(f"{i:064x}", (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", f"fd00::{i >> 16:x}:{i & 0xffff:x}"),
                     "aa:bb:cc:00:00:01", "h1", ("big",)) for i in range(count)]


def group_update(endpoints: list[Endpoint]) -> dict:
    return messages.make(messages.GROUPUPDATE, group="big",
                         members={ep.endpoint_id: list(ep.addrs) for ep in endpoints},
                         rules=default_group_rules("big").to_wire())


def main() -> None:
    limit = DEFAULT_MAX_MESSAGE_BYTES
    print(f"MaxMessageBytes default: {limit} bytes ({limit / 2**20:.0f} MiB)")
    print(f"{'members':>8} {'GROUPUPDATE':>14} {'GROUPMEMBERS':>14} {'ACLUPDATE':>10} {'largest / limit':>16} "
          f"{'decode GROUPUPDATE':>19}")
    for count in (1_000, 10_000, 100_000):
        update = group_update(members(count))
        raw = messages.encode(update)
        started = time.perf_counter()
        decoded = messages.decode_request(raw, {messages.GROUPUPDATE})
        decode_ms = (time.perf_counter() - started) * 1000
        spec = parse_group_update(decoded)
        processor = RuleProcessor()
        acls = processor.load([spec])
        acl_raw = aclupdate_body(acls[next(iter(acls))], messages.now_ms())
        memberships = Memberships()
        memberships.update({spec.name: addresses_of(spec)})
        members_raw = messages.encode(memberships.snapshot(spec.name))  # type: ignore[arg-type]
        largest = max(len(raw), len(acl_raw), len(members_raw))
        print(f"{count:>8} {len(raw):>14,} {len(members_raw):>14,} {len(acl_raw):>10,} {largest / limit:>15.1%} "
              f"{decode_ms:>16.0f} ms")


if __name__ == "__main__":
    main()
