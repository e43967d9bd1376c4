"""The oppflow worker for the benchmark, and measured variants of it.

A variant changes the worker's options, so ``--experiment NAME`` measures an alternative
setting against the production defaults without touching ``worker.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.worker import (
    PollerBehaviorAutoscaling,
    PollerBehaviorSimpleMaximum,
    UnsandboxedWorkflowRunner,
    Worker,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from starter.settings import Settings
from worker import build_worker, write_rejections


def _sdk_task_slots(config: dict[str, Any]) -> None:
    config["max_concurrent_workflow_tasks"] = 100  # the SDK's default; oppflow caps lower


def _domain_passthrough_only(config: dict[str, Any]) -> None:
    # The sandbox as it was before every module was passed through.
    restrictions = SandboxRestrictions.default.with_passthrough_modules(
        "sales", "pydantic", "pydantic_core", "annotated_types", "yaml"
    )
    config["workflow_runner"] = SandboxedWorkflowRunner(restrictions=restrictions)


EXPERIMENTS: dict[str, Callable[[dict[str, Any]], None]] = {
    # OPPFLOW_WORKFLOW_SANDBOX=false: nothing guards workflow code but the replay tests.
    "unsandboxed": lambda config: config.update(workflow_runner=UnsandboxedWorkflowRunner()),
    "sdk-task-slots": _sdk_task_slots,
    "domain-passthrough-only": _domain_passthrough_only,
    "pollers-autoscaling": lambda config: config.update(
        workflow_task_poller_behavior=PollerBehaviorAutoscaling()
    ),
    "pollers-even": lambda config: config.update(nonsticky_to_sticky_poll_ratio=1.0),
    "pollers-10": lambda config: config.update(workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(10)),
    # A task that waited longer than this on the worker's sticky queue moves to the
    # normal queue, and the worker replays the deal from its whole history.
    "sticky-60s": lambda config: config.update(sticky_queue_schedule_to_start_timeout=timedelta(seconds=60)),
    "task-slots-50": lambda config: config.update(max_concurrent_workflow_tasks=50),
    "task-slots-20": lambda config: config.update(max_concurrent_workflow_tasks=20),
    "task-slots-10": lambda config: config.update(max_concurrent_workflow_tasks=10),
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
