"""Ops' saved list filters find the right deals: the workflow keeps the contract's search
attributes current on every change, and `oppflow setup-temporal` prepares any cluster."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType as SAType
from temporalio.testing import WorkflowEnvironment

from sales.durations import add_duration
from sales.process import SalesProcess
from starter.client import workflow_id
from starter.temporal_setup import SEARCH_ATTRIBUTES, ensure_namespace, register_search_attributes
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app
from workflows import search_attributes as sa

NEGOTIATION = "Negotiation/Review"
VISIBILITY_TIMEOUT = 20.0
WORKFLOW_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
}


def entered_at_first_level(process: SalesProcess, stage_name: str, now: datetime) -> datetime:
    """A stage entry time whose first escalation level is due now and whose second is days away."""
    stage = process.stage(stage_name)
    assert stage.stuck_clock is not None and len(stage.escalation) >= 2
    for hours in range(24, 24 * 60, 3):
        entered = now - timedelta(hours=hours)
        stuck_at = add_duration(entered, stage.stuck_clock, process.holidays)
        first = add_duration(stuck_at, stage.escalation[0].offset, process.holidays)
        second = add_duration(stuck_at, stage.escalation[1].offset, process.holidays)
        if first <= now and second > now + timedelta(hours=6):
            return entered
    raise AssertionError(f"no entry time puts {stage_name} at its first escalation level")


async def workflow_ids(client: Client, query: str) -> set[str]:
    return {wf.id async for wf in client.list_workflows(query)}


@pytest_asyncio.fixture(loop_scope="session")
async def app(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    async with running_app(temporal_env.client, db_pool) as running:
        yield running


async def test_list_filters_follow_stage_owner_escalation_and_close_date(app: App) -> None:
    team, client = app.team, app.client
    rep, rep2 = team.id("rep"), team.id("rep2")
    process = await client.process_for(None)
    ids = {name: app.opp_id() for name in ("escalated", "moved", "handed_over", "stopped", "other")}

    async def create(name: str, owner: str, stage: str, close_date: str, **extra: Any) -> None:
        await client.create(
            actor=team.actor("mgr"),
            name=f"{name} deal",
            account="Acme",
            owner_id=owner,
            opportunity_id=ids[name],
            stage=stage,
            close_date=close_date,
            **extra,
        )

    await create(
        "escalated",
        rep,
        NEGOTIATION,
        "2026-12-15",
        amount="125000",
        stage_entered_at=entered_at_first_level(process, NEGOTIATION, datetime.now(UTC)),
    )
    await create(
        "moved", rep, "Proposal/Price Quote", "2027-03-31", amount="40000", fields={"decision_maker": "CFO"}
    )
    await create("handed_over", rep, "Qualification", "2026-12-01")
    await create("stopped", rep, "Prospecting", "2026-11-30")
    await create("other", rep2, "Prospecting", "2027-01-15")

    await client.change_stage(ids["moved"], actor=team.actor("rep"), stage=NEGOTIATION)
    await client.reassign(
        ids["handed_over"], actor=team.actor("mgr"), owner_id=rep2, reason="territory change"
    )
    await app.temporal.get_workflow_handle(workflow_id(ids["stopped"])).terminate(reason="duplicate deal")

    wf = {name: workflow_id(opp) for name, opp in ids.items()}
    team_only = f'OpportunityOwner IN ("{rep}", "{rep2}")'
    expectations = {
        f'OpportunityStage = "{NEGOTIATION}" AND EscalationLevel > 0 AND {team_only}': {wf["escalated"]},
        f'OpportunityStage = "{NEGOTIATION}" AND {team_only}': {wf["escalated"], wf["moved"]},
        f'OpportunityStage = "Proposal/Price Quote" AND {team_only}': set(),
        f'OpportunityOwner = "{rep}" AND ExecutionStatus = "Running"': {wf["escalated"], wf["moved"]},
        f'OpportunityOwner = "{rep2}"': {wf["handed_over"], wf["other"]},
        f'OpportunityCloseDate < "2026-12-31T00:00:00Z" AND {team_only}': {
            wf["escalated"],
            wf["handed_over"],
            wf["stopped"],
        },
        f"EscalationLevel >= 2 AND {team_only}": set(),
    }
    for query, expected in expectations.items():
        await assert_eq_eventually(
            expected, partial(workflow_ids, app.temporal, query), timeout=VISIBILITY_TIMEOUT, interval=0.3
        )

    state = await client.state(ids["escalated"])
    described = await app.temporal.get_workflow_handle(wf["escalated"]).describe()
    attributes = described.typed_search_attributes
    assert attributes.get(sa.ESCALATION_LEVEL) == 1
    assert attributes.get(sa.AMOUNT) == 125000.0
    assert attributes.get(sa.FORECAST_CATEGORY) == "Pipeline"
    assert attributes.get(sa.STAGE_ENTERED_AT) == datetime.fromisoformat(state["stage_entered_at"])
    assert attributes.get(sa.CLOSE_DATE) == datetime(2026, 12, 15, tzinfo=UTC)


async def test_the_amount_filter_follows_a_field_update(app: App) -> None:
    team, client = app.team, app.client
    opp = app.opp_id()
    await client.create(
        actor=team.actor("rep"),
        name="Upsell",
        account="Globex",
        owner_id=team.id("rep"),
        opportunity_id=opp,
        amount="9000",
    )
    await client.update_fields(opp, actor=team.actor("rep"), amount="250000")
    query = f'OpportunityOwner = "{team.id("rep")}" AND OpportunityAmount >= 100000'
    await assert_eq_eventually(
        {workflow_id(opp)},
        lambda: workflow_ids(app.temporal, query),
        timeout=VISIBILITY_TIMEOUT,
        interval=0.3,
    )


async def test_a_new_deal_is_indexed_at_start_and_its_first_task_indexes_nothing(app: App) -> None:
    team, client = app.team, app.client
    opp = app.opp_id()
    before = datetime.now(UTC)
    await client.create(
        actor=team.actor("rep"), name="Renewal", account="Hooli", owner_id=team.id("rep"), opportunity_id=opp
    )
    handle = app.temporal.get_workflow_handle(workflow_id(opp))
    state = await client.state(opp)
    entered = datetime.fromisoformat(state["stage_entered_at"])
    assert before <= entered <= datetime.now(UTC)
    assert (await handle.describe()).typed_search_attributes.get(sa.STAGE_ENTERED_AT) == entered

    # A deal started by this code takes every patched path without a patch marker, and
    # the search attributes its starter set already hold its values: its first task
    # saves the deal and arms the stage clock, and indexes nothing.
    async def recorded() -> list[str]:
        events = (await handle.fetch_history()).events
        return [
            EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
            + (
                f" {e.marker_recorded_event_attributes.marker_name}"
                if e.HasField("marker_recorded_event_attributes")
                else ""
            )
            for e in events
            if e.event_type not in WORKFLOW_TASK_EVENTS
        ]

    await assert_eq_eventually(
        ["WORKFLOW_EXECUTION_STARTED", "MARKER_RECORDED core_local_activity", "TIMER_STARTED"], recorded
    )

    # The first change of stage indexes the new stage and its entry time.
    await client.change_stage(opp, actor=team.actor("rep"), stage="Qualification")
    moved = datetime.fromisoformat((await client.state(opp))["stage_entered_at"])
    assert moved > entered
    attributes = (await handle.describe()).typed_search_attributes
    assert (attributes.get(sa.STAGE), attributes.get(sa.STAGE_ENTERED_AT)) == ("Qualification", moved)


# -- `oppflow setup-temporal` on a cluster, as an operator runs it ------------------------------------


def run_setup_temporal(address: str, namespace: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env.update(TEMPORAL_ADDRESS=address, TEMPORAL_NAMESPACE=namespace, COLUMNS="200")
    oppflow = str(Path(sys.executable).parent / "oppflow")
    return subprocess.run(
        [oppflow, "setup-temporal"], env=env, cwd=cwd, capture_output=True, text=True, timeout=90
    )


async def registered_types(client: Client, namespace: str) -> dict[str, SAType]:
    listing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return {
        name: SAType(value) for name, value in listing.custom_attributes.items() if name in SEARCH_ATTRIBUTES
    }


def address_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


async def test_setup_temporal_creates_namespace_and_attributes_then_is_a_noop(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    namespace = f"ops-{uuid.uuid4().hex[:8]}"

    first = await asyncio.to_thread(run_setup_temporal, address_of(temporal_env), namespace, tmp_path)
    assert first.returncode == 0, first.stderr
    for name in SEARCH_ATTRIBUTES:
        assert name in first.stdout
    assert await registered_types(temporal_env.client, namespace) == SEARCH_ATTRIBUTES

    again = await asyncio.to_thread(run_setup_temporal, address_of(temporal_env), namespace, tmp_path)
    assert again.returncode == 0, again.stderr
    assert not any(name in again.stdout for name in SEARCH_ATTRIBUTES), again.stdout
    assert await registered_types(temporal_env.client, namespace) == SEARCH_ATTRIBUTES


async def test_setup_temporal_on_the_test_cluster_changes_nothing(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    before = await registered_types(temporal_env.client, "default")
    result = await asyncio.to_thread(run_setup_temporal, address_of(temporal_env), "default", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "namespace default: search attributes all already registered" in result.stdout
    assert await registered_types(temporal_env.client, "default") == before == SEARCH_ATTRIBUTES


async def test_setup_temporal_names_an_attribute_registered_with_another_type(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    namespace = f"ops-{uuid.uuid4().hex[:8]}"
    await ensure_namespace(temporal_env.client, namespace)
    await register_search_attributes(temporal_env.client, namespace, {"OpportunityStage": SAType.TEXT})

    result = await asyncio.to_thread(run_setup_temporal, address_of(temporal_env), namespace, tmp_path)

    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: search attribute OpportunityStage exists as Text, oppflow needs Keyword"
    )
    assert await registered_types(temporal_env.client, namespace) == {"OpportunityStage": SAType.TEXT}
