"""Finding the endpoints at fault when the kernel refuses a pass (no kernel).

The pass itself is replaced by a fake that refuses any state in which a
"bad" endpoint is programmed open, as the kernel would refuse its rules;
everything above it (what is tried, what is blamed, what is logged, what
stays fail-closed) is the real Dataplane.  tests/dataplane checks the same
against real kernel refusals and real packets.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from calico.felix.isolation import IsolationIncomplete
from calico.felix.state import AclRules, Acls, EndpointSpec

ACLS = Acls(v4=AclRules(inbound=(Rule(cidr="10.0.0.0/8"),)))


def endpoint(n: int, acls: Acls | None = ACLS) -> EndpointSpec:
    return EndpointSpec(f"ep{n:02d}", f"02:00:00:00:00:{n:02x}", (f"10.0.0.{n}",), acls=acls)


class FakeKernel:
    """Stands in for one pass: refuses states holding a bad spec open."""

    def __init__(self) -> None:
        self.bad: set[EndpointSpec] = set()
        self.host_broken = False
        self.fail_next = 0  # transient failures
        self.passes: list[tuple[dict, frozenset]] = []
        self.programmed: tuple[dict, frozenset] | None = None

    def __call__(self, endpoints, closed):
        self.passes.append((dict(endpoints), frozenset(closed)))
        if self.host_broken:
            raise RuntimeError("iptables-legacy-restore failed (4): felix-TO-HOST: resource busy")
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("xtables lock held for over 10s")
        refused = sorted(key for key, spec in endpoints.items() if spec in self.bad and key not in closed)
        if refused:
            raise RuntimeError(f"ipset restore failed (1): Error in line 3: Hash is full (set of {refused[0]})")
        self.programmed = (dict(endpoints), frozenset(closed))
        return set()


@pytest.fixture
def dp(monkeypatch):
    dataplane = Dataplane(ip_versions=(4,))
    kernel = FakeKernel()
    monkeypatch.setattr(dataplane, "_pass", kernel)
    dataplane.kernel = kernel
    try:
        yield dataplane
    finally:
        dataplane.close()


def state(*specs: EndpointSpec) -> dict[str, EndpointSpec]:
    return {spec.endpoint_id: spec for spec in specs}


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_nothing_failing_costs_one_pass(dp):
    desired = state(*(endpoint(n) for n in range(1, 33)))
    dp.apply(desired)
    dp.apply(desired)
    assert len(dp.kernel.passes) == 2 and dp.failed == {}


def test_the_endpoint_at_fault_is_found_failed_closed_and_named_once(dp, caplog):
    desired = state(*(endpoint(n) for n in range(1, 33)))
    dp.kernel.bad = {endpoint(23)}
    with caplog.at_level(logging.INFO, logger="calico.felix"):
        assert dp.apply(desired) == set()
    assert set(dp.failed) == {"ep23"}
    programmed, closed = dp.kernel.programmed
    assert programmed == desired and closed == {"ep23"}  # every other endpoint as desired, open
    assert errors(caplog) == [
        "Endpoint ep23 failed closed: the kernel refused its state (RuntimeError: ipset restore failed (1): "
        "Error in line 3: Hash is full (set of ep23)); it is tried again when it changes or at the next "
        "periodic resync"]
    # the failed pass, the known-good state, a bisection over 32, one confirmation
    assert len(dp.kernel.passes) <= 2 + 2 * 5 + 1


def test_every_endpoint_at_fault_is_found(dp):
    desired = state(*(endpoint(n) for n in range(1, 41)))
    dp.kernel.bad = {endpoint(3), endpoint(4), endpoint(31)}
    dp.apply(desired)
    assert set(dp.failed) == {"ep03", "ep04", "ep31"}
    assert dp.kernel.programmed == (desired, frozenset({"ep03", "ep04", "ep31"}))


def test_only_changed_endpoints_are_suspects_and_the_rest_keeps_its_good_state(dp):
    good = state(*(endpoint(n) for n in range(1, 9)))
    dp.apply(good)
    narrower = replace(endpoint(5), acls=Acls())
    desired = {**good, "ep05": narrower, "ep09": endpoint(9)}
    dp.kernel.bad = {endpoint(9)}
    dp.kernel.passes.clear()
    dp.apply(desired)
    assert set(dp.failed) == {"ep09"}
    assert dp.kernel.programmed == (desired, frozenset({"ep09"}))
    # Every pass tried kept the unchanged endpoints as they were.
    for endpoints, _ in dp.kernel.passes:
        assert all(endpoints[key] == good[key] for key in good if key != "ep05")


def test_a_failed_endpoint_stays_closed_until_it_changes_or_the_periodic_retry(dp):
    desired = state(endpoint(1), endpoint(2))
    dp.kernel.bad = {endpoint(2)}
    dp.apply(desired)
    dp.kernel.passes.clear()
    dp.apply(desired)  # unchanged: programmed fail-closed straight away, no search
    assert len(dp.kernel.passes) == 1 and dp.kernel.passes[0][1] == {"ep02"}
    dp.apply({**desired, "ep02": replace(endpoint(2), addrs=("10.0.0.22",))})  # changed: tried again
    assert dp.failed == {} and dp.kernel.programmed[1] == frozenset()
    dp.apply(desired)
    assert set(dp.failed) == {"ep02"}
    dp.kernel.bad = set()
    dp.retry_failed_endpoints()
    dp.apply(desired)
    assert dp.failed == {} and dp.kernel.programmed == (desired, frozenset())


def test_a_failure_no_endpoint_explains_is_raised(dp, caplog):
    dp.apply(state(endpoint(1)))
    dp.kernel.host_broken = True
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="felix-TO-HOST"):
        dp.apply(state(endpoint(1), endpoint(2)))
    assert dp.failed == {} and not errors(caplog)
    with pytest.raises(RuntimeError):
        dp.apply(state(endpoint(1)))  # nothing changed at all: nothing to search


def test_a_transient_failure_blames_nobody(dp):
    dp.kernel.fail_next = 1
    desired = state(*(endpoint(n) for n in range(1, 9)))
    dp.apply(desired)
    assert dp.failed == {} and dp.kernel.programmed == (desired, frozenset())


def test_a_search_out_of_attempts_keeps_what_it_found_for_the_next_pass(monkeypatch):
    dp = Dataplane(ip_versions=(4,), max_isolation_attempts=6)
    kernel = FakeKernel()
    monkeypatch.setattr(dp, "_pass", kernel)
    try:
        desired = state(*(endpoint(n) for n in range(1, 17)))
        kernel.bad = {endpoint(1), endpoint(9), endpoint(16)}
        with pytest.raises(IsolationIncomplete):
            dp.apply(desired)
        for _ in range(5):
            try:
                dp.apply(desired)
                break
            except IsolationIncomplete:
                continue
        assert set(dp.failed) == {"ep01", "ep09", "ep16"}
        assert kernel.programmed == (desired, frozenset({"ep01", "ep09", "ep16"}))
    finally:
        dp.close()
