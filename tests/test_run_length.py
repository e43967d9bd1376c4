"""A busy deal's runs stay short: it continues as new at oppflow's run length, long before
Temporal would suggest it, keeps everything it had, and every run has oppflow's workflow
task timeout. On a dev server of its own: the shared one suggests continue-as-new at 60
events, which would hide the limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from starter.client import workflow_id
from tests.helpers import assert_eq_eventually, start_dev_server
from tests.sales_team import App, running_app
from worker import SANDBOX, WORKFLOWS
from workflows.run_length import RUN_EVENTS_LIMIT, WORKFLOW_TASK_TIMEOUT

pytestmark = pytest.mark.slow

SENDERS = 3
MAX_ACTIVITIES = 1_500  # far more than one run of RUN_EVENTS_LIMIT events takes in


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def default_server() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(loop_scope="session")
async def app(default_server: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    async with running_app(default_server.client, db_pool) as running:
        yield running


async def runs_of(temporal: Client, opp: str) -> list[tuple[str, int, timedelta, str]]:
    """(status, history events, workflow task timeout, run id) of each of the deal's runs."""
    found = []
    async for run in temporal.list_workflows(f"WorkflowId = '{workflow_id(opp)}'"):
        described = (await temporal.get_workflow_handle(run.id, run_id=run.run_id).describe()).raw_description
        info = described.workflow_execution_info
        found.append(
            (
                WorkflowExecutionStatus.Name(info.status).removeprefix("WORKFLOW_EXECUTION_STATUS_"),
                info.history_length,
                described.execution_config.default_workflow_task_timeout.ToTimedelta(),
                run.run_id,
            )
        )
    return found


async def count_and_pending(app: App, opp: str) -> tuple[int, int]:
    state = await app.client.state(opp)
    return state["activity_count"], state["pending_writes"]


async def test_a_busy_deal_continues_as_new_at_oppflows_run_length(app: App) -> None:
    rep = app.team.actor("rep")
    opp = app.opp_id()
    await app.client.create(
        actor=rep, name="Globex renewal", account="Globex", owner_id=app.team.id("rep"), opportunity_id=opp
    )

    handle = app.temporal.get_workflow_handle(workflow_id(opp))
    first_run = (await handle.describe()).run_id
    sent = 0

    async def sender() -> None:
        nonlocal sent
        while sent < MAX_ACTIVITIES and (await handle.describe()).run_id == first_run:
            sent += 1
            await app.client.record_activity(
                opp, actor=rep, kind="email", subject=f"thread {sent}", request_id=f"mail-{sent}"
            )

    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    await assert_eq_eventually((sent, 0), lambda: count_and_pending(app, opp), timeout=60)

    runs = await runs_of(app.temporal, opp)
    continued = [length for status, length, _, _ in runs if status == "CONTINUED_AS_NEW"]
    assert continued, f"the deal never continued as new after {sent} activities: {runs}"
    # Continued at oppflow's limit (plus what the last task brought in), not at Temporal's 4,096.
    assert all(RUN_EVENTS_LIMIT <= length < RUN_EVENTS_LIMIT + 300 for length in continued), runs
    assert all(timeout == WORKFLOW_TASK_TIMEOUT for _, _, timeout, _ in runs), runs
    # Nothing was lost on the way: every activity is in Postgres once, a repeat is still known.
    rows = await app.pool.fetchval("SELECT count(*) FROM activities WHERE opportunity_id = $1", opp)
    assert rows == sent
    await app.client.record_activity(opp, actor=rep, kind="email", subject="again", request_id="mail-1")
    await app.client.update_fields(opp, actor=rep, fields={"next_step": "call back"})
    state = await app.client.state(opp)
    assert state["activity_count"] == sent
    assert state["fields"]["next_step"] == "call back"
    # A worker that has not cached the deal rebuilds each run from its history.
    replayer = Replayer(
        workflows=list(WORKFLOWS), data_converter=pydantic_data_converter, workflow_runner=SANDBOX
    )
    for *_, run_id in runs:
        history = await app.temporal.get_workflow_handle(workflow_id(opp), run_id=run_id).fetch_history()
        await replayer.replay_workflow(history)
