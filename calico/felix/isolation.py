"""Finding the endpoints at fault when the kernel refuses a dataplane pass.

One bad endpoint never stalls the host.  ``FaultIsolation`` remembers the
endpoints the kernel accepted in the last pass that succeeded; when a pass
fails, the endpoints whose spec changed since are bisected, each half
applied together with the known-good rest, until the endpoints at fault are
found.  Each is logged once and held fail-closed (``failed``) until its
spec changes or ``retry`` (the periodic resync).  The normal path pays
nothing: the search starts only after a failure.  A failure that remains
with no changed endpoint applied (the host-wide chains, a lock) is raised
for the agent's back-off.

The pass itself is the caller's (``Dataplane._pass``); this module only
decides what each pass holds open and what it holds closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AbstractSet, Callable, Mapping

from calico.felix.state import EndpointSpec

log = logging.getLogger(__name__)

# Passes one failed pass may spend finding the endpoints at fault (about
# 2 * log2(changed) + 2 per culprit); the next pass continues from there.
MAX_ISOLATION_ATTEMPTS = 64

# One pass: make the kernel hold these endpoints, those in the set
# fail-closed; returns the ids whose interface does not exist yet.
Pass = Callable[[Mapping[str, EndpointSpec], AbstractSet[str]], set[str]]


@dataclass(frozen=True)
class FailedEndpoint:
    """An endpoint programmed fail-closed because the kernel refused its state."""

    spec: EndpointSpec
    error: str


class IsolationIncomplete(RuntimeError):
    """The search for the endpoints at fault ran out of attempts; the next
    pass carries on from what it established."""


def describe_error(exc: BaseException) -> str:
    """An exception as one log line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class FaultIsolation:
    """The endpoints held fail-closed after kernel refusals, and the state
    the kernel last accepted."""

    def __init__(self, max_attempts: int = MAX_ISOLATION_ATTEMPTS) -> None:
        self.max_attempts = max_attempts
        self.failed: dict[str, FailedEndpoint] = {}
        # The kernel accepted these specs in the last pass that succeeded
        # (open endpoints only); a failed pass bisects what changed since.
        self._good: Mapping[str, EndpointSpec] = {}
        self._good_closed: frozenset[str] = frozenset()

    def run(self, usable: Mapping[str, EndpointSpec], one_pass: Pass, forget: Callable[[], None]) -> set[str]:
        """Program ``usable`` with ``one_pass``; if the kernel refuses, ``forget``
        what the writers knew and find the endpoints at fault."""
        # A refused endpoint stays fail-closed until its spec changes.
        self.failed = {key: failed for key, failed in self.failed.items() if usable.get(key) == failed.spec}
        closed = frozenset(self.failed)
        try:
            missing = one_pass(usable, closed)
        except Exception as exc:
            forget()
            return self._isolate(usable, closed, exc, one_pass, forget)
        self._good, self._good_closed = usable, closed
        return missing

    def retry(self) -> None:
        """Let the next pass try again the endpoints the kernel refused."""
        if self.failed:
            log.info("retrying %d endpoint(s) failed closed after kernel errors: %s", len(self.failed),
                     " ".join(sorted(self.failed)))
        self.failed = {}

    def _isolate(self, usable: Mapping[str, EndpointSpec], closed: frozenset[str], error: Exception,
                 one_pass: Pass, forget: Callable[[], None]) -> set[str]:
        """After a failed pass: find the endpoints at fault and fail them closed.

        Only endpoints whose spec changed since the last good pass can be at
        fault.  The known-good state is tried first (if the kernel refuses
        that too, no endpoint is to blame and the error is raised); then the
        changed endpoints are bisected, each half tried together with
        everything known to be good so far, down to single endpoints, each
        confirmed by a pass of its own before it is blamed."""
        good = {key: spec for key, spec in self._good.items()
                if key not in self._good_closed and key in usable and key not in closed}
        changed = sorted(key for key, spec in usable.items() if key not in closed and good.get(key) != spec)
        if not changed:
            raise error
        log.info("The kernel refused a dataplane pass (%s); looking for the endpoint(s) at fault among "
                 "%d changed", describe_error(error), len(changed))
        culprits: dict[str, str] = {}
        attempts = [0]
        last: list[set[str] | None] = [None]  # missing, if the last pass tried succeeded

        def attempt(subset: list[str]) -> Exception | None:
            if attempts[0] >= self.max_attempts:
                raise IsolationIncomplete(f"gave up after {attempts[0]} passes; {describe_error(error)}")
            attempts[0] += 1
            state = {**good, **{key: usable[key] for key in subset},
                     **{key: usable[key] for key in closed | culprits.keys()}}
            try:
                last[0] = one_pass(state, closed | culprits.keys())
            except Exception as exc:
                log.debug("isolation pass with %d changed endpoint(s) failed: %s", len(subset), describe_error(exc))
                forget()
                last[0] = None
                return exc
            good.update((key, usable[key]) for key in subset)
            return None

        def bisect(items: list[str], failure: Exception | None) -> None:
            """``items`` fail on top of ``good``; ``failure`` is the error if
            that was seen for exactly these items, else None."""
            if len(items) == 1:
                failure = failure or attempt(items)
                if failure is not None:
                    culprits[items[0]] = describe_error(failure)
                    last[0] = None
                return
            first, second = items[:len(items) // 2], items[len(items) // 2:]
            first_failure = attempt(first)
            if first_failure is None:
                bisect(second, None)
                return
            bisect(first, first_failure)
            second_failure = attempt(second)
            if second_failure is not None:
                bisect(second, second_failure)

        try:
            base_failure = attempt([])
            if base_failure is not None:
                raise base_failure
            bisect(changed, None)
            missing = last[0] if last[0] is not None else one_pass(
                {**good, **{key: usable[key] for key in closed | culprits.keys()}}, closed | culprits.keys())
        finally:
            self._record_culprits(usable, culprits)
            self._good, self._good_closed = good, frozenset()  # holds open endpoints only
        return missing

    def _record_culprits(self, usable: Mapping[str, EndpointSpec], culprits: Mapping[str, str]) -> None:
        for key, error in sorted(culprits.items()):
            self.failed[key] = FailedEndpoint(usable[key], error)
            log.error("Endpoint %s failed closed: the kernel refused its state (%s); it is tried again when "
                      "it changes or at the next periodic resync", key, error)
