"""Counting escalations two ways: rows in Postgres, and the activities that write them
(regular or local) recorded in the workflow histories (a level fired twice would schedule it twice, even
though the unique key keeps the second row out)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import datetime

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
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


# A fired level writes its row with one of these (older histories: record_escalation).
ESCALATION_WRITES = {"record_escalation", "persist_escalation"}


async def escalations_fired(client: Client, deals: list[str]) -> Counter[str]:
    """Per deal, how many times the workflow wrote an escalation row (all runs)."""
    fired: Counter[str] = Counter()
    for opp in deals:
        async for run in client.list_workflows(f"WorkflowId = '{workflow_id(opp)}'"):
            history = await client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
            fired[opp] += sum(activity_type(event) in ESCALATION_WRITES for event in history.events)
    return fired


def activity_type(event: HistoryEvent) -> str | None:
    """The activity an event schedules: a regular activity, or a local one (its marker)."""
    if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        return event.activity_task_scheduled_event_attributes.activity_type.name
    if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
        marker = event.marker_recorded_event_attributes
        if marker.marker_name == "core_local_activity" and "data" in marker.details:
            data = json.loads(marker.details["data"].payloads[0].data)
            return str(data.get("activity_type"))
    return None


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
