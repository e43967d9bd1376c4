"""Every worker is down while activities are recorded and field updates are retried with
the same request id: after the restart each is applied once, and the escalations that came
due in the meantime fire, once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from temporalio.client import Client

from starter.client import OpportunityClient
from tests.reliability.deals import new_team, open_deals, publish_bench_process, record_activity, set_field
from tests.reliability.escalations import (
    all_escalated,
    escalation_rows,
    escalations_fired,
    open_opportunities,
)
from tests.reliability.ledger import Ledger, report, seeded, sleep_until, verify, wait_until, workflow_health
from tests.reliability.stack import WorkerFleet

pytestmark = pytest.mark.slow

DEALS = 20
STUCK_AFTER = 20


async def test_commands_sent_while_all_workers_are_down_apply_once_after_restart(
    fleet: WorkerFleet, opps: OpportunityClient, rel_pool: asyncpg.Pool, rel_client: Client
) -> None:
    rng = seeded("workers_down")
    ledger = Ledger()
    process = await publish_bench_process(rel_pool, stuck_after=f"{STUCK_AFTER}s")
    team = await new_team(rel_pool)
    await fleet.start(2)
    deals = await open_deals(opps, team, process, ledger, DEALS)
    created = max(
        r["stage_entered_at"]
        for r in await rel_pool.fetch("SELECT stage_entered_at FROM opportunities WHERE id = ANY($1)", deals)
    )
    open_before = await open_opportunities(rel_client, fleet.task_queue, expect=DEALS)
    fleet.kill_all()
    down_at = time.monotonic()

    signals = []
    for opp in deals:
        for n in range(rng.randint(1, 3)):
            signals.append(
                record_activity(opps, team, ledger, opp, f"{opp}-call-{n}", f"call {n} while down")
            )
    await asyncio.gather(*signals)
    signalled_while_down = time.monotonic() - down_at

    async def update(opp: str) -> None:
        await asyncio.sleep(rng.uniform(0, 3))
        await set_field(opps, team, ledger, opp, "next_step", f"follow up {opp}", f"{opp}-next-step")

    updates = asyncio.gather(*(update(opp) for opp in deals))
    await sleep_until(created + timedelta(seconds=STUCK_AFTER + 3))
    assert not await escalation_rows(rel_pool, deals), "no worker, no escalation yet"
    attempts_while_down = ledger.attempts

    restarted = time.monotonic()
    restarted_at = datetime.now(UTC)
    await fleet.start(1)
    await updates
    updates_applied = time.monotonic() - restarted
    await wait_until(lambda: all_escalated(rel_pool, deals), 90)
    escalated = time.monotonic() - restarted
    await asyncio.sleep(3)

    rows = await escalation_rows(rel_pool, deals)
    fired = await escalations_fired(rel_client, deals)
    verdict = await verify(ledger, rel_client, rel_pool)
    health = await workflow_health(rel_client, fleet.task_queue)
    report(
        "workers_down",
        deals=DEALS,
        signals=ledger.count("activity"),
        signals_acknowledged_while_down_seconds=round(signalled_while_down, 1),
        updates=ledger.count("fields"),
        update_attempts_while_down=attempts_while_down - ledger.count("activity"),
        updates_applied_after_restart_seconds=round(updates_applied, 1),
        escalations_due=DEALS,
        escalations_fired=sum(1 for n in fired.values() if n >= 1),
        escalations_fired_twice=sum(1 for n in fired.values() if n > 1),
        escalations_after_restart_seconds=round(escalated, 1),
        **verdict.figures,
        **health.figures,
    )
    assert await open_opportunities(rel_client, fleet.task_queue, expect=DEALS) == open_before == DEALS
    assert ledger.count("fields") == DEALS and ledger.count("activity") >= DEALS
    assert {r["opportunity_id"] for r in rows} == set(deals)
    assert all(r["fired_at"] >= restarted_at for r in rows)
    assert all(n == 1 for n in fired.values()) and len(fired) == DEALS
    verdict.assert_clean()
    health.assert_clean()
