"""The oracle of the fault tests: a ledger of every command a caller saw acknowledged,
checked against the workflow state (``get_state``) and the Postgres rows.

At the end of a test: ledger = state = database; no request applied twice
(``count(*) = count(distinct (opportunity_id, request_id))``); no acknowledged command
missing; no failed or terminated workflow; no ``WorkflowTaskFailed`` event that the test
did not inject.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import asyncpg
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError

from sales.messages import CommandResult
from starter.client import CommandRejected, workflow_id

T = TypeVar("T")
Kind = Literal["create", "stage", "fields", "activity"]

# A caller gives up (and the test fails) when a command gets no answer for this long.
GIVE_UP_AFTER = 600.0
# The server fails a task that completes (or continues as new) while a new signal waits: the
# SDK retries it with the signal. Expected under a signal burst, not a bug of ours.
SERVER_DRIVEN_CAUSES = {WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND}


async def wait_until(condition: Callable[[], Awaitable[bool]], limit: float = 120.0) -> float:
    """Poll ``condition`` until it holds or ``limit`` seconds pass; answer the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        if await condition():
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - began


async def sleep_until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


REPORT_FILE_ENV = "OPPFLOW_RELIABILITY_REPORT"


def seeded(test: str) -> random.Random:
    """The test's random source; the seed is printed so a failing run can be repeated."""
    seed = int(os.environ.get("OPPFLOW_SEED") or time.time_ns() % 1_000_000_007)
    print(f"{test}: OPPFLOW_SEED={seed}")
    return random.Random(seed)


def report(test: str, **figures: Any) -> None:
    """One parseable line per test: ``RELIABILITY {json}``, printed and added to the file the
    test session shows in its summary (so a CI log carries the figures of every fault test)."""
    line = "RELIABILITY " + json.dumps({"test": test, **figures}, default=str, sort_keys=True)
    print(line, flush=True)
    if path := os.environ.get(REPORT_FILE_ENV):
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


@dataclass
class Ack:
    request_id: str
    kind: Kind
    stage: str | None = None
    stage_entry_seq: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ledger:
    """What callers saw acknowledged, per opportunity, in order."""

    acks: dict[str, dict[str, Ack]] = field(default_factory=dict)
    attempts: int = 0
    retries: int = 0
    resent: int = 0
    refused: list[str] = field(default_factory=list)
    slowest_ack: float = 0.0

    def open(self, opportunity_id: str, create_request_id: str) -> None:
        self.acks[opportunity_id] = {create_request_id: Ack(create_request_id, "create", stage_entry_seq=1)}

    def record(self, opportunity_id: str, ack: Ack) -> None:
        self.acks[opportunity_id].setdefault(ack.request_id, ack)

    def stage_acked(self, opportunity_id: str, result: CommandResult) -> None:
        self.record(opportunity_id, Ack(result.request_id, "stage", result.stage, result.stage_entry_seq))

    def count(self, kind: Kind) -> int:
        return sum(1 for acks in self.acks.values() for a in acks.values() if a.kind == kind)

    async def until_acknowledged(
        self, call: Callable[[], Awaitable[T]], *, attempt_timeout: float = 15.0, pause: float = 0.5
    ) -> T:
        """Send until the server answers; every attempt carries the same request id."""
        began = time.monotonic()
        while True:
            if time.monotonic() - began > GIVE_UP_AFTER:
                raise AssertionError(f"no answer after {GIVE_UP_AFTER:g}s of retries")
            self.attempts += 1
            try:
                answer = await asyncio.wait_for(call(), attempt_timeout)
                self.slowest_ack = max(self.slowest_ack, time.monotonic() - began)
                return answer
            except CommandRejected as refused:
                self.refused.append(f"{refused.rule}: {refused.message}")
                raise
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError, RuntimeError, OSError):
                # No answer: the command may or may not have been applied; the same id is safe.
                self.retries += 1
                await asyncio.sleep(pause)


