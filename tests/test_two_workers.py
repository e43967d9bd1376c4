"""Two `oppflow worker` processes on one task queue: both take work, and when one stops the
other carries every deal on, including the ones the stopped worker had cached."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from starter.client import OpportunityClient, workflow_id
from starter.org_chart import import_people
from tests.helpers import assert_eq_eventually, new_task_queue
from tests.sales_team import SalesTeam
from tests.worker_process import clean_env, temporal_address, wait_for_pollers, worker_process

DEALS = 12


async def workers_that_ran(env: WorkflowEnvironment, opportunity_id: str) -> list[str]:
    """Identities of the workers that completed each workflow task, in history order."""
    history = await env.client.get_workflow_handle(workflow_id(opportunity_id)).fetch_history()
    return [
        event.workflow_task_completed_event_attributes.identity
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]


async def test_two_worker_processes_share_the_queue_and_survive_one_stopping(
    temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool, postgres_url: str, tmp_path: Path
) -> None:
    team = SalesTeam(uuid.uuid4().hex[:6])
    await import_people(db_pool, team.people)
    queue = new_task_queue()
    env = clean_env(
        DATABASE_URL=postgres_url,
        TEMPORAL_ADDRESS=temporal_address(temporal_env.client),
        TEMPORAL_NAMESPACE="default",
        OPPFLOW_TASK_QUEUE=queue,
        OPPFLOW_DATA_DIR=str(tmp_path / "data"),
    )
    client = OpportunityClient(temporal_env.client, db_pool, queue)
    rep = team.actor("rep")

    with worker_process(env, tmp_path, "worker-a") as a, worker_process(env, tmp_path, "worker-b") as b:
        pollers = await wait_for_pollers(temporal_env.client, queue, 2)
        identity = {w: next(p for p in pollers if p.startswith(w.identity)) for w in (a, b)}

        opps = [f"opp-{uuid.uuid4().hex[:10]}" for _ in range(DEALS)]
        await asyncio.gather(
            *(
                client.create(
                    actor=rep,
                    name=f"Deal {n}",
                    account="Acme",
                    owner_id=team.id("rep"),
                    opportunity_id=opp,
                    amount="1000",
                )
                for n, opp in enumerate(opps)
            )
        )
        await asyncio.gather(*(client.change_stage(opp, actor=rep, stage="Qualification") for opp in opps))

        ran = {opp: await workers_that_ran(temporal_env, opp) for opp in opps}
        used = {worker for identities in ran.values() for worker in identities}
        assert used == {identity[a], identity[b]}, f"work went only to {used}"
        on_a = [opp for opp in opps if ran[opp][-1] == identity[a]]
        print(f"\n{len(on_a)} of {DEALS} deals last ran on worker A, {DEALS - len(on_a)} on worker B")

        a.stop()  # SIGTERM, as `docker compose stop` sends it
        assert a.process.returncode is not None

        started = time.monotonic()
        await asyncio.gather(
            *(client.update_fields(opp, actor=rep, fields={"next_step": "demo"}) for opp in opps)
        )
        print(f"after worker A stopped, {DEALS} updates answered in {time.monotonic() - started:.1f} s")
        late = await client.create(actor=rep, name="Late deal", account="Globex", owner_id=team.id("rep"))

        for opp in opps:
            assert (await workers_that_ran(temporal_env, opp))[-1] == identity[b]
        await assert_eq_eventually([identity[b]], lambda: workers_that_ran(temporal_env, late.opportunity_id))
        states = await asyncio.gather(*(client.state(opp) for opp in opps))
        assert all(state["fields"].get("next_step") == "demo" for state in states)

        async def saved() -> int:
            return await db_pool.fetchval(
                "SELECT count(*) FROM opportunities WHERE id = ANY($1::text[]) "
                "AND fields->>'next_step' = 'demo'",
                opps,
            )

        await assert_eq_eventually(DEALS, saved)
        assert b.process.poll() is None, b.output()
