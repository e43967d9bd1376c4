"""Counting escalations two ways: rows in Postgres, and ``record_escalation`` activities
scheduled in the workflow histories (a level fired twice would schedule it twice, even
though the unique key keeps the second row out)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from starter.client import workflow_id


async def escalation_rows(pool: asyncpg.Pool, deals: list[str]) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT opportunity_id, stage_entry_seq, level, due_at, fired_at FROM escalations "
        "WHERE opportunity_id = ANY($1) AND subject = 'stage'",
        deals,
    )


async def all_escalated(pool: asyncpg.Pool, deals: list[str]) -> bool:
    return len(await escalation_rows(pool, deals)) >= len(deals)


async def escalations_fired(client: Client, deals: list[str]) -> Counter[str]:
    """Per deal, how many times the workflow scheduled ``record_escalation`` (all runs)."""
    fired: Counter[str] = Counter()
    for opp in deals:
        async for run in client.list_workflows(f"WorkflowId = '{workflow_id(opp)}'"):
            history = await client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
            for event in history.events:
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and (
                    event.activity_task_scheduled_event_attributes.activity_type.name == "record_escalation"
                ):
                    fired[opp] += 1
    return fired


async def open_opportunities(client: Client, task_queue: str, expect: int | None = None) -> int:
    """Running deals on the task queue; with ``expect``, waits (visibility lags) up to 20 s for it."""
    query = (
        f"TaskQueue = '{task_queue}' AND WorkflowType = 'OpportunityWorkflow' AND ExecutionStatus = 'Running'"
    )
    deadline = time.monotonic() + 20
    while True:
        count = (await client.count_workflows(query)).count
        if expect is None or count == expect or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.3)


def lateness(rows: list[asyncpg.Record], since: datetime) -> float:
    """Seconds from ``since`` (a recovery) to the last escalation fired."""
    return max((r["fired_at"] - since).total_seconds() for r in rows) if rows else 0.0