@dataclass
class Verdict:
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def figures(self) -> dict[str, int]:
        return {
            "acknowledged": self.acknowledged,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "phantom": len(self.phantom),
            "mismatched": len(self.mismatched),
        }

    def assert_clean(self) -> None:
        problems = {
            "lost": self.lost,
            "duplicated": self.duplicated,
            "phantom": self.phantom,
            "state/db mismatch": self.mismatched,
        }
        shown = {k: v[:10] for k, v in problems.items() if v}
        assert not shown, f"oracle found {self.figures}: {shown}"


async def settled(
    client: Client,
    pool: asyncpg.Pool,
    opportunity_ids: list[str],
    timeout: float = 120.0,  # noqa: ASYNC109
) -> float:
    """Wait until every deal has written all it holds to Postgres; answer the seconds that took."""
    began = time.monotonic()
    pending = set(opportunity_ids)
    why: dict[str, str] = {}  # what the last look at a pending deal saw
    while pending:
        for opp in list(pending):
            try:
                state = await client.get_workflow_handle(workflow_id(opp)).query("get_state")
            except RPCError as exc:
                why[opp] = f"query failed: {exc}"[:300]
                continue
            # Settled: nothing queued, and the deal's row carries the state's last change.
            saved = await pool.fetchval("SELECT updated_at FROM opportunities WHERE id = $1", opp)
            changed = datetime.fromisoformat(state["updated_at"])
            if state["pending_writes"] == 0 and saved is not None and saved >= changed:
                pending.discard(opp)
            else:
                why[opp] = f"pending_writes={state['pending_writes']}, state {changed}, row {saved}"
        if pending:
            if time.monotonic() - began > timeout:
                stuck = {opp: why.get(opp, "never looked at") for opp in sorted(pending)[:5]}
                raise AssertionError(f"{len(pending)} deals not written after {timeout:g}s: {stuck}")
            await asyncio.sleep(0.5)
    return time.monotonic() - began


async def verify(ledger: Ledger, client: Client, pool: asyncpg.Pool) -> Verdict:
    """Ledger = state = database for every deal of the ledger."""
    verdict = Verdict(acknowledged=sum(len(a) - 1 for a in ledger.acks.values()))
    ids = list(ledger.acks)
    await settled(client, pool, ids)
    for opp, acks in ledger.acks.items():
        state = await client.get_workflow_handle(workflow_id(opp)).query("get_state")
        await _verify_one(verdict, opp, acks, state, pool)
    for table, key in (
        ("stage_history", "opportunity_id, request_id"),
        ("field_history", "opportunity_id, request_id, field"),
        ("activities", "opportunity_id, request_id"),
        ("opportunity_events", "opportunity_id, request_id"),
    ):
        row = await pool.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT ({key})) AS d FROM {table} WHERE opportunity_id = ANY($1)",
            ids,
        )
        if row["n"] != row["d"]:
            verdict.duplicated.append(f"{table}: {row['n'] - row['d']} duplicate rows")
    return verdict


