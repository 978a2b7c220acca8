"""Felix's dataplane driver alone: a recording dataplane and a clock that is a number."""

from __future__ import annotations

import logging

import pytest

from calico.felix.apply_driver import BACKOFF_MAX_SECS, ApplyDriver, backoff_secs, endpoint_states
from calico.felix.metrics import FelixMetrics
from calico.felix.state import Acls, EndpointSpec

OPEN = EndpointSpec("open", "aa:bb:cc:dd:ee:01", ("192.168.1.1",), acls=Acls())
WAITING = EndpointSpec("waiting", "aa:bb:cc:dd:ee:02", ("192.168.1.2",))


class Dataplane:
    def __init__(self) -> None:
        self.passes: list[dict] = []
        self.missing: set[str] = set()
        self.failures_left = 0
        self.forgets = 0
        self.retries = 0
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def apply(self, desired, groups):
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("netlink\nsaid no")
        self.passes.append(dict(desired))
        return set(self.missing)

    def forget_kernel_cache(self) -> None:
        self.forgets += 1

    def retry_failed_endpoints(self) -> None:
        self.retries += 1


class World:
    """What the driver asks of the rest of Felix, set by each test."""

    def __init__(self) -> None:
        self.now = 100.0
        self.desired = {"open": OPEN}
        self.first_pass_at: float | None = 100.0
        self.told = 0

    def driver(self, dataplane: Dataplane, retry_ms: int = 500) -> ApplyDriver:
        return ApplyDriver(dataplane, lambda: self.now, FelixMetrics(), retry_ms=retry_ms,
                           desired=lambda: (self.desired, {}), first_pass_at=lambda: self.first_pass_at,
                           on_pass=self.tell)

    def tell(self) -> None:
        self.told += 1


@pytest.fixture
def world():
    return World()


def test_no_pass_before_the_first_resync_however_dirty(world):
    dataplane = Dataplane()
    world.first_pass_at = None
    driver = world.driver(dataplane)
    driver.mark_dirty()
    assert driver.timer(world.now) is None
    assert dataplane.passes == []


def test_the_first_pass_waits_until_it_may_run_then_runs_once(world):
    dataplane = Dataplane()
    world.first_pass_at = 106.0
    driver = world.driver(dataplane)
    driver.mark_dirty()
    assert driver.timer(world.now) == pytest.approx(6.0)
    assert dataplane.passes == []
    world.now = 106.0
    assert driver.timer(world.now) is None
    assert dataplane.passes == [{"open": OPEN}] and driver.applied_once and world.told == 1
    driver.timer(world.now)
    assert len(dataplane.passes) == 1  # nothing dirty: no second pass


def test_after_the_first_pass_the_gate_is_not_asked_again(world):
    dataplane = Dataplane()
    driver = world.driver(dataplane)
    driver.mark_dirty()
    driver.timer(world.now)
    world.first_pass_at = None  # would hold the first pass, not later ones
    driver.mark_dirty()
    driver.timer(world.now)
    assert len(dataplane.passes) == 2


def test_a_failed_pass_forgets_the_kernel_and_backs_off_doubling(world, caplog):
    dataplane = Dataplane()
    dataplane.failures_left = 2
    driver = world.driver(dataplane)
    driver.mark_dirty()
    with caplog.at_level(logging.INFO, logger="calico.felix.apply_driver"):
        assert driver.timer(world.now) == pytest.approx(0.5)
        assert dataplane.forgets == 1 and driver.record.failing_since == 100.0
        assert driver.record.last_error == "OSError: netlink said no"
        driver.mark_dirty()
        world.now += 0.25
        driver.timer(world.now)  # in back-off: dirty waits
        assert dataplane.forgets == 1
        world.now += 0.25
        assert driver.timer(world.now) == pytest.approx(1.0)  # second failure: twice as long
        world.now += 1.0
        assert driver.timer(world.now) is None
    assert len(dataplane.passes) == 1 and driver.failures == 0 and driver.record.failing_since is None
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "Dataplane pass failed (OSError: netlink\nsaid no); re-reading the kernel, retrying in 0.5s",
        "Dataplane pass failed (OSError: netlink\nsaid no); re-reading the kernel, retrying in 1.0s"]
    assert "Dataplane pass succeeded again after 2 failure(s)" in caplog.messages
    assert driver.record.passes == 3 and driver.record.last["ok"] is True and world.told == 3


def test_backoff_grows_to_its_cap():
    assert [backoff_secs(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_secs(50) == BACKOFF_MAX_SECS


def test_missing_interfaces_are_retried_every_retry_interval_and_reported_on_change(world, caplog):
    dataplane = Dataplane()
    dataplane.missing = {"open"}
    driver = world.driver(dataplane, retry_ms=750)
    driver.mark_dirty()
    with caplog.at_level(logging.INFO, logger="calico.felix.apply_driver"):
        assert driver.timer(world.now) == pytest.approx(0.75)
        world.now += 0.75
        assert driver.timer(world.now) == pytest.approx(0.75)  # retried, still missing: said once
        dataplane.missing = set()
        world.now += 0.75
        assert driver.timer(world.now) is None
    assert len(dataplane.passes) == 3
    assert caplog.messages == ["Endpoint open: interface tapopen does not exist yet; retrying every 750 ms",
                               "Endpoint open: interface tapopen now present and programmed"]


def test_forget_drops_what_the_last_pass_said_of_an_endpoint(world):
    dataplane = Dataplane()
    dataplane.missing = {"open"}
    driver = world.driver(dataplane)
    driver.mark_dirty()
    driver.timer(world.now)
    driver.forget("open")
    assert driver.missing == set()


def test_repair_rereads_the_kernel_at_the_next_pass(world):
    dataplane = Dataplane()
    driver = world.driver(dataplane)
    driver.repair()
    assert (dataplane.forgets, dataplane.retries, driver.dirty) == (1, 1, True)


def test_endpoint_states_count_what_each_endpoint_became():
    disabled = EndpointSpec("off", "aa:bb:cc:dd:ee:03", (), enabled=False)
    failed = EndpointSpec("bad", "aa:bb:cc:dd:ee:04", (), acls=Acls())
    gone = EndpointSpec("gone", "aa:bb:cc:dd:ee:05", (), acls=Acls())
    desired = {s.endpoint_id: s for s in (OPEN, WAITING, disabled, failed, gone)}
    states = endpoint_states(desired, missing={"gone"}, failed={"bad": "why"})
    assert {k: v for k, v in states.items() if v} == {"programmed": 1, "waiting-for-acls": 1, "disabled": 1,
                                                      "fail-closed": 1, "interface-missing": 1}
