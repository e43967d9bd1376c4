"""The oppflow worker: runs opportunity, hand-off and notification workflows and their
activities on the task queue. Start as many as the load needs; they share the queue."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import rejection_log
from activities.notifications import Notifier
from activities.persistence import OpportunityStore
from sales.records import RejectedCommand
from starter import metrics, observability
from starter.settings import Settings
from workflows.digest import DigestActivities, WeeklyDigestWorkflow
from workflows.handoff import HandoffWorkflow
from workflows.notification import NotificationWorkflow
from workflows.opportunity import OpportunityWorkflow

log = logging.getLogger("oppflow.worker")

# Every module a workflow imports is shared with the host instead of re-imported for each
# workflow run: our workflow modules hold no module state, and the sandbox's runtime checks
# (clock, randomness, I/O) still apply. Measured: half the memory per open deal, and a
# restarted worker serves its deals as fast as a bare entity workflow's worker.
SANDBOX = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_all_modules())

WORKFLOWS: Sequence[type] = (OpportunityWorkflow, HandoffWorkflow, NotificationWorkflow, WeeklyDigestWorkflow)


def build_worker(
    client: Client, pool: asyncpg.Pool, settings: Settings, *, task_queue: str | None = None, **options: Any
) -> Worker:
    store = OpportunityStore(
        pool, settings.api_public_url(), settings.jwt_secret, webhook_urls=settings.webhook_urls
    )
    secrets = [s.strip() for s in (settings.webhook_secret or "").split(",") if s.strip()]
    notifier = Notifier(pool, settings.webhook_urls, secrets)
    digests = DigestActivities(pool)
    options.setdefault("max_concurrent_activities", settings.db_pool_max * 2)
    options.setdefault("max_concurrent_local_activities", settings.db_pool_max * 2)
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=10))
    options.setdefault("interceptors", observability.worker_interceptors())
    options.setdefault(
        "workflow_runner", SANDBOX if settings.workflow_sandbox else UnsandboxedWorkflowRunner()
    )
    options.setdefault("max_cached_workflows", settings.max_cached_workflows)
    options.setdefault("max_concurrent_workflow_tasks", settings.max_concurrent_workflow_tasks)
    options.setdefault(
        "sticky_queue_schedule_to_start_timeout", timedelta(seconds=settings.sticky_queue_timeout_seconds)
    )
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=list(WORKFLOWS),
        activities=[
            store.persist,
            store.persist_escalation,
            store.record_escalation,
            store.org_chain,
            notifier.deliver,
            digests.managers,
            digests.manager_digest,
        ],
        **options,
    )


# Errors that mean "the database is away or restarting": the refusals wait and retry.
DATABASE_AWAY = (
    TimeoutError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


async def write_rejections(pool: asyncpg.Pool, interval: float = 0.5) -> None:
    """Flush refused commands noted by update validators into ``rejected_commands``."""
    store = OpportunityStore(pool)
    while True:
        items = rejection_log.drain()
        if items:
            try:
                await store.write_rejections(items)
                metrics.observe_rejections(items)
            except DATABASE_AWAY as exc:
                log.warning("rejected-command audit delayed: %s", exc)
                rejection_log.requeue(items)
                await asyncio.sleep(2)
            except Exception:
                # Not the database being away: write them one by one, so one refusal that
                # cannot be stored costs only itself and the writer keeps running.
                await _write_one_by_one(store, items)
        await asyncio.sleep(interval)


async def _write_one_by_one(store: OpportunityStore, items: list[RejectedCommand]) -> None:
    for index, item in enumerate(items):
        try:
            await store.write_rejections([item])
            metrics.observe_rejections([item])
        except DATABASE_AWAY:
            rejection_log.requeue(items[index:])
            return
        except Exception:
            log.exception("refused command %s could not be audited", item.request_id[:80])


async def run_worker(client: Client, pool: asyncpg.Pool, settings: Settings, **options: Any) -> None:
    worker = build_worker(client, pool, settings, **options)
    audit = asyncio.create_task(write_rejections(pool))
    try:
        await worker.run()
    finally:
        audit.cancel()


async def main() -> None:
    from db.pool import create_pool
    from starter.connect import connect_temporal
    from starter.settings import get_settings

    settings = get_settings()
    observability.setup_worker_process(settings.metrics_port)
    client = await connect_temporal(settings)
    if not settings.database_url:
        raise SystemExit(
            "DATABASE_URL is not set: a standalone worker needs the Postgres that oppflow migrated"
        )
    pool = await create_pool(settings.database_url, settings.db_pool_min, settings.db_pool_max)
    # SIGTERM (docker stop, a deploy) cancels the run: the worker finishes in-flight tasks
    # within graceful_shutdown_timeout and leaves, so its deals move to another worker at once.
    running = asyncio.current_task()
    if running is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, running.cancel)
    try:
        await run_worker(client, pool, settings)
    except asyncio.CancelledError:
        log.info("worker stopped on SIGTERM")
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
