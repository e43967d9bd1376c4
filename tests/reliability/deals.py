"""The sales work the fault tests put through oppflow: a bench process without required
fields (so any open stage may follow any other), deals on it, and callers that retry each
command with the same request id until it is acknowledged."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from sales.messages import CommandResult
from sales.process import SalesProcess, parse_process_yaml
from starter import processes
from starter.client import OpportunityClient
from starter.org_chart import import_people
from tests.reliability.ledger import Ack, Ledger
from tests.sales_team import SalesTeam

OPEN_STAGES = ["Lead", "Discovery", "Proposal", "Negotiation"]
CREATE_BATCH = 20  # deals created at once: a new deal's first workflow task is the costliest


def bench_process_yaml(name: str, stuck_after: str | None = None) -> str:
    clock = ""
    if stuck_after:
        clock = f", stuck_after: {stuck_after}, escalation: [{{after: 0s, notify: owner}}]"
    stages = "\n".join(
        f"  - {{name: {stage}, probability: {10 + 20 * i}, forecast_category: Pipeline{clock}}}"
        for i, stage in enumerate(OPEN_STAGES)
    )
    return (
        f"name: {name}\n"
        "rules: {skip: always, max_backward_steps: null}\n"
        "stages:\n"
        f"{stages}\n"
        "  - {name: Won, probability: 100, forecast_category: Closed, closed: true, won: true}\n"
        "  - {name: Lost, probability: 0, forecast_category: Omitted, closed: true}\n"
    )


async def publish_bench_process(pool: asyncpg.Pool, stuck_after: str | None = None) -> SalesProcess:
    name = f"rel-{uuid.uuid4().hex[:8]}"
    process = parse_process_yaml(bench_process_yaml(name, stuck_after), source=name)
    await processes.publish(pool, process, "reliability-suite")
    return process


async def new_team(pool: asyncpg.Pool) -> SalesTeam:
    team = SalesTeam(uuid.uuid4().hex[:6])
    await import_people(pool, team.people)
    return team


async def open_deals(
    oc: OpportunityClient, team: SalesTeam, process: SalesProcess, ledger: Ledger, count: int
) -> list[str]:
    rep = team.actor("rep")

    async def one(n: int) -> str:
        opp = f"rel-{uuid.uuid4().hex[:12]}"
        request_id = f"{opp}-create"
        await oc.create(
            actor=rep,
            name=f"Deal {n}",
            account=f"Account {n}",
            owner_id=rep.id,
            opportunity_id=opp,
            process_name=process.name,
            request_id=request_id,
        )
        ledger.open(opp, request_id)
        return opp

    created = []
    for start in range(0, count, CREATE_BATCH):
        created += await asyncio.gather(*(one(n) for n in range(start, min(count, start + CREATE_BATCH))))
    return created


def next_stage(move: int) -> str:
    """Move n (1-based) of a deal that starts in Lead: round and round the open stages."""
    return OPEN_STAGES[move % len(OPEN_STAGES)]


class Pace:
    """A steady rate across all callers, one permit every 1/rate seconds, and a bounded
    number of commands in flight (like a client's connection pool): when the system slows
    down, callers wait instead of piling more work onto it."""

    def __init__(self, per_second: float, in_flight: int = 8) -> None:
        self.interval = 1.0 / per_second
        self.next_at = time.monotonic()
        self._lock = asyncio.Lock()
        self.lanes = asyncio.Semaphore(in_flight)

    async def permit(self) -> None:
        async with self._lock:
            now = time.monotonic()
            self.next_at = max(self.next_at + self.interval, now)
            wait = self.next_at - now
        if wait > 0:
            await asyncio.sleep(wait)


async def move_deal(
    oc: OpportunityClient,
    team: SalesTeam,
    ledger: Ledger,
    opp: str,
    moves: int,
    pace: Pace | None = None,
    *,
    first: int = 1,
) -> None:
    """Moves ``first..moves`` of one deal, in order, each retried until acknowledged."""
    rep = team.actor("rep")
    for n in range(first, moves + 1):
        request_id = f"{opp}-move-{n}"

        async def move(n: int = n, request_id: str = request_id) -> CommandResult:
            return await ledger.until_acknowledged(
                lambda: oc.change_stage(opp, actor=rep, stage=next_stage(n), request_id=request_id)
            )

        if pace is None:
            result = await move()
        else:
            await pace.permit()
            async with pace.lanes:
                result = await move()
        ledger.stage_acked(opp, result)


async def set_field(
    oc: OpportunityClient, team: SalesTeam, ledger: Ledger, opp: str, key: str, value: object, request_id: str
) -> None:
    rep = team.actor("rep")
    await ledger.until_acknowledged(
        lambda: oc.update_fields(opp, actor=rep, fields={key: value}, request_id=request_id)
    )
    ledger.record(opp, Ack(request_id, "fields", fields={key: value}))


async def record_activity(
    oc: OpportunityClient, team: SalesTeam, ledger: Ledger, opp: str, request_id: str, subject: str
) -> None:
    """A signal is acknowledged once the server has it in the deal's history."""
    rep = team.actor("rep")
    await ledger.until_acknowledged(
        lambda: oc.record_activity(opp, actor=rep, kind="call", subject=subject, request_id=request_id)
    )
    ledger.record(opp, Ack(request_id, "activity"))
