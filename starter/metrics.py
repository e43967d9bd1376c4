"""oppflow's own Prometheus metrics: what happens to deals (stage changes, refused commands,
escalations) and what fails on the way out (webhooks).

Workflow code does no I/O, so the counting happens where rows are written: the persist
activity, the escalation activity, the webhook activity and the worker's rejection writer.
Activities run at least once, so a retry after a crash between COMMIT and the reply can
count a change twice; the database rows are the exact record, these are for dashboards.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, make_asgi_app, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sales.records import PersistBatch, RecordEscalation, RejectedCommand

CHANGES = Counter("oppflow_changes", "Applied changes written to Postgres, by kind of change", ["kind"])
STAGE_CHANGES = Counter(
    "oppflow_stage_changes",
    "Stage changes written to Postgres (creation included), by stage entered and stage left",
    ["stage", "from_stage"],
)
REFUSALS = Counter(
    "oppflow_commands_refused", "Commands refused by a rule, by rule and command", ["rule", "command"]
)
ESCALATIONS = Counter(
    "oppflow_escalations", "Escalation levels fired, by level and recipient kind", ["level", "notify"]
)
WEBHOOK_FAILURES = Counter(
    "oppflow_webhook_failures", "Failed webhook delivery attempts, by endpoint", ["endpoint"]
)


def observe_batch(batch: PersistBatch) -> None:
    """A batch of changes was committed."""
    for change in batch.changes:
        CHANGES.labels(change.kind).inc()
        if (stage_change := change.stage_change) is not None:
            STAGE_CHANGES.labels(stage_change.to_stage, stage_change.from_stage or "").inc()


def observe_rejections(items: Iterable[RejectedCommand]) -> None:
    """Refused commands were written to ``rejected_commands``."""
    for item in items:
        REFUSALS.labels(item.rule, item.command).inc()


def observe_escalation(esc: RecordEscalation) -> None:
    """An escalation level was recorded for the first time."""
    ESCALATIONS.labels(str(esc.level), esc.notify).inc()


def observe_webhook_failure(endpoint: str) -> None:
    """One delivery attempt to one endpoint failed."""
    parts = urlsplit(endpoint)
    # Credentials and query strings may carry secrets: the label keeps scheme, host, port, path.
    port = f":{parts.port}" if parts.port else ""
    WEBHOOK_FAILURES.labels(f"{parts.scheme}://{parts.hostname}{port}{parts.path}").inc()


class TemporalSdkMetrics(Collector):
    """Re-exposes the Temporal SDK's Prometheus metrics (served by the SDK runtime on a
    loopback port) so one ``/metrics`` scrape returns the SDK's and oppflow's together."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url
        self.timeout = timeout

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                text = response.read().decode()
        except OSError:
            return
        yield from text_string_to_metric_families(text)


def add_sdk_metrics(url: str) -> TemporalSdkMetrics:
    collector = TemporalSdkMetrics(url)
    REGISTRY.register(collector)
    return collector


def serve_metrics(port: int, addr: str = "0.0.0.0") -> tuple[WSGIServer, threading.Thread]:
    """``/metrics`` for a worker process, in a background thread."""
    return start_http_server(port, addr=addr)


def observe_webhook_failures(endpoints: Iterable[str]) -> None:
    for endpoint in endpoints:
        observe_webhook_failure(endpoint)


def metrics_app() -> Any:
    """An ASGI app serving ``/metrics`` to mount in the HTTP API (``app.mount("/metrics", ...)``)."""
    return make_asgi_app()
