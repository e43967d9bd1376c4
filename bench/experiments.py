"""The oppflow worker for the benchmark, and measured variants of it.

A variant changes the worker's options or registers a subclass of OpportunityWorkflow
under the real workflow name, so ``--experiment NAME`` measures a proposed change without
touching ``workflows/``. Each variant names the change it stands for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from starter.settings import Settings
from worker import WORKFLOWS, build_worker, write_rejections
from workflows.opportunity import OpportunityWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.persistence import OpportunityStore
    from bench import shared_processes
    from sales import escalation_ladder
    from sales.records import Notification, RecordEscalation
    from sales.state import OpportunityInput
    from workflows.retries import DB_WRITE


@workflow.defn(name="OpportunityWorkflow")
class NoIdleNotification(OpportunityWorkflow):
    """No delivery workflow when nobody would receive the webhook (the level has no endpoint
    of its own and the worker has none configured: the benchmark worker has none)."""

    @workflow.run
    async def run(self, input: OpportunityInput) -> dict[str, Any]:
        return await super().run(input)

    async def _notify(self, notification: Notification) -> None:
        if notification.endpoints:
            await super()._notify(notification)


@workflow.defn(name="OpportunityWorkflow")
class LocalEscalationRow(NoIdleNotification):
    """As ``NoIdleNotification``, and the escalation row written by a local activity (like
    every other row) instead of a regular activity."""

    @workflow.run
    async def run(self, input: OpportunityInput) -> dict[str, Any]:
        return await super().run(input)

    async def _fire_escalation(
        self, chosen: escalation_ladder.DueLevel, superseded: list[int], now: Any
    ) -> None:
        s = self.state
        record = RecordEscalation(
            opportunity_id=s.opportunity_id,
            opportunity_name=s.name,
            account=s.account,
            stage=s.stage,
            stage_entry_seq=s.stage_entry_seq,
            stage_entered_at=s.stage_entered_at,
            level=chosen.level,
            notify=chosen.step.notify.value,
            owner_id=s.owner_id,
            due_at=chosen.due_at,
            fired_at=now,
            superseded=superseded,
            amount=s.amount,
            extra_webhooks=chosen.step.webhooks,
        )
        escalation_ladder.mark_fired(s, chosen.level)
        self._changed(
            "escalation",
            f"escalation-{s.stage_entry_seq}-{chosen.level}",
            "automation",
            detail={"level": chosen.level, "notify": chosen.step.notify.value},
        )
        await self._flush()
        recorded = await workflow.execute_local_activity_method(
            OpportunityStore.record_escalation, record, **DB_WRITE
        )
        if chosen.step.webhooks:
            await self._notify(
                Notification(
                    webhook_id=recorded.webhook_id,
                    event_type="opportunity.escalated",
                    payload={"opportunity_id": s.opportunity_id, "level": chosen.level},
                    endpoints=chosen.step.webhooks,
                )
            )


@workflow.defn(name="OpportunityWorkflow")
class SharedProcess(OpportunityWorkflow):
    """Every deal pinned to the same process version shares one (frozen) SalesProcess
    object in the worker instead of holding its own copy."""

    @workflow.init
    def __init__(self, input: OpportunityInput) -> None:
        super().__init__(input)
        self.state.process = shared_processes.intern(self.state.process)

    @workflow.run
    async def run(self, input: OpportunityInput) -> dict[str, Any]:
        input.process = None  # the state holds the shared copy
        return await super().run(input)


def _passthrough_all(config: dict[str, Any]) -> None:
    restrictions = SandboxRestrictions.default.with_passthrough_all_modules()
    config["workflow_runner"] = SandboxedWorkflowRunner(restrictions=restrictions)


def _workflow(variant: type) -> Callable[[dict[str, Any]], None]:
    def replace(config: dict[str, Any]) -> None:
        config["workflows"] = [variant, *(w for w in WORKFLOWS if w is not OpportunityWorkflow)]

    return replace


EXPERIMENTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no-idle-notification": _workflow(NoIdleNotification),
    "local-escalation-row": _workflow(LocalEscalationRow),
    "shared-process": _workflow(SharedProcess),
    "passthrough-modules": _passthrough_all,
    # Applied by WorkerProcess to the worker's environment (see worker_process.py).
    "bytecode-cache": lambda config: None,
}


def oppflow_worker(
    client: Client, pool: asyncpg.Pool, settings: Settings, experiment: str | None, **options: Any
) -> tuple[Worker, asyncio.Task[None]]:
    names = [name for name in (experiment or "").split(",") if name]
    if not names:
        return build_worker(client, pool, settings, **options), asyncio.create_task(write_rejections(pool))
    # build_worker's own configuration (read from a worker on a queue nobody polls: two
    # workers of one client may not share a queue), with the variants applied.
    template = build_worker(client, pool, settings, task_queue=f"{settings.task_queue}-template", **options)
    config: dict[str, Any] = dict(template.config())
    config["task_queue"] = settings.task_queue
    for name in names:
        EXPERIMENTS[name](config)
    return Worker(**config), asyncio.create_task(write_rejections(pool))
