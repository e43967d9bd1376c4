"""The oppflow worker for the benchmark, and measured variants of it.

Variants are subclasses registered under the real workflow name, so a run with
``--experiment NAME`` measures a proposed change without touching ``workflows/``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from starter.settings import Settings
from worker import WORKFLOWS, build_worker, write_rejections
from workflows.opportunity import OpportunityWorkflow

with workflow.unsafe.imports_passed_through():
    from sales.records import Notification
    from sales.state import OpportunityInput


@workflow.defn(name="OpportunityWorkflow")
class NoIdleNotification(OpportunityWorkflow):
    """Starts no delivery workflow when the level has no endpoint of its own and the worker
    has none configured (the benchmark worker has none)."""

    @workflow.run
    async def run(self, input: OpportunityInput) -> dict[str, Any]:
        return await super().run(input)

    async def _notify(self, notification: Notification) -> None:
        if notification.endpoints:
            await super()._notify(notification)


EXPERIMENTS: dict[str, type] = {"no-idle-notification": NoIdleNotification}


def oppflow_worker(
    client: Client, pool: asyncpg.Pool, settings: Settings, experiment: str | None, **options: Any
) -> tuple[Worker, asyncio.Task[None]]:
    worker = build_worker(client, pool, settings, **options)
    if experiment:
        # Same worker as build_worker's, with the variant in place of OpportunityWorkflow.
        replaced = EXPERIMENTS[experiment]
        config: dict[str, Any] = dict(worker.config())
        config["workflows"] = [replaced, *(w for w in WORKFLOWS if w is not OpportunityWorkflow)]
        worker = Worker(**config)
    return worker, asyncio.create_task(write_rejections(pool))
