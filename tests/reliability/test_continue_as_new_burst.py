"""A burst of field updates and recorded activities on deals that continue as new every
~60 events, 30% of the commands sent twice: ledger = state = database, and no handler is
left unfinished when a run hands over to the next."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import asyncpg
import pytest
from temporalio.client import Client

from starter.client import OpportunityClient
from tests.reliability.deals import new_team, open_deals, publish_bench_process, record_activity, set_field
from tests.reliability.ledger import (
    Ledger,
    report,
    seeded,
    unfinished_handler_warnings,
    verify,
    workflow_health,
)
from tests.reliability.stack import WorkerFleet

pytestmark = pytest.mark.slow

DEALS = 20
UPDATES = 25
SIGNALS = 25
RESENT = 0.3
IN_FLIGHT = 8  # commands in flight per deal at once


async def test_a_burst_across_continue_as_new_loses_and_repeats_nothing(
    fleet: WorkerFleet, opps: OpportunityClient, rel_pool: asyncpg.Pool, rel_client: Client
) -> None:
    rng = seeded("continue_as_new_burst")
    ledger = Ledger()
    process = await publish_bench_process(rel_pool)
    team = await new_team(rel_pool)
    await fleet.start(1)
    deals = await open_deals(opps, team, process, ledger, DEALS)

    sends = []
    lanes = {opp: asyncio.Semaphore(IN_FLIGHT) for opp in deals}

    async def in_lane(opp: str, send: Awaitable[None]) -> None:
        async with lanes[opp]:
            await send

    for opp in deals:
        commands = [("fields", n) for n in range(UPDATES)] + [("activity", n) for n in range(SIGNALS)]
        for kind, n in commands:
            copies = 2 if rng.random() < RESENT else 1
            ledger.resent += copies - 1
            for _ in range(copies):
                if kind == "fields":
                    send = set_field(opps, team, ledger, opp, f"note_{n}", f"{opp} note {n}", f"{opp}-f{n}")
                else:
                    send = record_activity(opps, team, ledger, opp, f"{opp}-a{n}", f"call {n}")
                sends.append(in_lane(opp, send))
    rng.shuffle(sends)
    began = time.monotonic()
    await asyncio.gather(*sends)
    elapsed = time.monotonic() - began

    verdict = await verify(ledger, rel_client, rel_pool)
    health = await workflow_health(rel_client, fleet.task_queue)
    warnings = unfinished_handler_warnings(fleet.logs())
    report(
        "continue_as_new_burst",
        deals=DEALS,
        commands_sent=len(sends),
        resent_duplicates=ledger.resent,
        seconds=round(elapsed, 1),
        continued_as_new=health.statuses.get("CONTINUED_AS_NEW", 0),
        unfinished_handler_warnings=len(warnings),
        **verdict.figures,
        **health.figures,
    )
    assert ledger.count("fields") == DEALS * UPDATES and ledger.count("activity") == DEALS * SIGNALS
    assert ledger.resent > 0.2 * DEALS * (UPDATES + SIGNALS)
    assert health.statuses.get("CONTINUED_AS_NEW", 0) >= DEALS, "every deal crossed at least one run"
    assert not warnings, warnings[:5]
    assert not ledger.refused
    verdict.assert_clean()
    health.assert_clean()
