"""Prometheus metrics: one registry per component, served at ``/metrics``.

Off by default (PrometheusMetricsEnabled).  Each component has a metrics
class whose base does nothing (``NoMetrics`` style: every method a no-op),
so the code that records a metric never asks whether metrics are on, and
with them off nothing is imported or kept.  When on, the component makes
the prometheus_client version, which owns a ``CollectorRegistry`` of its
own (never the library's global one: several components, or several tests,
may share a process) and is updated from the component's loop thread; the
health server's thread only renders it (``exposition``), which the library
makes safe.

Names follow Go Felix's where the meaning is the same.  Counters carry the
``_total`` suffix the Python client gives every counter (Go Felix's
``felix_resyncs_started`` is ``felix_resyncs_started_total`` here); the
``_created`` series the client would add are left out, as Go's client has
none.
"""

from __future__ import annotations

import os
from typing import Any, Callable

# Read by prometheus_client when it is first imported.
os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")

# Seconds: from a few milliseconds (an idle pass) to the minute a cold start
# of thousands of endpoints may take.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def new_registry() -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_client import metrics as client_metrics

    # The library reads the variable once, when first imported: if something
    # imported it before this module set the default, say it again (0.16 has
    # no public call for it).
    if os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "").lower() in ("true", "1", "t"):
        if getattr(client_metrics, "_use_created", False):
            client_metrics._use_created = False
    return CollectorRegistry(auto_describe=True)


def exposition(registry: Any) -> Callable[[], bytes]:
    """What ``/metrics`` serves: the registry in the text format, rendered
    at each scrape (from the health server's thread)."""
    from prometheus_client.exposition import generate_latest

    return lambda: generate_latest(registry)
