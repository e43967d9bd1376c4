"""A rep's deal from creation to close, against the real dev server and Postgres."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pydantic import ValidationError
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from sales.state import PACKED_STATE_PREFIX
from starter.client import CommandRejected, workflow_id
from starter.settings import Settings
from starter.temporal_server import temporal_binary
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app
from worker import SANDBOX, WORKFLOWS, build_worker
from workflows.revisions import REVISION


@pytest_asyncio.fixture(loop_scope="session")
async def app(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    async with running_app(temporal_env.client, db_pool) as running:
        yield running


async def new_deal(app: App, **extra: Any) -> str:
    opp = app.opp_id()
    await app.client.create(
        actor=app.team.actor("rep"),
        name="Acme rollout",
        account="Acme",
        owner_id=app.team.id("rep"),
        opportunity_id=opp,
        amount="50000",
        **extra,
    )
    return opp


async def update_events(app: App, opp: str) -> int:
    history = await app.temporal.get_workflow_handle(workflow_id(opp)).fetch_history()
    return sum(
        1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    )


async def test_a_rep_moves_a_deal_and_closes_it_lost(app: App) -> None:
    rep = app.team.actor("rep")
    opp = await new_deal(app)

    await app.client.change_stage(opp, actor=rep, stage="Qualification")
    await app.client.change_stage(
        opp, actor=rep, stage="Needs Analysis", fields={"budget": 80000, "timeline": "Q1"}
    )
    result = await app.client.change_stage(
        opp,
        actor=rep,
        stage="Closed Lost",
        reason="went with a competitor",
        fields={"loss_reason": "Competitor"},
    )

    assert result.message == "moved from Needs Analysis to Closed Lost"
    state = await app.client.state(opp)
    assert (state["stage"], state["probability"], state["forecast_category"]) == ("Closed Lost", 0, "Omitted")
    assert (state["is_closed"], state["is_won"]) == (True, False)
    assert state["fields"] == {"budget": 80000, "timeline": "Q1", "loss_reason": "Competitor"}
    assert state["process"] == {"name": "new-business", "version": 1}

    async def stages() -> list[tuple[str | None, str]]:
        rows = await app.pool.fetch(
            "SELECT from_stage, to_stage FROM stage_history WHERE opportunity_id = $1 "
            "ORDER BY changed_at, id",
            opp,
        )
        return [(r["from_stage"], r["to_stage"]) for r in rows]

    await assert_eq_eventually(
        [
            (None, "Prospecting"),
            ("Prospecting", "Qualification"),
            ("Qualification", "Needs Analysis"),
            ("Needs Analysis", "Closed Lost"),
        ],
        stages,
    )
    row = await app.pool.fetchrow("SELECT * FROM opportunities WHERE id = $1", opp)
    assert (row["stage"], row["is_closed"], row["is_won"], row["amount"]) == (
        "Closed Lost",
        True,
        False,
        Decimal(50000),
    )
    assert row["fields"]["loss_reason"] == "Competitor"
    reason = await app.pool.fetchval(
        "SELECT reason FROM stage_history WHERE opportunity_id = $1 AND to_stage = 'Closed Lost'", opp
    )
    assert reason == "went with a competitor"


async def test_a_refused_move_names_the_rule_leaves_no_history_and_is_audited(app: App) -> None:
    rep = app.team.actor("rep")
    opp = await new_deal(app)
    await app.client.change_stage(opp, actor=rep, stage="Qualification")
    before = await update_events(app, opp)

    with pytest.raises(CommandRejected) as refused:
        await app.client.change_stage(opp, actor=rep, stage="Needs Analysis", request_id=f"{opp}-try")

    assert refused.value.rule == "exit_criteria"
    assert refused.value.message == "cannot leave Qualification: missing budget, timeline"
    assert refused.value.missing == ["budget", "timeline"]
    assert await update_events(app, opp) == before
    assert (await app.client.state(opp))["stage"] == "Qualification"

    async def audit() -> list[tuple[str, str, list[str]]]:
        rows = await app.pool.fetch(
            "SELECT actor_id, rule, missing FROM rejected_commands WHERE request_id = $1", f"{opp}-try"
        )
        return [(r["actor_id"], r["rule"], list(r["missing"])) for r in rows]

    await assert_eq_eventually([(rep.id, "exit_criteria", ["budget", "timeline"])], audit)


@pytest.mark.parametrize(
    ("stage", "rule"),
    [("Negotiation", "unknown_stage"), ("Prospecting", "same_stage")],
)
async def test_unknown_and_same_stage_are_refused(app: App, stage: str, rule: str) -> None:
    opp = await new_deal(app)
    with pytest.raises(CommandRejected) as refused:
        await app.client.change_stage(opp, actor=app.team.actor("rep"), stage=stage)
    assert refused.value.rule == rule


async def test_a_closed_deal_refuses_changes(app: App) -> None:
    rep = app.team.actor("rep")
    opp = await new_deal(app)
    await app.client.change_stage(opp, actor=rep, stage="Closed Lost", fields={"loss_reason": "Timing"})
    with pytest.raises(CommandRejected) as refused:
        await app.client.change_stage(opp, actor=rep, stage="Qualification")
    assert refused.value.rule == "closed_is_final"
    reopened = await app.client.reopen(
        opp, actor=app.team.actor("mgr"), stage="Qualification", reason="budget back"
    )
    assert reopened.message == "moved from Closed Lost to Qualification"


async def test_the_same_request_id_is_applied_once_and_answers_the_same(app: App) -> None:
    rep = app.team.actor("rep")
    opp = await new_deal(app)
    first = await app.client.change_stage(opp, actor=rep, stage="Qualification", request_id="same-key")
    again = await app.client.change_stage(opp, actor=rep, stage="Qualification", request_id="same-key")

    assert again == first
    await asyncio.sleep(0.3)
    count = await app.pool.fetchval(
        "SELECT count(*) FROM stage_history WHERE opportunity_id = $1 AND request_id = 'same-key'", opp
    )
    assert count == 1
    assert (await app.client.state(opp))["stage_entry_seq"] == 2


async def test_concurrent_creators_get_one_deal(app: App) -> None:
    opp = app.opp_id()

    async def create(n: int) -> None:
        await app.client.create(
            actor=app.team.actor("rep"),
            name=f"Deal {n}",
            account="Acme",
            owner_id=app.team.id("rep"),
            opportunity_id=opp,
        )

    async def runs() -> int:
        return len([w async for w in app.temporal.list_workflows(f"WorkflowId = '{workflow_id(opp)}'")])

    await asyncio.gather(*(create(n) for n in range(5)))
    # Visibility is eventually consistent: a start is listed a moment after it is acknowledged.
    await assert_eq_eventually(1, runs)
    await assert_eq_eventually(
        1, lambda: app.pool.fetchval("SELECT count(*) FROM stage_history WHERE opportunity_id = $1", opp)
    )


async def test_owner_must_be_in_the_org_chart(app: App) -> None:
    with pytest.raises(CommandRejected) as refused:
        await app.client.create(actor=app.team.actor("rep"), name="X", account="Y", owner_id="nobody-here")
    assert (refused.value.rule, refused.value.field_name) == ("unknown_user", "owner_id")


async def test_malformed_payload_from_a_raw_client_is_rejected_without_history(app: App) -> None:
    opp = await new_deal(app)
    handle = app.temporal.get_workflow_handle(workflow_id(opp))
    before = await update_events(app, opp)
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await handle.execute_update(
            "change_stage",
            {
                "request_id": "raw-1",
                "actor": {"id": "x", "role": "rep"},
                "stage": "Qualification",
                "colour": "red",
            },
        )
    assert "colour" in str(failed.value.cause)
    assert await update_events(app, opp) == before


def temporal_cli(env: WorkflowEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    address = env.client.service_client.config.target_host
    return subprocess.run(
        [temporal_binary(), *args, "--address", address, "--namespace", "default", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_any_temporal_client_speaks_the_contract_json(
    app: App, temporal_env: WorkflowEnvironment
) -> None:
    opp = await new_deal(app)
    payload = {
        "request_id": "cli-1",
        "actor": {"id": app.team.id("rep"), "role": "rep"},
        "stage": "Qualification",
    }

    update = await asyncio.to_thread(
        temporal_cli,
        temporal_env,
        "workflow",
        "update",
        "execute",
        "--workflow-id",
        workflow_id(opp),
        "--name",
        "change_stage",
        "--input",
        json.dumps(payload),
    )
    assert update.returncode == 0, update.stderr
    assert json.loads(update.stdout)["result"]["stage"] == "Qualification"

    signal = {
        "request_id": "cli-2",
        "actor": {"id": "crm-sync", "role": "automation"},
        "kind": "call",
        "subject": "intro call",
        "outcome": "completed",
    }
    sent = await asyncio.to_thread(
        temporal_cli,
        temporal_env,
        "workflow",
        "signal",
        "--workflow-id",
        workflow_id(opp),
        "--name",
        "record_activity",
        "--input",
        json.dumps(signal),
    )
    assert sent.returncode == 0, sent.stderr

    async def last_activity() -> str | None:
        query = await asyncio.to_thread(
            temporal_cli,
            temporal_env,
            "workflow",
            "query",
            "--workflow-id",
            workflow_id(opp),
            "--type",
            "get_state",
        )
        state = json.loads(query.stdout)["queryResult"][0]
        return state["recent_activities"][-1]["subject"] if state["recent_activities"] else None

    await assert_eq_eventually("intro call", last_activity)

    refused = await asyncio.to_thread(
        temporal_cli,
        temporal_env,
        "workflow",
        "update",
        "execute",
        "--workflow-id",
        workflow_id(opp),
        "--name",
        "change_stage",
        "--input",
        json.dumps({**payload, "request_id": "cli-3", "stage": "Nowhere"}),
    )
    assert refused.returncode != 0
    assert "stage 'Nowhere' is not in process new-business" in refused.stderr + refused.stdout


async def test_state_survives_continue_as_new_with_its_request_ids(app: App) -> None:
    rep = app.team.actor("rep")
    opp = await new_deal(app)
    handle = app.temporal.get_workflow_handle(workflow_id(opp))
    first_run = (await handle.describe()).run_id
    for n in range(30):
        await app.client.update_fields(
            opp, actor=rep, fields={"pain_points": f"take {n}"}, request_id=f"edit-{n}"
        )
    again = await app.client.update_fields(
        opp, actor=rep, fields={"pain_points": "late repeat"}, request_id="edit-0"
    )

    assert again.message == "updated pain_points"
    state = await app.client.state(opp)
    assert state["fields"]["pain_points"] == "take 29"
    assert (await app.temporal.get_workflow_handle(workflow_id(opp)).describe()).run_id != first_run
    # The continued run starts from the packed state: its definition and 31 remembered
    # answers in about 2 KB, where the state as JSON takes about 15 KB.
    started = (await handle.fetch_history()).events[0].workflow_execution_started_event_attributes
    carried = json.loads(started.input.payloads[0].data)
    assert carried["state"].startswith(PACKED_STATE_PREFIX)
    assert len(started.input.payloads[0].data) < 4_000
    await assert_eq_eventually(
        30,
        lambda: app.pool.fetchval(
            "SELECT count(*) FROM field_history WHERE opportunity_id = $1 AND field = 'pain_points'", opp
        ),
    )


async def test_a_deal_from_a_newer_revision_waits_for_an_upgraded_worker(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a rolling upgrade an old worker must not run a deal newer code started: it
    could record what the newer code does not replay."""
    newer = REVISION + 1
    monkeypatch.setattr("starter.client.REVISION", newer)  # a client already upgraded
    # After its first failure a failing task is retried when it times out (30 s in production).
    monkeypatch.setattr("starter.client.WORKFLOW_TASK_TIMEOUT", timedelta(seconds=2))
    opp = await new_deal(app)
    handle = app.temporal.get_workflow_handle(workflow_id(opp))

    async def task_failures() -> list[str]:
        history = await handle.fetch_history()
        return [
            e.workflow_task_failed_event_attributes.failure.message
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]

    refused = f"deal at workflow revision {newer}, this worker knows up to {REVISION}"
    await assert_eq_eventually(True, lambda: _first_contains(task_failures(), refused))
    assert await app.pool.fetchval("SELECT count(*) FROM opportunities WHERE id = $1", opp) == 0

    monkeypatch.setattr("workflows.opportunity.REVISION", newer)  # the worker upgraded
    await assert_eq_eventually(
        1, lambda: app.pool.fetchval("SELECT count(*) FROM opportunities WHERE id = $1", opp), timeout=20
    )