async def _verify_one(
    verdict: Verdict, opp: str, acks: dict[str, Ack], state: dict[str, Any], pool: asyncpg.Pool
) -> None:
    stage_acks = [a for a in acks.values() if a.kind in ("create", "stage")]
    seqs = Counter(a.stage_entry_seq for a in stage_acks)
    for seq, n in seqs.items():
        if n > 1:
            verdict.duplicated.append(f"{opp}: {n} acknowledged moves answered stage entry {seq}")
    last = max(stage_acks, key=lambda a: a.stage_entry_seq or 0)
    if state["stage_entry_seq"] != len(stage_acks):
        kind = verdict.duplicated if state["stage_entry_seq"] > len(stage_acks) else verdict.lost
        kind.append(
            f"{opp}: state has stage entry {state['stage_entry_seq']}, ledger {len(stage_acks)} moves"
        )
    if last.stage and state["stage"] != last.stage:
        verdict.lost.append(f"{opp}: state in {state['stage']}, last acknowledged move to {last.stage}")

    expected_fields: dict[str, Any] = {}
    for ack in acks.values():
        expected_fields.update(ack.fields)
    for key, value in expected_fields.items():
        if state["fields"].get(key) != value:
            verdict.lost.append(
                f"{opp}: field {key} is {state['fields'].get(key)!r} in state, acknowledged {value!r}"
            )

    activities = {a.request_id for a in acks.values() if a.kind == "activity"}
    if state["activity_count"] != len(activities):
        kind = verdict.duplicated if state["activity_count"] > len(activities) else verdict.lost
        kind.append(f"{opp}: state counts {state['activity_count']} activities, ledger {len(activities)}")

    stage_rows = {
        r["request_id"]
        for r in await pool.fetch("SELECT request_id FROM stage_history WHERE opportunity_id = $1", opp)
    }
    expected_stage_rows = {a.request_id for a in stage_acks}
    verdict.lost += [f"{opp}: move {r} not in stage_history" for r in expected_stage_rows - stage_rows]
    verdict.phantom += [
        f"{opp}: stage_history {r} never acknowledged" for r in stage_rows - expected_stage_rows
    ]

    activity_rows = {
        r["request_id"]
        for r in await pool.fetch("SELECT request_id FROM activities WHERE opportunity_id = $1", opp)
    }
    verdict.lost += [f"{opp}: activity {r} not in activities" for r in activities - activity_rows]
    verdict.phantom += [f"{opp}: activity {r} never acknowledged" for r in activity_rows - activities]

    field_rows = {
        (r["request_id"], r["field"])
        for r in await pool.fetch(
            "SELECT request_id, field FROM field_history WHERE opportunity_id = $1", opp
        )
    }
    for ack in acks.values():
        for key in ack.fields:
            if (ack.request_id, key) not in field_rows:
                verdict.lost.append(f"{opp}: field {key} of {ack.request_id} not in field_history")

    row = await pool.fetchrow("SELECT stage, stage_entry_seq, fields FROM opportunities WHERE id = $1", opp)
    snapshot = {k: row[k] for k in ("stage", "stage_entry_seq", "fields")} if row else {}
    live = {k: state[k] for k in ("stage", "stage_entry_seq", "fields")}
    differs = {k: (snapshot.get(k), v) for k, v in live.items() if snapshot.get(k) != v}
    if differs:
        verdict.mismatched.append(f"{opp}: opportunities row != state: {differs}")


@dataclass
class Health:
    statuses: Counter[str] = field(default_factory=Counter)
    task_failures: Counter[str] = field(default_factory=Counter)
    server_driven_failures: int = 0
    task_timeouts: int = 0
    runs: int = 0

    @property
    def figures(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "statuses": dict(self.statuses),
            "workflow_task_failed": sum(self.task_failures.values()),
            "workflow_task_failed_server_driven": self.server_driven_failures,
            "workflow_task_timed_out": self.task_timeouts,
        }

    def assert_clean(self, injected_task_failures: int = 0) -> None:
        bad = {
            s: n for s, n in self.statuses.items() if s not in ("RUNNING", "COMPLETED", "CONTINUED_AS_NEW")
        }
        assert not bad, f"workflows ended badly: {bad}"
        assert sum(self.task_failures.values()) <= injected_task_failures, (
            f"workflow task failures: {dict(self.task_failures)}"
        )


async def workflow_health(client: Client, task_queue: str) -> Health:
    """Every run on the task queue (continued-as-new runs included): how it ended, and the
    workflow-task failures in its history."""
    health = Health()
    runs = [w async for w in client.list_workflows(f"TaskQueue = '{task_queue}'")]
    for run in runs:
        health.runs += 1
        status = run.status or WorkflowExecutionStatus.RUNNING
        health.statuses[status.name] += 1
        history = await client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                cause = event.workflow_task_failed_event_attributes.cause
                if cause in SERVER_DRIVEN_CAUSES:
                    health.server_driven_failures += 1
                else:
                    name = WorkflowTaskFailedCause.Name(cause)
                    message = event.workflow_task_failed_event_attributes.failure.message[:200]
                    health.task_failures[f"{run.id}: {name}: {message}"] += 1
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                health.task_timeouts += 1
    return health


UNFINISHED_HANDLER_MARKERS = ("TMPRL1102", "still running", "unfinished")


def unfinished_handler_warnings(worker_logs: str) -> list[str]:
    return [line for line in worker_logs.splitlines() if any(m in line for m in UNFINISHED_HANDLER_MARKERS)]
