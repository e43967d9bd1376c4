"""Workers die with SIGKILL while reps move deals: no acknowledged move is lost, none is
applied twice. A deterministic variant kills the worker between the Postgres COMMIT and
the activity's reply."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client

from starter.client import OpportunityClient
from tests.reliability.deals import (
    Pace,
    move_deal,
    new_team,
    open_deals,
    publish_bench_process,
    set_field,
)
from tests.reliability.ledger import Ledger, report, seeded, settled, verify, workflow_health
from tests.reliability.stack import WorkerFleet

pytestmark = pytest.mark.slow

DEALS = int(os.environ.get("OPPFLOW_REL_DEALS", "200"))
MOVES = int(os.environ.get("OPPFLOW_REL_MOVES", "20"))
RATE = float(os.environ.get("OPPFLOW_REL_RATE", "40"))  # moves per second, all deals together


async def keep_killing(fleet: WorkerFleet, rng, done: asyncio.Event, restarts: list[float]) -> None:
    """Every few seconds, SIGKILL a random worker and start a fresh one."""
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), rng.uniform(4.0, 8.0))
            return
        except TimeoutError:
            pass
        fleet.kill(rng.choice(fleet.workers))
        began = time.monotonic()
        await fleet.start(1)
        restarts.append(time.monotonic() - began)


@pytest.mark.timeout(1200)
async def test_sigkilled_workers_lose_nothing_and_apply_nothing_twice(
    fleet: WorkerFleet, opps: OpportunityClient, rel_pool: asyncpg.Pool, rel_client: Client
) -> None:
    rng = seeded("worker_sigkill")
    ledger = Ledger()
    process = await publish_bench_process(rel_pool)
    team = await new_team(rel_pool)
    await fleet.start(2)
    deals = await open_deals(opps, team, process, ledger, DEALS)

    done = asyncio.Event()
    restarts: list[float] = []
    killer = asyncio.create_task(keep_killing(fleet, rng, done, restarts))
    began = time.monotonic()
    pace = Pace(RATE, in_flight=DEALS)  # a killed worker stalls its deals, not the others
    try:
        await asyncio.gather(*(move_deal(opps, team, ledger, opp, MOVES, pace) for opp in deals))
    finally:
        done.set()
        await killer
    elapsed = time.monotonic() - began

    try:
        verdict = await verify(ledger, rel_client, rel_pool)
    except AssertionError as failure:  # keep what the workers logged about the deals named
        named = set(re.findall(r"rel-[0-9a-f]+", str(failure)))
        lines = [
            line
            for line in fleet.logs().splitlines()
            if any(opp in line for opp in named) or "Traceback" in line or "deadlock" in line
        ]
        raise AssertionError(f"{failure}\nworker log:\n" + "\n".join(lines[-40:])) from None
    health = await workflow_health(rel_client, fleet.task_queue)
    report(
        "worker_sigkill",
        deals=DEALS,
        moves_per_deal=MOVES,
        seconds=round(elapsed, 1),
        moves_per_second=round(ledger.count("stage") / elapsed, 1),
        kills=fleet.kills,
        worker_restart_seconds_max=round(max(restarts, default=0), 1),
        slowest_ack_seconds=round(ledger.slowest_ack, 1),
        attempts=ledger.attempts,
        retries=ledger.retries,
        **verdict.figures,
        **health.figures,
    )
    assert ledger.count("stage") == DEALS * MOVES
    assert DEALS * MOVES >= 4_000 or "OPPFLOW_REL_DEALS" in os.environ, "the bar is 200 deals x 20 moves"
    assert fleet.kills >= 3, "the workers were not killed often enough to prove anything"
    assert not ledger.refused
    verdict.assert_clean()
    health.assert_clean()


async def test_a_crash_between_commit_and_reply_writes_each_change_once(
    fleet: WorkerFleet, opps: OpportunityClient, rel_pool: asyncpg.Pool, rel_client: Client, logdir: Path
) -> None:
    ledger = Ledger()
    process = await publish_bench_process(rel_pool)
    team = await new_team(rel_pool)
    await fleet.start(1)
    [opp] = await open_deals(opps, team, process, ledger, 1)
    await move_deal(opps, team, ledger, opp, 2)
    await settled(rel_client, rel_pool, [opp])
    fleet.stop()

    marker = logdir / "crashed-after-commit"
    [doomed] = await fleet.start(1, OPPFLOW_FAULT_CRASH_AFTER_COMMIT=str(marker))
    move = asyncio.create_task(move_deal(opps, team, ledger, opp, 3, first=3))
    await asyncio.to_thread(doomed.process.wait, 60)
    assert doomed.process.returncode == 137 and marker.exists()
    committed = await rel_pool.fetchval(
        "SELECT count(*) FROM stage_history WHERE opportunity_id = $1 AND request_id = $2",
        opp,
        f"{opp}-move-3",
    )
    assert committed == 1, "the move was committed before the worker died"
    fleet.kill(doomed)

    # While no worker runs, a second command arrives: after the restart both are applied in
    # the workflow task that replaces the one that died.
    field = asyncio.create_task(
        set_field(opps, team, ledger, opp, "next_step", "send the MSA", f"{opp}-field")
    )
    await asyncio.sleep(2)
    began = time.monotonic()
    await fleet.start(1, OPPFLOW_FAULT_CRASH_AFTER_COMMIT=str(marker))
    await asyncio.gather(move, field)
    recovered = time.monotonic() - began

    verdict = await verify(ledger, rel_client, rel_pool)
    health = await workflow_health(rel_client, fleet.task_queue)
    report("crash_after_commit", recovery_seconds=round(recovered, 1), **verdict.figures, **health.figures)
    assert ledger.count("stage") == 3
    verdict.assert_clean()
    health.assert_clean()