async def _first_contains(messages: Awaitable[list[str]], text: str) -> bool:
    found = await messages
    return bool(found) and text in found[0]


async def replay_failure(app: App, opp: str) -> str | None:
    """Rebuild the deal from its recorded history, as a restarted worker would."""
    history = await app.temporal.get_workflow_handle(workflow_id(opp)).fetch_history()
    replayer = Replayer(
        workflows=list(WORKFLOWS), data_converter=pydantic_data_converter, workflow_runner=SANDBOX
    )
    replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return None if replayed.replay_failure is None else f"{opp}: {replayed.replay_failure}"


async def test_deals_created_and_read_at_once_replay_from_their_histories(app: App) -> None:
    """Reads that arrive while a deal's first task runs can split it in two workflow tasks;
    a worker that later rebuilds the deal from its history must reach the same commands."""

    async def create_and_read() -> str:
        opp = await new_deal(app)
        await app.client.state(opp)
        return opp

    deals = await asyncio.gather(*(create_and_read() for _ in range(60)))
    failures = [f for f in await asyncio.gather(*(replay_failure(app, opp) for opp in deals)) if f]
    assert failures == []


async def test_the_sticky_queue_timeout_is_a_worker_setting_and_must_be_positive(
    temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPPFLOW_STICKY_QUEUE_TIMEOUT_SECONDS", "30")
    settings = Settings(_env_file=None)
    config = build_worker(temporal_env.client, db_pool, settings, task_queue="unpolled-sticky").config()
    assert config["sticky_queue_schedule_to_start_timeout"] == timedelta(seconds=30)
    assert Settings(_env_file=None).sticky_queue_timeout_seconds == 30
    monkeypatch.delenv("OPPFLOW_STICKY_QUEUE_TIMEOUT_SECONDS")
    assert Settings(_env_file=None).sticky_queue_timeout_seconds == 10  # the SDK's default
    monkeypatch.setenv("OPPFLOW_STICKY_QUEUE_TIMEOUT_SECONDS", "0")
    with pytest.raises(ValidationError, match=r"sticky_queue_timeout_seconds\n.*greater than 0"):
        Settings(_env_file=None)


async def test_a_worker_without_the_sandbox_runs_deals_the_same(
    temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool
) -> None:
    settings = Settings(workflow_sandbox=False)
    async with running_app(temporal_env.client, db_pool, settings) as app:
        runner = build_worker(app.temporal, db_pool, settings, task_queue="unpolled").config()[
            "workflow_runner"
        ]
        assert isinstance(runner, UnsandboxedWorkflowRunner)
        opp = await new_deal(app)
        await app.client.change_stage(opp, actor=app.team.actor("rep"), stage="Qualification")
        state = await app.client.state(opp)
        assert (state["stage"], state["stage_entry_seq"]) == ("Qualification", 2)
        assert await replay_failure(app, opp) is None
