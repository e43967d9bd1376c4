"""The Temporal server (persistent SQLite file) is down while escalation timers come due:
after the restart no deal is lost and every escalation fires exactly once."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from starter.client import OpportunityClient
from tests.reliability.deals import move_deal, new_team, open_deals, publish_bench_process
from tests.reliability.escalations import (
    all_escalated,
    escalation_rows,
    escalations_fired,
    lateness,
    open_opportunities,
)
from tests.reliability.ledger import Ledger, report, sleep_until, verify, wait_until, workflow_health
from tests.reliability.stack import StoppablePostgres, WorkerFleet, connect, start_temporal

pytestmark = pytest.mark.slow

DEALS = 30
STUCK_AFTER = 20  # seconds; the bench process's stuck_after


async def test_escalations_due_while_the_server_is_down_fire_once_after_restart(
    rel_pool: asyncpg.Pool, rel_postgres: StoppablePostgres, logdir: Path
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="oppflow-rel-restart-"))
    server = await start_temporal(workdir, persistent=True)
    client = await connect(server.address)
    fleet = WorkerFleet(
        client,
        address=server.address,
        database_url=rel_postgres.url,
        task_queue=f"rel-{uuid.uuid4().hex[:10]}",
        logdir=logdir,
    )
    try:
        ledger = Ledger()
        process = await publish_bench_process(rel_pool, stuck_after=f"{STUCK_AFTER}s")
        team = await new_team(rel_pool)
        await fleet.start(1)
        oc = OpportunityClient(client, rel_pool, fleet.task_queue)
        deals = await open_deals(oc, team, process, ledger, DEALS)
        await asyncio.gather(*(move_deal(oc, team, ledger, opp, 1) for opp in deals))
        due = max(
            r["stage_entered_at"]
            for r in await rel_pool.fetch(
                "SELECT stage_entered_at FROM opportunities WHERE id = ANY($1)", deals
            )
        )
        open_before = await open_opportunities(client, fleet.task_queue, expect=DEALS)
        assert not await escalation_rows(rel_pool, deals), "nothing is due before the server stops"

        await server.astop()
        stopped_at = datetime.now(UTC)
        assert (stopped_at - due).total_seconds() < STUCK_AFTER, "stopped before the deadlines"
        await sleep_until(due + timedelta(seconds=STUCK_AFTER + 5))
        restarted_at = datetime.now(UTC)
        began = time.monotonic()
        server = await start_temporal(workdir, persistent=True, port=server.options.port)

        await wait_until(lambda: all_escalated(rel_pool, deals))
        recovered = time.monotonic() - began
        await asyncio.sleep(3)  # a second firing would show by now
        rows = await escalation_rows(rel_pool, deals)
        fired = await escalations_fired(client, deals)
        open_after = await open_opportunities(client, fleet.task_queue, expect=DEALS)
        verdict = await verify(ledger, client, rel_pool)
        health = await workflow_health(client, fleet.task_queue)
        report(
            "temporal_restart",
            deals=DEALS,
            open_before=open_before,
            open_after=open_after,
            escalations_due=DEALS,
            escalations_fired=sum(1 for n in fired.values() if n >= 1),
            escalations_fired_twice=sum(1 for n in fired.values() if n > 1),
            server_down_seconds=round((restarted_at - stopped_at).total_seconds(), 1),
            recovery_seconds=round(recovered, 1),
            last_fired_after_restart_seconds=round(lateness(rows, restarted_at), 1),
            **verdict.figures,
            **health.figures,
        )
        assert open_after == open_before == DEALS
        assert {r["opportunity_id"] for r in rows} == set(deals)
        assert all(r["fired_at"] >= restarted_at for r in rows), "no timer fires while the server is down"
        assert all(n == 1 for n in fired.values()) and len(fired) == DEALS
        verdict.assert_clean()
        health.assert_clean()
    finally:
        fleet.stop()
        await server.astop()
