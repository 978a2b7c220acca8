"""Felix's dataplane driver: when to hand the desired state to the dataplane.

Handlers elsewhere only mark the desired state dirty; the driver, an after
callback of the event loop (it runs every turn, after the due timers), then
runs one pass over the whole state,
so every message that was ready in one wake-up costs one kernel pass.

The first pass waits for the first resync with the plugin (applying the
empty table of a freshly started Felix would tear down what a previous run
left working), and then at most ConnectionTimeoutMillis more for the ACLs
and group members of the endpoints it learnt.  A pass that raises makes the
dataplane forget what it believed about the kernel and is retried after a
growing back-off, so a persistent fault is neither a busy loop nor a crash.
Endpoints whose interface does not exist yet are retried every
EndpointRetryTimeMillis.  Each pass is recorded (``PassRecord``) for the
health report and the metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from calico.felix.metrics import ENDPOINT_STATES, FelixMetrics
from calico.felix.state import EndpointSpec, GroupAddrs

log = logging.getLogger(__name__)

BACKOFF_MIN_SECS = 0.5
BACKOFF_MAX_SECS = 30.0


class Dataplane(Protocol):
    def start(self) -> None: ...
    def apply(self, desired: Mapping[str, EndpointSpec], groups: GroupAddrs) -> set[str]: ...
    def forget_kernel_cache(self) -> None: ...
    def retry_failed_endpoints(self) -> None: ...


def backoff_secs(failures: int) -> float:
    """How long to wait after the ``failures``-th pass in a row failed."""
    return min(BACKOFF_MIN_SECS * 2 ** (failures - 1), BACKOFF_MAX_SECS)


def endpoint_states(desired: Mapping[str, EndpointSpec], missing: set[str],
                    failed: Mapping[str, Any]) -> dict[str, int]:
    """How many endpoints the last pass left in each state of ENDPOINT_STATES."""
    by_state = dict.fromkeys(ENDPOINT_STATES, 0)
    for endpoint_id, spec in desired.items():
        if endpoint_id in missing:
            state = "interface-missing"
        elif endpoint_id in failed:
            state = "fail-closed"
        elif not spec.enabled:
            state = "disabled"
        elif spec.acls is None:
            state = "waiting-for-acls"
        else:
            state = "programmed"
        by_state[state] += 1
    return by_state


@dataclass
class PassRecord:
    """What /status and calico-status show of the passes (``at`` is wall-clock)."""

    passes: int = 0
    last: dict[str, Any] | None = None
    last_error: str = ""
    failing_since: float | None = None  # loop clock: first failed pass since the last good one
    by_state: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINT_STATES, 0))


class ApplyDriver:
    def __init__(self, dataplane: Dataplane, clock: Callable[[], float], metrics: FelixMetrics, *,
                 retry_ms: int, desired: Callable[[], tuple[Mapping[str, EndpointSpec], GroupAddrs]],
                 first_pass_at: Callable[[], float | None], on_pass: Callable[[], None]) -> None:
        """``desired`` gives the whole desired state; ``first_pass_at`` when
        the first pass may run (None: not yet); ``on_pass`` is told after
        every pass, good or bad."""
        self.dataplane = dataplane
        self.clock = clock
        self.metrics = metrics
        self.retry_ms = retry_ms
        self._desired = desired
        self._first_pass_at = first_pass_at
        self._on_pass = on_pass
        self.dirty = False
        self.applied_once = False
        self.missing: set[str] = set()  # endpoints whose interface the last pass did not find
        self.failures = 0
        self.last_apply_end = clock()
        self.record = PassRecord()
        self._retry_at: float | None = None

    def mark_dirty(self) -> None:
        self.dirty = True

    def forget(self, endpoint_id: str) -> None:
        self.missing.discard(endpoint_id)

    def start(self) -> None:
        self.dataplane.start()
        self.count_kernel_writes()

    def repair(self) -> None:
        """Re-read the kernel and repair any drift at the next pass."""
        self.dataplane.forget_kernel_cache()
        self.dataplane.retry_failed_endpoints()
        self.dirty = True

    def timer(self, now: float) -> float | None:
        if not self.applied_once:
            start_at = self._first_pass_at()
            if start_at is None:
                return None
            if now < start_at:
                return start_at - now
        retry_due = self._retry_at is not None and now >= self._retry_at
        in_backoff = self.failures > 0 and not retry_due
        if (self.dirty and not in_backoff) or retry_due:
            self.apply()
        if self._retry_at is None:
            return None
        return max(self._retry_at - self.clock(), 0.0)

    def apply(self) -> None:
        """One dataplane pass over the whole desired state."""
        desired, groups = self._desired()
        self.dirty = False
        self._retry_at = None
        started, started_wall = time.perf_counter(), time.time()
        try:
            missing = self.dataplane.apply(desired, groups)
        except Exception as exc:
            self._failed(started, started_wall, desired, exc)
            return
        if self.failures:
            log.info("Dataplane pass succeeded again after %d failure(s)", self.failures)
        self.failures = 0
        self.applied_once = True
        self.last_apply_end = self.clock()
        self._note_missing(set(missing) & set(desired), desired)
        self._pass_done(started, started_wall, desired)
        if self.missing:
            self._retry_at = self.last_apply_end + self.retry_ms / 1000.0
        log.debug("Dataplane pass done: %d endpoint(s), %d waiting for their interface",
                  len(desired), len(self.missing))

    def _failed(self, started: float, started_wall: float, desired: Mapping[str, EndpointSpec],
                exc: Exception) -> None:
        self._pass_done(started, started_wall, desired, error=exc)
        self.failures += 1
        backoff = backoff_secs(self.failures)
        log.error("Dataplane pass failed (%s: %s); re-reading the kernel, retrying in %.1fs",
                  type(exc).__name__, exc, backoff)
        log.debug("Dataplane failure detail", exc_info=True)
        try:
            self.dataplane.forget_kernel_cache()
        except Exception as forget_exc:
            log.error("Dataplane could not forget its kernel cache: %s", forget_exc)
        self.last_apply_end = self.clock()
        self._retry_at = self.last_apply_end + backoff

    def _pass_done(self, started: float, started_wall: float, desired: Mapping[str, EndpointSpec],
                   error: Exception | None = None) -> None:
        seconds = time.perf_counter() - started
        record = self.record
        record.passes += 1
        self.metrics.pass_done(seconds, error is None)
        self.count_kernel_writes()
        if error is None:
            record.failing_since = None
            record.by_state = endpoint_states(desired, self.missing, getattr(self.dataplane, "failed", {}))
            self.metrics.endpoints(len(desired), record.by_state)
        else:
            if record.failing_since is None:
                record.failing_since = self.clock()
            record.last_error = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        record.last = {"at": started_wall, "seconds": round(seconds, 6), "ok": error is None,
                       "endpoints": len(desired), "error": None if error is None else record.last_error}
        self._on_pass()

    def count_kernel_writes(self) -> None:
        writes = getattr(self.dataplane, "writes", None)
        if writes is not None:
            ipsets = getattr(self.dataplane, "ipsets", None)
            self.metrics.kernel_writes(writes.snapshot(), getattr(ipsets, "request_errors", 0))

    def _note_missing(self, missing: set[str], desired: Mapping[str, EndpointSpec]) -> None:
        for endpoint_id in sorted(missing - self.missing):
            log.info("Endpoint %s: interface %s does not exist yet; retrying every %d ms", endpoint_id,
                     desired[endpoint_id].interface, self.retry_ms)
        for endpoint_id in sorted(self.missing - missing):
            if endpoint_id in desired:
                log.info("Endpoint %s: interface %s now present and programmed", endpoint_id,
                         desired[endpoint_id].interface)
        self.missing = missing
