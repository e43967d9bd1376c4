"""Timeouts and retries for activities that write to Postgres.

A write retries with backoff for up to a week: a Postgres outage delays writes, it never
drops them. Every write is idempotent on a business key, so a retry is harmless.
"""

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

DB_WRITE: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=15),
    schedule_to_close_timeout=timedelta(days=7),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
    ),
)

WEBHOOK_DELIVERY: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=3),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=10),
    ),
)
