"""The weekly pipeline review: one digest per manager, sent as a signed webhook
(``digest.weekly``) by a Temporal Schedule.

For each manager the digest holds their team's open pipeline by stage, the stuck deals,
the deals past their close date and how many escalations wait in their inbox. The
webhook id comes from the manager and the ISO week, so a re-run in the same week never
sends a manager the same digest twice.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity, workflow
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import asyncpg
    from pydantic_core import to_jsonable_python

    from sales.records import Notification
    from starter import reports
    from workflows.notification import NotificationWorkflow, notify_once

DIGEST_SCHEDULE_ID = "oppflow-weekly-digest"
DIGEST_EVENT = "digest.weekly"
MAX_LISTED_DEALS = 25

READ: dict[str, Any] = dict(
    start_to_close_timeout=timedelta(minutes=1),
    schedule_to_close_timeout=timedelta(hours=6),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)),
)

MANAGERS = """
SELECT id FROM users WHERE 'manager' = ANY(roles) AND ($1::text[] IS NULL OR id = ANY($1::text[])) ORDER BY id
"""
OPEN_ESCALATIONS = "SELECT count(*) FROM escalations WHERE recipient_id = $1 AND status = 'open'"


class DigestInput(BaseModel):
    as_of: datetime | None = Field(default=None, description="default: when the run starts")
    manager_ids: list[str] | None = Field(default=None, description="default: every manager")


class ManagerDigestRequest(BaseModel):
    manager_id: str
    as_of: datetime


class ManagerDigest(BaseModel):
    manager_id: str
    name: str
    email: str
    week: str
    as_of: datetime
    pipeline: list[dict[str, Any]]
    pipeline_totals: dict[str, Any]
    stuck_count: int
    stuck: list[dict[str, Any]]
    overdue_count: int
    overdue: list[dict[str, Any]]
    open_escalations: int


class DigestSummary(BaseModel):
    week: str
    sent_to: list[str]


def iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def digest_webhook_id(manager_id: str, week: str) -> str:
    return "msg_" + hashlib.sha256(f"digest|{manager_id}|{week}".encode()).hexdigest()[:32]


class DigestActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @activity.defn(name="digest_managers")
    async def managers(self, input: DigestInput) -> list[str]:
        return [r["id"] for r in await self.pool.fetch(MANAGERS, input.manager_ids)]

    @activity.defn(name="manager_digest")
    async def manager_digest(self, request: ManagerDigestRequest) -> ManagerDigest:
        manager = await self.pool.fetchrow("SELECT name, email FROM users WHERE id = $1", request.manager_id)
        team = request.manager_id
        pipeline = await reports.pipeline(self.pool, team=team)
        stuck = await reports.stuck(self.pool, team=team, now=request.as_of)
        overdue = await reports.overdue(self.pool, team=team, today=request.as_of.date())
        escalations = await self.pool.fetchval(OPEN_ESCALATIONS, request.manager_id)
        return ManagerDigest(
            manager_id=request.manager_id,
            name=manager["name"] if manager else request.manager_id,
            email=manager["email"] if manager else "",
            week=iso_week(request.as_of),
            as_of=request.as_of,
            pipeline=to_jsonable_python(pipeline.rows),
            pipeline_totals=to_jsonable_python(pipeline.totals),
            stuck_count=len(stuck.rows),
            stuck=to_jsonable_python(stuck.rows[:MAX_LISTED_DEALS]),
            overdue_count=len(overdue.rows),
            overdue=to_jsonable_python(overdue.rows[:MAX_LISTED_DEALS]),
            open_escalations=escalations,
        )


@workflow.defn(name="WeeklyDigestWorkflow")
class WeeklyDigestWorkflow:
    @workflow.run
    async def run(self, input: DigestInput) -> DigestSummary:
        as_of = input.as_of or workflow.now()
        week = iso_week(as_of)
        managers = await workflow.execute_activity_method(
            DigestActivities.managers, input, summary="managers to send a digest to", **READ
        )
        sent: list[str] = []
        for manager_id in managers:
            digest = await workflow.execute_activity_method(
                DigestActivities.manager_digest,
                ManagerDigestRequest(manager_id=manager_id, as_of=as_of),
                summary=f"digest for {manager_id}",
                **READ,
            )
            await notify_once(
                Notification(
                    webhook_id=digest_webhook_id(manager_id, week),
                    event_type=DIGEST_EVENT,
                    payload=digest.model_dump(mode="json"),
                    endpoints=[],
                ),
                NotificationWorkflow.run,
            )
            sent.append(manager_id)
        return DigestSummary(week=week, sent_to=sent)


def digest_schedule(task_queue: str, *, day_of_week: int, hour: int, time_zone: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            WeeklyDigestWorkflow.run,
            DigestInput(),
            id="weekly-digest",
            task_queue=task_queue,
            static_summary="weekly pipeline review digest for every manager",
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    day_of_week=[ScheduleRange(day_of_week)],
                    hour=[ScheduleRange(hour)],
                    comment="weekly pipeline review",
                )
            ],
            time_zone_name=time_zone,
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
        state=ScheduleState(note="managed by oppflow: changed on every start of `oppflow dev`"),
    )


async def ensure_digest_schedule(
    client: Client,
    task_queue: str,
    *,
    day_of_week: int = 1,
    hour: int = 8,
    time_zone: str = "UTC",
    schedule_id: str = DIGEST_SCHEDULE_ID,
) -> str:
    """Create the weekly digest schedule, or bring an existing one up to date.

    ``day_of_week`` counts from 0 = Sunday (1 = Monday). Answers ``created`` or ``updated``.
    """
    schedule = digest_schedule(task_queue, day_of_week=day_of_week, hour=hour, time_zone=time_zone)
    try:
        await client.create_schedule(schedule_id, schedule)
        return "created"
    except ScheduleAlreadyRunningError:

        def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(replace)
        return "updated"
