"""Stuck deals climb the escalation ladder on durable timers: a month of ladder runs in
seconds on the dev server's per-workflow time skipping."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from standardwebhooks import Webhook
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.persistence import OpportunityStore
from sales.durations import add_business_days
from sales.records import (
    Change,
    EscalatedBatch,
    EscalationRecorded,
    EscalationStatusChange,
    OpportunityRow,
    PersistBatch,
    RecordEscalation,
)
from starter import escalation_check
from starter.client import workflow_id
from starter.settings import Settings
from tests.helpers import assert_eq_eventually, start_time_skipping_server
from tests.sales_team import App, running_app
from tests.unit.factories import deal
from tests.webhook_receiver import Receiver, webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"oppflow-test-secret-0123456789ab").decode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_time_skipping_server()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def app(
    skipping_env: WorkflowEnvironment, db_pool: asyncpg.Pool, receiver: Receiver
) -> AsyncIterator[App]:
    settings = Settings(webhook_urls=[f"{receiver.base_url}/hooks"], webhook_secret=SECRET)
    async with running_app(skipping_env.client, db_pool, settings) as running:
        yield running


async def new_deal(app: App, **extra: Any) -> tuple[str, WorkflowHandle]:
    opp = app.opp_id()
    await app.client.create(
        actor=app.team.actor("rep"),
        name="Globex renewal",
        account="Globex",
        owner_id=app.team.id("rep"),
        opportunity_id=opp,
        amount="12000",
        **extra,
    )
    return opp, app.temporal.get_workflow_handle(workflow_id(opp))


async def ladder(app: App, opp: str) -> list[tuple[int, str | None, str]]:
    rows = await app.pool.fetch(
        "SELECT level, recipient_id, status FROM escalations WHERE opportunity_id = $1 "
        "AND subject = 'stage' ORDER BY stage_entry_seq, level",
        opp,
    )
    return [(r["level"], r["recipient_id"], r["status"]) for r in rows]


async def days_in(env: WorkflowEnvironment, handle: WorkflowHandle, days: float) -> None:
    await env.fast_forward(handle, timedelta(days=days))  # type: ignore[attr-defined]


async def test_a_stuck_deal_climbs_owner_manager_then_above(
    app: App, skipping_env: WorkflowEnvironment
) -> None:
    opp, handle = await new_deal(app)
    started = time.monotonic()

    await days_in(skipping_env, handle, 13.9)
    assert await ladder(app, opp) == []
    await days_in(skipping_env, handle, 0.2)
    await assert_eq_eventually([(1, app.team.id("rep"), "open")], lambda: ladder(app, opp))
    await days_in(skipping_env, handle, 3)
    await days_in(skipping_env, handle, 4)
    await days_in(skipping_env, handle, 9)

    await assert_eq_eventually(
        [(1, app.team.id("rep"), "open"), (2, app.team.id("mgr"), "open"), (3, app.team.id("vp"), "open")],
        lambda: ladder(app, opp),
    )
    print(f"30 days of ladder took {time.monotonic() - started:.2f}s of wall time")
    state = await app.client.state(opp)
    assert state["escalation_level"] == 3
    assert state["next_escalation_due_at"] is None


async def test_an_unrelated_message_does_not_restart_the_clock(
    app: App, skipping_env: WorkflowEnvironment
) -> None:
    opp, handle = await new_deal(app)
    await days_in(skipping_env, handle, 10)
    await app.client.update_fields(opp, actor=app.team.actor("rep"), fields={"pain_points": "slow invoicing"})
    await app.client.record_activity(opp, actor=app.team.actor("rep"), kind="call", subject="check-in")
    await days_in(skipping_env, handle, 4.1)
    await assert_eq_eventually([(1, app.team.id("rep"), "open")], lambda: ladder(app, opp))


async def test_a_stage_change_resets_the_clock(app: App, skipping_env: WorkflowEnvironment) -> None:
    opp, handle = await new_deal(app)
    await days_in(skipping_env, handle, 10)
    await app.client.change_stage(opp, actor=app.team.actor("rep"), stage="Qualification")
    await days_in(skipping_env, handle, 13.9)
    assert await ladder(app, opp) == []
    await days_in(skipping_env, handle, 0.2)
    await assert_eq_eventually([(1, app.team.id("rep"), "open")], lambda: ladder(app, opp))
    state = await app.client.state(opp)
    assert (state["stage"], state["escalation_level"]) == ("Qualification", 1)


async def test_paused_time_does_not_count(app: App, skipping_env: WorkflowEnvironment) -> None:
    opp, handle = await new_deal(app)
    await days_in(skipping_env, handle, 5)
    await app.client.pause_clock(opp, actor=app.team.actor("rep"), reason="customer in budget freeze")
    await days_in(skipping_env, handle, 20)
    assert await ladder(app, opp) == []
    assert (await app.client.state(opp))["clock"]["pause_reason"] == "customer in budget freeze"
    await app.client.resume_clock(opp, actor=app.team.actor("rep"))
    await days_in(skipping_env, handle, 8.9)
    assert await ladder(app, opp) == []
    await days_in(skipping_env, handle, 0.2)
    await assert_eq_eventually([(1, app.team.id("rep"), "open")], lambda: ladder(app, opp))


async def test_a_pause_with_a_resume_date_resumes_by_itself(
    app: App, skipping_env: WorkflowEnvironment
) -> None:
    opp, handle = await new_deal(app)
    now = await skipping_env.get_current_time(handle)
    await app.client.pause_clock(
        opp, actor=app.team.actor("mgr"), reason="legal review", until=(now + timedelta(days=3)).isoformat()
    )
    await days_in(skipping_env, handle, 3.1)
    await assert_eq_eventually(None, lambda: _paused_since(app, opp))
    await days_in(skipping_env, handle, 14)
    await assert_eq_eventually([(1, app.team.id("rep"), "open")], lambda: ladder(app, opp))


async def _paused_since(app: App, opp: str) -> object:
    return (await app.client.state(opp))["clock"]["paused_since"]


async def test_snooze_pushes_the_next_level_to_a_date(app: App, skipping_env: WorkflowEnvironment) -> None:
    opp, handle = await new_deal(app)
    await days_in(skipping_env, handle, 14.1)
    await assert_eq_eventually(1, lambda: _level(app, opp))
    now = await skipping_env.get_current_time(handle)
    await app.client.snooze_escalation(
        opp, actor=app.team.actor("mgr"), until=(now + timedelta(days=8)).isoformat()
    )
    await days_in(skipping_env, handle, 7.9)
    assert [level for level, _, _ in await ladder(app, opp)] == [1]
    assert (await ladder(app, opp))[0][2] == "snoozed"
    await days_in(skipping_env, handle, 0.2)
    await assert_eq_eventually(2, lambda: _level(app, opp))
    await days_in(skipping_env, handle, 3.8)
    assert await _level(app, opp) == 2
    await days_in(skipping_env, handle, 0.2)
    await assert_eq_eventually(3, lambda: _level(app, opp))


async def _level(app: App, opp: str) -> int:
    return int((await app.client.state(opp))["escalation_level"])


async def test_acknowledged_ladder_stops_until_the_next_stage(
    app: App, skipping_env: WorkflowEnvironment
) -> None:
    opp, handle = await new_deal(app)
    await days_in(skipping_env, handle, 14.1)
    await assert_eq_eventually(1, lambda: _level(app, opp))
    await app.client.acknowledge_escalation(opp, actor=app.team.actor("mgr"), note="talked to Rita")
    await days_in(skipping_env, handle, 30)
    assert await ladder(app, opp) == [(1, app.team.id("rep"), "acknowledged")]
    await app.client.change_stage(opp, actor=app.team.actor("rep"), stage="Qualification")
    assert await ladder(app, opp) == [(1, app.team.id("rep"), "resolved")]
    await days_in(skipping_env, handle, 14.1)
    await assert_eq_eventually(2, lambda: _rows(app, opp))


async def _rows(app: App, opp: str) -> int:
    return len(await ladder(app, opp))


async def test_recipients_come_from_the_org_chart_when_the_level_fires(
    app: App, skipping_env: WorkflowEnvironment
) -> None:
    opp, handle = await new_deal(app)
    await days_in(skipping_env, handle, 10)
    await app.client.reassign(
        opp, actor=app.team.actor("mgr"), owner_id=app.team.id("rep2"), reason="rep on leave"
    )
    await app.pool.execute(
        "UPDATE users SET manager_id = $1 WHERE id = $2", app.team.id("othermgr"), app.team.id("rep2")
    )
    await days_in(skipping_env, handle, 7.1)
    await assert_eq_eventually(
        [(1, app.team.id("rep2"), "open"), (2, app.team.id("othermgr"), "open")], lambda: ladder(app, opp)
    )


async def test_business_day_ladders_skip_weekends(app: App, skipping_env: WorkflowEnvironment) -> None:
    opp, handle = await new_deal(app, stage="Needs Analysis")
    state = await app.client.state(opp)
    entered = datetime.fromisoformat(state["stage_entered_at"])
    expected = add_business_days(entered, 10, [])
    assert datetime.fromisoformat(state["next_escalation_due_at"]) == expected
    await days_in(skipping_env, handle, (expected - entered).total_seconds() / 86400 + 0.1)
    await assert_eq_eventually(1, lambda: _rows(app, opp))
    due = await app.pool.fetchval("SELECT due_at FROM escalations WHERE opportunity_id = $1", opp)
    assert due == expected


async def test_an_old_deal_notifies_its_highest_due_level_once(app: App, receiver: Receiver) -> None:
    opp, _ = await new_deal(app, stage_entered_at=datetime.now(UTC) - timedelta(days=40))
    await assert_eq_eventually(
        [(1, None, "superseded"), (2, None, "superseded"), (3, app.team.id("vp"), "open")],
        lambda: ladder(app, opp),
    )
    await assert_eq_eventually(1, lambda: len([d for d in receiver.at("/hooks") if opp in d.body]))


async def test_webhooks_are_signed_and_carry_a_stable_id(app: App, receiver: Receiver) -> None:
    opp, _ = await new_deal(app, stage_entered_at=datetime.now(UTC) - timedelta(days=15))
    await assert_eq_eventually(1, lambda: len([d for d in receiver.at("/hooks") if opp in d.body]))
    delivery = next(d for d in receiver.at("/hooks") if opp in d.body)
    body = Webhook(SECRET).verify(delivery.body, delivery.headers)
    expected_id = await app.pool.fetchval("SELECT webhook_id FROM escalations WHERE opportunity_id = $1", opp)
    assert delivery.headers["webhook-id"] == expected_id
    assert body["type"] == "opportunity.escalated"
    data = body["data"]
    assert (data["opportunity_id"], data["stage"], data["level"], data["recipient_id"]) == (
        opp,
        "Prospecting",
        1,
        app.team.id("rep"),
    )
    assert data["days_in_stage"] >= 14 and "acknowledge_escalation" in data["actions"]
    assert {"acknowledge", "snooze_1d", "open"} <= set(data["links"])
    assert all(link.startswith("http://localhost:8000/actions/") for link in data["links"].values())
    tampered = delivery.body.replace("Prospecting", "Negotiation")
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(tampered, delivery.headers)


async def test_a_failing_endpoint_never_blocks_the_deal_or_other_endpoints(
    skipping_env: WorkflowEnvironment, db_pool: asyncpg.Pool, receiver: Receiver
) -> None:
    settings = Settings(
        webhook_urls=[f"{receiver.base_url}/fail", f"{receiver.base_url}/ok"], webhook_secret=SECRET
    )
    async with running_app(skipping_env.client, db_pool, settings) as app:
        opp, _ = await new_deal(app, stage_entered_at=datetime.now(UTC) - timedelta(days=15))
        await assert_eq_eventually(1, lambda: len([d for d in receiver.at("/ok") if opp in d.body]))
        await app.client.change_stage(opp, actor=app.team.actor("rep"), stage="Qualification")
        webhook_id = await app.pool.fetchval(
            "SELECT webhook_id FROM escalations WHERE opportunity_id = $1", opp
        )

        async def failing_attempts() -> bool:
            attempts = await app.pool.fetchval(
                "SELECT attempts FROM webhook_deliveries WHERE webhook_id = $1 AND endpoint LIKE '%/fail'",
                webhook_id,
            )
            return (attempts or 0) >= 2

        await assert_eq_eventually(True, failing_attempts, timeout=15)
        ok_ids = [d.headers["webhook-id"] for d in receiver.at("/ok") if opp in d.body]
        failed_ids = {d.headers["webhook-id"] for d in receiver.at("/fail") if opp in d.body}
        assert ok_ids == [webhook_id] and failed_ids == {webhook_id}


async def test_without_an_endpoint_the_escalation_is_recorded_and_nothing_is_sent(
    skipping_env: WorkflowEnvironment, db_pool: asyncpg.Pool
) -> None:
    async with running_app(skipping_env.client, db_pool, Settings()) as app:
        opp, handle = await new_deal(app, stage_entered_at=datetime.now(UTC) - timedelta(days=15))
        await assert_eq_eventually([(1, app.team.id("rep"), "open")], lambda: ladder(app, opp))
        history = await handle.fetch_history()
        assert not [
            e
            for e in history.events
            if e.HasField("start_child_workflow_execution_initiated_event_attributes")
        ]
        state = await app.client.state(opp)
        assert state["escalation_level"] == 1
        # Action links travel only in a webhook: none are signed, none sit in the history.
        recorded = [
            e.marker_recorded_event_attributes.details["result"].payloads[0].data
            for e in history.events
            if e.HasField("marker_recorded_event_attributes") and b"webhook_id" in e.SerializeToString()
        ]
        assert len(recorded) == 1 and json.loads(recorded[0])["links"] == {}


def manager_level(
    app: App, opp: str, level: int = 1, superseded: list[int] | None = None
) -> RecordEscalation:
    """Level ``level`` of the deal's first stage entry, due and fired now, to the owner's manager."""
    now = datetime.now(UTC)
    return RecordEscalation(
        opportunity_id=opp,
        opportunity_name="x",
        account="y",
        stage="Prospecting",
        stage_entry_seq=1,
        stage_entered_at=now,
        level=level,
        notify="manager",
        owner_id=app.team.id("rep"),
        due_at=now,
        fired_at=now,
        superseded=superseded or [],
    )


# persist_escalation writes the deal's rows and the level's in one statement; record_escalation
# is the separate activity that histories from before it still replay.
@pytest.mark.parametrize("write", ["persist_escalation", "record_escalation"])
async def test_a_retried_escalation_write_records_its_rows_once_with_one_webhook_id(
    app: App, write: str
) -> None:
    opp, _ = await new_deal(app)
    await assert_eq_eventually(
        1, lambda: app.pool.fetchval("SELECT count(*) FROM opportunities WHERE id = $1", opp)
    )
    record = manager_level(app, opp, level=2, superseded=[1])
    version = await app.pool.fetchval("SELECT state_version FROM opportunities WHERE id = $1", opp) + 1
    state = deal(opportunity_id=opp, owner_id=app.team.id("rep"))
    state.clock.level = 2
    rows = PersistBatch(opportunity=OpportunityRow.of(state, version), changes=[])
    store = OpportunityStore(app.pool)

    async def fire() -> EscalationRecorded:
        if write == "record_escalation":
            return await store.record_escalation(record)
        return await store.persist_escalation(EscalatedBatch(batch=rows, escalation=record))

    first = await fire()
    await app.pool.execute(
        "UPDATE users SET manager_id = $1 WHERE id = $2", app.team.id("othermgr"), app.team.id("rep")
    )
    retry = await fire()

    assert (first.newly_recorded, retry.newly_recorded) == (True, False)
    assert retry.webhook_id == first.webhook_id
    assert retry.recipient_id == first.recipient_id == app.team.id("mgr")
    assert await ladder(app, opp) == [(1, None, "superseded"), (2, app.team.id("mgr"), "open")]
    if write == "persist_escalation":
        saved = await app.pool.fetchrow(
            "SELECT escalation_level, state_version FROM opportunities WHERE id = $1", opp
        )
        assert (saved["escalation_level"], saved["state_version"]) == (2, version)


async def test_a_saved_batch_moves_the_ladder_rows_in_the_order_of_its_changes(app: App) -> None:
    opp, _ = await new_deal(app)
    await assert_eq_eventually(
        1, lambda: app.pool.fetchval("SELECT count(*) FROM opportunities WHERE id = $1", opp)
    )
    store = OpportunityStore(app.pool)
    await store.record_escalation(manager_level(app, opp))
    version = await app.pool.fetchval("SELECT state_version FROM opportunities WHERE id = $1", opp)
    state = deal(opportunity_id=opp, owner_id=app.team.id("rep"))
    now = datetime.now(UTC)

    def batch(saved: int, *moves: tuple[str, str, str | None]) -> PersistBatch:
        changes = [
            Change(
                request_id=request_id,
                actor_id=app.team.id("mgr"),
                at=now,
                kind=status,
                escalation_status=EscalationStatusChange(stage_entry_seq=1, status=status, note=note),
            )
            for request_id, status, note in moves
        ]
        return PersistBatch(opportunity=OpportunityRow.of(state, version + saved), changes=changes)

    await store.persist(batch(1, (f"{opp}-snooze", "snoozed", "back after the holidays")))
    assert await ladder(app, opp) == [(1, app.team.id("mgr"), "snoozed")]

    # Two moves of the same rows in one batch: acknowledged first, then resolved.
    await store.persist(
        batch(2, (f"{opp}-ack", "acknowledged", "talked to Rita"), (f"{opp}-move", "resolved", None))
    )
    assert await ladder(app, opp) == [(1, app.team.id("mgr"), "resolved")]
    note, events = await app.pool.fetchrow(
        "SELECT (SELECT note FROM escalations WHERE opportunity_id = $1), "
        "(SELECT count(*) FROM opportunity_events WHERE opportunity_id = $1 AND request_id LIKE $1 || '-%')",
        opp,
    )
    assert (note, events) == ("talked to Rita", 3)
    assert (
        await app.pool.fetchval("SELECT state_version FROM opportunities WHERE id = $1", opp) == version + 2
    )


async def test_overdue_escalations_are_found_and_re_armed(
    skipping_env: WorkflowEnvironment, db_pool: asyncpg.Pool
) -> None:
    async with running_app(skipping_env.client, db_pool) as app:
        opp, _ = await new_deal(app)
        await assert_eq_eventually(
            1, lambda: app.pool.fetchval("SELECT count(*) FROM opportunities WHERE id = $1", opp)
        )
    # No worker now: the deadline passes unseen, as with a lost timer.
    await db_pool.execute(
        "UPDATE opportunities SET next_escalation_at = now() - interval '2 hours' WHERE id = $1", opp
    )
    overdue = [o for o in await escalation_check.find_overdue(db_pool) if o.opportunity_id == opp]
    assert [(o.level, o.stage) for o in overdue] == [(1, "Prospecting")]
    assert "level 1 in Prospecting was due" in overdue[0].describe()
    assert await escalation_check.repair(skipping_env.client, overdue) == []
    handle = skipping_env.client.get_workflow_handle(workflow_id(opp))
    history = json.loads((await handle.fetch_history()).to_json())
    assert any(
        e.get("workflowExecutionSignaledEventAttributes", {}).get("signalName") == "check_clock"
        for e in history["events"]
    )
