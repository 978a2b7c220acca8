"""Shared group sets against the real kernel: large sets read back as written.

The kernel dumps a set too large for one netlink message over several, and
only the first names the set's type and family.  A Felix that misread the
rest would see every large group set as changed after each start and
periodic resync, and refill it whole.
"""

from __future__ import annotations

import pytest

from calico import netns
from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from felix_dp_helpers import Lab, acls, sh, spec

pytestmark = pytest.mark.root

EID = "grpkern01"
ADDR = "10.66.0.1"
MAC = "02:00:00:00:01:01"
MEMBERS = frozenset({ADDR} | {f"10.67.{i // 250}.{i % 250 + 1}" for i in range(3000)}
                    | {f"fd00:67::{i:x}" for i in range(1, 1001)})


@pytest.fixture
def lab():
    lab = Lab("gk")
    try:
        lab.add_endpoint(EID, (ADDR,), MAC)
        yield lab
    finally:
        lab.close()


def members_of(lab: Lab, name: str) -> int:
    return sum(1 for line in sh(lab.host, "ipset", "save", name).splitlines() if line.startswith("add "))


def test_a_large_group_set_read_back_after_a_resync_writes_nothing(lab):
    with netns.entered(lab.host):
        dp = Dataplane(iptables_backend=lab.backend)
    try:
        dp.start()
        rules = acls(inbound=[Rule(group="big"), Rule(group="big", protocol="tcp", port=80)],
                     outbound=["0.0.0.0/0"])
        desired = {EID: spec(EID, (ADDR,), MAC, rules)}
        dp.apply(desired, {"big": MEMBERS})
        assert members_of(lab, "felix-4g-big") == 3001
        dp.forget_kernel_cache()  # as at start-up and every periodic resync
        before = dp.writes.total()
        dp.apply(desired, {"big": MEMBERS})
        assert dp.writes.total() == before
        # And one member more is one add, not a refill.
        before = dp.writes.snapshot()
        dp.apply(desired, {"big": MEMBERS | {"10.68.0.1"}})
        after = dp.writes.snapshot()
        assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"ipset_requests": 1}
        assert members_of(lab, "felix-4g-big") == 3002
    finally:
        dp.close()
