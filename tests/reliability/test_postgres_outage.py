"""Postgres stops for 30 s while reps move deals, and every session is terminated once:
moves keep being acknowledged, every one lands after recovery, none twice."""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import pytest
from temporalio.client import Client

from db.pool import create_pool
from starter.client import OpportunityClient
from tests.reliability.deals import Pace, move_deal, new_team, open_deals, publish_bench_process
from tests.reliability.ledger import Ledger, report, seeded, settled, verify, wait_until, workflow_health
from tests.reliability.stack import StoppablePostgres, WorkerFleet, dsn_of, terminate_backends

pytestmark = pytest.mark.slow

DEALS = 60
MOVES = 15
RATE = 20.0
OUTAGE_SECONDS = float(os.environ.get("OPPFLOW_REL_OUTAGE", "30"))


async def test_a_postgres_outage_delays_writes_and_loses_none(
    fleet: WorkerFleet,
    opps: OpportunityClient,
    rel_pool: asyncpg.Pool,
    rel_client: Client,
    rel_postgres: StoppablePostgres,
) -> None:
    rng = seeded("postgres_outage")
    ledger = Ledger()
    process = await publish_bench_process(rel_pool)
    team = await new_team(rel_pool)
    await fleet.start(2)
    deals = await open_deals(opps, team, process, ledger, DEALS)
    await settled(rel_client, rel_pool, deals, timeout=300)

    acked_before_outage = 0
    acked_during_outage = 0
    figures: dict[str, float | int] = {}

    async def landed(owed: list[tuple[str, str]], since: float) -> float:
        """Seconds from the restart until every move acknowledged by then is in stage_history."""
        conn = await asyncpg.connect(dsn_of(rel_postgres.url))

        async def all_there() -> bool:
            found = await conn.fetchval(
                "SELECT count(*) FROM stage_history s JOIN unnest($1::text[], $2::text[]) AS o(opp, rid) "
                "ON s.opportunity_id = o.opp AND s.request_id = o.rid",
                [o for o, _ in owed],
                [r for _, r in owed],
            )
            return found == len(owed)

        try:
            await wait_until(all_there, 180)
        finally:
            await conn.close()
        return time.monotonic() - since

    async def outage() -> None:
        nonlocal acked_before_outage, acked_during_outage
        await asyncio.sleep(rng.uniform(3, 6))
        acked_before_outage = ledger.count("stage")
        await asyncio.to_thread(rel_postgres.stop)
        await asyncio.sleep(OUTAGE_SECONDS)
        acked_during_outage = ledger.count("stage") - acked_before_outage
        await asyncio.to_thread(rel_postgres.start)
        restarted = time.monotonic()
        owed = [(opp, a.request_id) for opp, acks in ledger.acks.items() for a in acks.values()]
        await asyncio.sleep(rng.uniform(2, 4))
        figures["backends_terminated"] = await terminate_backends(rel_postgres.url)
        figures["recovery_seconds"] = await landed(owed, restarted)

    pace = Pace(RATE)
    fault = asyncio.create_task(outage())
    await asyncio.gather(*(move_deal(opps, team, ledger, opp, MOVES, pace) for opp in deals))
    await fault

    # The test's own pool lost its sessions too: read the result through a fresh one.
    pool = await create_pool(rel_postgres.url, min_size=1, max_size=4)
    try:
        drained = await settled(rel_client, pool, deals, timeout=180)
        verdict = await verify(ledger, rel_client, pool)
    finally:
        await pool.close()
    health = await workflow_health(rel_client, fleet.task_queue)
    report(
        "postgres_outage",
        outage_seconds=OUTAGE_SECONDS,
        acknowledged_during_outage=acked_during_outage,
        backends_terminated=figures["backends_terminated"],
        recovery_seconds=round(figures["recovery_seconds"], 1),
        drain_after_load_seconds=round(drained, 1),
        slowest_ack_seconds=round(ledger.slowest_ack, 1),
        retries=ledger.retries,
        **verdict.figures,
        **health.figures,
    )
    assert ledger.count("stage") == DEALS * MOVES
    assert acked_during_outage > 0, "moves are acknowledged while Postgres is down"
    assert figures["backends_terminated"] > 0
    assert not ledger.refused
    verdict.assert_clean()
    health.assert_clean()
