"""Felix's health report alone: the parts it reads are plain stand-ins."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from calico.felix.agent import Addresses
from calico.felix.apply_driver import PassRecord
from calico.felix.endpoints import Resync
from calico.felix.health_report import HealthReport
from calico.felix.metrics import FelixMetrics, PrometheusFelixMetrics

ADDRESSES = Addresses(plugin="tcp://plugin:9901", endpoints="tcp://felix:9902", acl_req="tcp://acl:9905",
                      acl_pub="tcp://acl:9906")


class Health:
    def __init__(self) -> None:
        self.ready: tuple[bool, str] | None = None
        self.stall: tuple | None = None
        self.published: dict | None = None

    def set_ready(self) -> None:
        self.ready = (True, "ready")

    def set_not_ready(self, reason: str) -> None:
        self.ready = (False, reason)

    def set_stall(self, since, reason) -> None:
        self.stall = (since, reason)

    def publish(self, view: dict) -> None:
        self.published = view


class Felix:
    def __init__(self, health=None, metrics=None) -> None:
        self.now = 500.0
        self.resync = SimpleNamespace(synced_at=None, current=None, synced_wall=None, started=1,
                                      plugin=SimpleNamespace(connected=False))
        self.driver = SimpleNamespace(applied_once=False, failures=0, record=PassRecord())
        self.acls = SimpleNamespace(acl_manager=SimpleNamespace(connected=False),
                                    subscription=SimpleNamespace(live=False, heard_at=0.0))
        self.endpoint_api = SimpleNamespace(table={}, last_request_wall=None)
        self.report = HealthReport(health, metrics or FelixMetrics(), lambda: self.now, hostname="host-1", addresses=ADDRESSES,
                                   resync=self.resync, driver=self.driver, acls=self.acls,  # type: ignore[arg-type]
                                   endpoint_api=self.endpoint_api)  # type: ignore[arg-type]

    def all_well(self) -> None:
        self.resync.synced_at = 400.0
        self.driver.applied_once = True
        self.acls.subscription.live = True


@pytest.fixture
def felix():
    return Felix(Health())


def test_before_the_first_resync_completes_it_says_how_far_it_got(felix):
    resync = Resync("r1", "start-up", expected=3)
    resync.announced("a", "a")
    felix.resync.current = resync
    assert felix.report.problems() == [
        "first resync with the plugin (tcp://plugin:9901) not complete: 1 of 3 endpoint(s) so far",
        "not hearing the ACL manager (nothing on tcp://acl:9906)"]


def test_after_the_resync_it_waits_for_the_first_pass_and_says_why_it_fails(felix):
    felix.all_well()
    felix.driver.applied_once = False
    felix.driver.failures = 2
    felix.driver.record.last_error = "OSError: no"
    assert felix.report.problems() == ["first dataplane pass not applied yet (failing: OSError: no)"]


def test_publish_sets_readiness_the_stall_and_the_status_view(felix):
    felix.all_well()
    felix.driver.record.failing_since = 490.0
    felix.driver.record.last_error = "OSError: no"
    felix.acls.subscription.heard_at = 499.0
    felix.report.publish()
    health = felix.report.health
    assert health.ready == (True, "ready") and health.stall == (490.0, "dataplane passes failing (last: OSError: no)")
    view = health.published
    assert view["host"] == "host-1" and view["endpoint_count"] == 0
    assert view["acl_manager"]["hearing"] is True and view["acl_manager"]["publications"] == "tcp://acl:9906"
    assert view["resync"] == {"first_completed": None, "in_progress": False, "started": 1}


def test_without_a_health_server_only_the_metrics_hear_of_the_peers():
    metrics = PrometheusFelixMetrics()
    felix = Felix(health=None, metrics=metrics)
    felix.acls.subscription.live = True
    felix.report.set_not_ready("starting")
    felix.report.publish()
    up = {peer: metrics.registry.get_sample_value("felix_peer_connected", {"peer": peer})
          for peer in ("plugin", "acl-manager-requests", "acl-manager-publications")}
    assert up == {"plugin": 0.0, "acl-manager-requests": 0.0, "acl-manager-publications": 1.0}
