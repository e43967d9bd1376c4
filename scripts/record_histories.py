"""Record the replay corpus: run the main scenarios against a real dev server and Postgres
and save each workflow's history as JSON under tests/histories/.

    .venv/bin/python scripts/record_histories.py [TAG]

Run it after a deliberate change of workflow behaviour (with the patch that keeps old
histories replaying), with a new TAG (e.g. the patch's name): files are named
``SCENARIO-TAG-N.json``, so the new ones sit beside the old ones, never instead of them.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment

from db.migrate import upgrade
from db.pool import create_pool
from starter.client import workflow_id
from starter.postgres import start_embedded_postgres
from starter.temporal_server import temporal_binary
from tests.helpers import contract_search_attribute_keys
from tests.sales_team import App, running_app

OUT = Path(__file__).resolve().parent.parent / "tests" / "histories"
Scenario = Callable[[App, WorkflowEnvironment], Awaitable[list[str]]]
TAG = sys.argv[1] if len(sys.argv) > 1 else ""


async def create(app: App, **extra: Any) -> str:
    opp = app.opp_id()
    await app.client.create(
        actor=app.team.actor("rep"),
        name="Initech expansion",
        account="Initech",
        owner_id=app.team.id("rep"),
        opportunity_id=opp,
        amount="42000",
        **extra,
    )
    return opp


async def rep_lifecycle(app: App, env: WorkflowEnvironment) -> list[str]:
    rep, mgr = app.team.actor("rep"), app.team.actor("mgr")
    opp = await create(app)
    await app.client.change_stage(opp, actor=rep, stage="Qualification")
    await app.client.update_fields(opp, actor=rep, fields={"budget": 90000})
    await app.client.change_stage(opp, actor=rep, stage="Needs Analysis", fields={"timeline": "Q2"})
    await app.client.record_activity(opp, actor=rep, kind="call", subject="scoping call")
    await app.client.add_team_member(opp, actor=rep, user_id=app.team.id("se"), team_role="sales_engineer")
    await app.client.change_stage(opp, actor=rep, stage="Closed Lost", fields={"loss_reason": "Timing"})
    await app.client.reopen(opp, actor=mgr, stage="Qualification", reason="budget approved")
    await app.client.reassign(opp, actor=mgr, owner_id=app.team.id("rep2"))
    await asyncio.sleep(1)
    return [opp]


async def escalation_ladder(app: App, env: WorkflowEnvironment) -> list[str]:
    opp = await create(app)
    handle = app.temporal.get_workflow_handle(workflow_id(opp))
    await env.fast_forward(handle, timedelta(days=14.1))  # type: ignore[attr-defined]
    await app.client.pause_clock(opp, actor=app.team.actor("rep"), reason="customer freeze")
    await env.fast_forward(handle, timedelta(days=2))  # type: ignore[attr-defined]
    await app.client.resume_clock(opp, actor=app.team.actor("rep"))
    now = await env.get_current_time(handle)
    await app.client.snooze_escalation(
        opp, actor=app.team.actor("mgr"), until=(now + timedelta(days=5)).isoformat()
    )
    await env.fast_forward(handle, timedelta(days=5.1))  # type: ignore[attr-defined]
    await app.client.acknowledge_escalation(opp, actor=app.team.actor("mgr"), note="on it")
    old = await create(app, stage_entered_at=datetime.now(UTC) - timedelta(days=40))
    await asyncio.sleep(2)
    return [opp, old]


async def handoff_and_automation(app: App, env: WorkflowEnvironment) -> list[str]:
    rep = app.team.actor("rep")
    opp = await create(app)
    await app.client.record_activity(
        opp, actor=rep, kind="meeting", outcome="completed", data={"type": "discovery"}
    )
    await asyncio.sleep(0.5)
    await app.client.change_stage(
        opp, actor=rep, stage="Needs Analysis", fields={"budget": 1, "timeline": "Q3"}
    )
    await app.client.change_stage(opp, actor=rep, stage="Value Proposition")
    await app.client.change_stage(opp, actor=rep, stage="Id. Decision Makers")
    await app.client.change_stage(
        opp, actor=rep, stage="Perception Analysis", fields={"decision_maker": "CFO"}
    )
    await app.client.record_activity(opp, actor=rep, kind="quote_sent")
    await app.client.add_team_member(opp, actor=rep, user_id=app.team.id("se"), team_role="sales_engineer")
    await asyncio.sleep(1)
    handoff = app.temporal.get_workflow_handle(f"handoff-{opp}-technical_validation-6")
    await handoff.execute_update(
        "complete_handoff",
        {
            "request_id": "se-done",
            "note": "fits",
            "actor": {"id": app.team.id("se"), "role": "sales_engineer"},
        },
    )
    await asyncio.sleep(1)
    await app.client.record_activity(opp, actor=rep, kind="quote_sent")
    await asyncio.sleep(1)
    return [opp, f"handoff-{opp}-technical_validation-6"]


async def continue_as_new(app: App, env: WorkflowEnvironment) -> list[str]:
    opp = await create(app)
    for n in range(40):
        await app.client.update_fields(opp, actor=app.team.actor("rep"), fields={"objections": f"note {n}"})
    return [opp]


SCENARIOS: dict[str, Scenario] = {
    "rep_lifecycle": rep_lifecycle,
    "escalation_ladder": escalation_ladder,
    "handoff_and_automation": handoff_and_automation,
    "continue_as_new": continue_as_new,
}


async def save(client: Client, name: str, ids: list[str]) -> None:
    for index, wf in enumerate(ids):
        target = wf if wf.startswith("handoff-") else workflow_id(wf)
        handle = client.get_workflow_handle(target)
        runs = [w async for w in client.list_workflows(f"WorkflowId = '{target}'")]
        for run_index, run in enumerate(sorted(runs, key=lambda r: r.start_time)):
            history = await client.get_workflow_handle(target, run_id=run.run_id).fetch_history()
            suffix = (f"-{TAG}" if TAG else "") + f"-{index}" + (f"-run{run_index}" if len(runs) > 1 else "")
            (OUT / f"{name}{suffix}.json").write_text(history.to_json())
        del handle


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    database = start_embedded_postgres(Path(tempfile.mkdtemp(prefix="oppflow-record-")) / "pgdata")
    upgrade(database.url)
    pool = await create_pool(database.url)
    env = await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=contract_search_attribute_keys(),
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.WorkflowTimeSkippingEnabled=true",
            "--dynamic-config-value",
            "limit.historyCount.suggestContinueAsNew=60",
        ],
    )
    try:
        async with running_app(env.client, pool) as app:
            for name, scenario in SCENARIOS.items():
                ids = await scenario(app, env)
                await save(env.client, name, ids)
                print(f"recorded {name}: {len(ids)} workflow(s)")
    finally:
        await env.shutdown()
        await pool.close()
        database.stop()


if __name__ == "__main__":
    asyncio.run(main())
