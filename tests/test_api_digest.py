"""The weekly review digest: a manager's team figures sent as a signed webhook by
WeeklyDigestWorkflow, once per week; and its Temporal Schedule, created or updated in place."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest_asyncio
from fastapi import FastAPI, Request
from standardwebhooks import Webhook
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.notifications import Notifier
from api.server import serve
from starter import processes
from starter.org_chart import Person, import_people
from starter.ports import free_port
from tests.helpers import assert_eq_eventually, new_task_queue
from workflows.digest import (
    DigestActivities,
    DigestInput,
    WeeklyDigestWorkflow,
    digest_webhook_id,
    ensure_digest_schedule,
)
from workflows.notification import NotificationWorkflow

AS_OF = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # ISO week 2026-W24
SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


class Receiver:
    """A real HTTP endpoint that keeps every webhook it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.app = FastAPI()
        self.app.add_api_route("/hook", self.hook, methods=["POST"])
        self.port = free_port()

    async def hook(self, request: Request) -> dict[str, bool]:
        self.received.append((dict(request.headers), await request.body()))
        return {"ok": True}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    server = asyncio.create_task(serve(endpoint.app, endpoint.port))
    await asyncio.sleep(0.3)
    try:
        yield endpoint
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


async def seed_team(pool: asyncpg.Pool) -> tuple[str, list[str]]:
    tag = uuid.uuid4().hex[:6]
    mgr, rep = f"mgr-{tag}", f"rep-{tag}"
    await import_people(
        pool,
        [
            Person(id=mgr, name="Maya Manager", email=f"maya-{tag}@example.com", roles=["manager"]),
            Person(id=rep, name="Rita Rep", email=f"rita-{tag}@example.com", manager_id=mgr, roles=["rep"]),
        ],
    )
    version = (await processes.ensure_default(pool)).version
    deals = [f"stuck-{tag}", f"fresh-{tag}"]
    for deal, amount, entered, close in [
        (deals[0], Decimal("20000"), AS_OF - timedelta(days=20), AS_OF.date() - timedelta(days=3)),
        (deals[1], Decimal("6000"), AS_OF - timedelta(days=2), AS_OF.date() + timedelta(days=30)),
    ]:
        await pool.execute(
            "INSERT INTO opportunities (id, name, account, owner_id, stage, amount, close_date, "
            "probability, forecast_category, is_closed, is_won, stage_entered_at, stage_entry_seq, "
            "escalation_level, process_name, process_version, created_at, updated_at) VALUES ($1, $1, "
            "'Acme', $2, 'Prospecting', $3, $4, 10, 'Pipeline', false, false, $5, 1, 0, 'new-business', "
            "$6, $5, $5)",
            deal,
            rep,
            amount,
            close,
            entered,
            version,
        )
    await pool.execute(
        "INSERT INTO escalations (opportunity_id, stage, stage_entry_seq, level, notify, recipient_id, "
        "due_at, fired_at, status, webhook_id) "
        "VALUES ($1, 'Prospecting', 1, 2, 'manager', $2, $3, $3, 'open', $4)",
        deals[0],
        mgr,
        AS_OF - timedelta(days=3),
        f"msg_{tag}",
    )
    return mgr, deals


async def test_a_manager_gets_one_signed_digest_per_week(
    temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool, receiver: Receiver
) -> None:
    mgr, deals = await seed_team(db_pool)
    queue = new_task_queue()
    digests = DigestActivities(db_pool)
    notifier = Notifier(db_pool, [receiver.url], [SECRET])
    async with Worker(
        temporal_env.client,
        task_queue=queue,
        workflows=[WeeklyDigestWorkflow, NotificationWorkflow],
        activities=[digests.managers, digests.manager_digest, notifier.deliver],
    ):
        summary = await temporal_env.client.execute_workflow(
            WeeklyDigestWorkflow.run,
            DigestInput(as_of=AS_OF, manager_ids=[mgr]),
            id=f"digest-{uuid.uuid4().hex}",
            task_queue=queue,
        )
        assert (summary.week, summary.sent_to) == ("2026-W24", [mgr])

        def mine() -> list[tuple[dict[str, str], bytes]]:
            return [
                (h, b) for h, b in receiver.received if h["webhook-id"] == digest_webhook_id(mgr, "2026-W24")
            ]

        await assert_eq_eventually(1, lambda: len(mine()), timeout=20)
        headers, body = mine()[0]
        message: dict[str, Any] = Webhook(SECRET).verify(body, headers)
        assert message["type"] == "digest.weekly"
        digest = message["data"]
        assert (digest["manager_id"], digest["name"], digest["week"]) == (mgr, "Maya Manager", "2026-W24")
        assert digest["pipeline_totals"] == {"count": 2, "amount": "26000.00", "weighted_amount": "2600.00"}
        assert (digest["stuck_count"], [d["opportunity_id"] for d in digest["stuck"]]) == (1, [deals[0]])
        assert (digest["overdue_count"], digest["overdue"][0]["days_overdue"]) == (1, 3)
        assert digest["open_escalations"] == 1

        await temporal_env.client.execute_workflow(
            WeeklyDigestWorkflow.run,
            DigestInput(as_of=AS_OF + timedelta(hours=2), manager_ids=[mgr]),
            id=f"digest-{uuid.uuid4().hex}",
            task_queue=queue,
        )
        await asyncio.sleep(1.0)
        assert len(mine()) == 1


async def test_the_digest_schedule_is_created_once_and_updated_in_place(
    temporal_env: WorkflowEnvironment,
) -> None:
    client = temporal_env.client
    schedule_id = f"digest-test-{uuid.uuid4().hex[:8]}"
    queue = new_task_queue()
    try:
        assert await ensure_digest_schedule(client, queue, schedule_id=schedule_id) == "created"
        assert await ensure_digest_schedule(client, queue, schedule_id=schedule_id, hour=9) == "updated"
        description = await client.get_schedule_handle(schedule_id).describe()
        calendar = description.schedule.spec.calendars[0]
        assert ([r.start for r in calendar.day_of_week], [r.start for r in calendar.hour]) == ([1], [9])
        action = description.schedule.action
        assert (action.workflow, action.task_queue) == ("WeeklyDigestWorkflow", queue)  # type: ignore[attr-defined]
    finally:
        await client.get_schedule_handle(schedule_id).delete()
