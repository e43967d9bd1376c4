"""Scenario 5, deals with a past: each of D deals is sent A activities back to back by its
own sender (a flood), then its worker restarts and every deal gets one more message at
once. A worker that has not cached a deal replays its current run, so this measures
what long runs cost: how long the deals take to take in the flood, and to answer again
after the restart. Baseline: the bare entity workflow saving its signals."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from temporalio.api.enums.v1 import EventType, TimeoutType, WorkflowTaskFailedCause
from temporalio.service import RPCError

from bench.baseline import BARE_WORKFLOW, BareInput
from bench.measure import percentile
from bench.stack import Stack, owner_id, rep
from starter.client import OpportunityClient, workflow_id

if TYPE_CHECKING:
    from bench.scenarios import Sizes

SETTLE_TIMEOUT_S = 600.0
ANSWER_TIMEOUT_S = 300.0
SEND_ATTEMPTS = 10
REFUSED_CONTINUE = WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND


class _Deals:
    """One variant's deals: how to start one, message one, and count what it took in."""

    def __init__(self, stack: Stack, kind: str, queue: str, count: int) -> None:
        self.stack, self.kind, self.queue = stack, kind, queue
        tag = uuid.uuid4().hex[:6]
        self.ids = [f"busy-{kind}-{tag}-{i}" for i in range(count)]
        self.opps = OpportunityClient(stack.client, stack.pool, queue)

    def workflow_id(self, deal: str) -> str:
        return deal if self.kind == "bare" else workflow_id(deal)

    async def start(self, deal: str) -> None:
        if self.kind == "bare":
            await self.stack.client.start_workflow(
                BARE_WORKFLOW, BareInput(deal_id=deal, stage="Prospecting"), id=deal, task_queue=self.queue
            )
        else:
            index = int(deal.rsplit("-", 1)[1])
            await self.opps.create(
                actor=rep(index),
                name=f"Busy {deal}",
                account="Busy Co",
                owner_id=owner_id(index),
                opportunity_id=deal,
            )

    async def message(self, deal: str, n: int) -> None:
        if self.kind == "bare":
            handle = self.stack.client.get_workflow_handle(deal)
            await handle.signal("record_activity", {"request_id": f"{deal}-{n}"})
        else:
            index = int(deal.rsplit("-", 1)[1])
            await self.opps.record_activity(
                deal, actor=rep(index), kind="email", subject=f"message {n}", request_id=f"{deal}-{n}"
            )

    async def send(self, deal: str, n: int) -> int:
        """Message ``n``, sent again with the same request id while the server refuses it
        (a deal that is continuing as new answers "workflow is closing" once the client's own
        retries are spent); answers how many times it was refused."""
        for refused in range(SEND_ATTEMPTS):
            try:
                await self.message(deal, n)
                return refused
            except RPCError:
                if refused == SEND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(1)
        return SEND_ATTEMPTS

    async def taken_in(self, deal: str) -> int:
        """Activities the deal has applied and saved; -1 while it does not answer."""
        try:
            state = await asyncio.wait_for(
                self.stack.client.get_workflow_handle(self.workflow_id(deal)).query("get_state"), 20
            )
        except Exception:
            return -1
        if self.kind == "bare":
            return int(state["activity_count"])
        return int(state["activity_count"]) if state["pending_writes"] == 0 else -1


async def _until_all(deals: _Deals, want: int, timeout: float) -> list[float]:  # noqa: ASYNC109
    """Seconds until each deal has taken in ``want`` activities (missing: did not in time)."""
    began = time.monotonic()

    async def one(deal: str) -> float | None:
        while time.monotonic() - began < timeout:
            if await deals.taken_in(deal) >= want:
                return time.monotonic() - began
            await asyncio.sleep(0.5)
        return None

    done = await asyncio.gather(*(one(d) for d in deals.ids))
    return sorted(t for t in done if t is not None)


async def _runs(deals: _Deals) -> dict[str, Any]:
    """Every run of every deal: how many, the longest, and the workflow tasks that went wrong."""
    runs = longest = timed_out = sticky_timed_out = failed = refused = 0
    for deal in deals.ids:
        query = f"WorkflowId = '{deals.workflow_id(deal)}'"
        async for run in deals.stack.client.list_workflows(query):
            runs += 1
            history = await deals.stack.client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
            longest = max(longest, len(history.events))
            for event in history.events:
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                    # Schedule-to-start: the task waited for its worker's sticky queue too long
                    # and went to any worker; start-to-close: a worker took it and did not finish.
                    kind = event.workflow_task_timed_out_event_attributes.timeout_type
                    if kind == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START:
                        sticky_timed_out += 1
                    else:
                        timed_out += 1
                elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    failed += 1
                    refused += event.workflow_task_failed_event_attributes.cause == REFUSED_CONTINUE
    return {
        "runs": runs,
        "longest_run_events": longest,
        "tasks_timed_out": timed_out,
        "tasks_timed_out_on_sticky_queue": sticky_timed_out,
        "tasks_failed": failed,
        "of_which_continue_as_new_refused": refused,
    }


def _times(seconds: list[float], expected: int) -> dict[str, Any]:
    return {
        "answered": len(seconds),
        "missing": expected - len(seconds),
        "p50_s": round(percentile(seconds, 50), 1),
        "max_s": round(max(seconds, default=0.0), 1),
    }


async def _variant(
    stack: Stack, kind: str, deals_count: int, activities: int, experiment: str | None
) -> dict[str, Any]:
    queue = f"bench-busy-{kind}-{uuid.uuid4().hex[:6]}"
    worker_kind = "baseline" if kind == "bare" else "oppflow"
    worker = await stack.start_worker(worker_kind, queue, experiment=experiment)
    deals = _Deals(stack, kind, queue, deals_count)
    try:
        for deal in deals.ids:
            await deals.start(deal)

        async def flood(deal: str) -> int:
            return sum([await deals.send(deal, n) for n in range(activities)])

        began = time.monotonic()
        refused = sum(await asyncio.gather(*(flood(d) for d in deals.ids)))
        flood_s = time.monotonic() - began
        settled = await _until_all(deals, activities, SETTLE_TIMEOUT_S)
        flood_runs = await _runs(deals)

        await stack.stop_worker(worker)
        worker = await stack.start_worker(worker_kind, queue, experiment=experiment)
        await asyncio.gather(*(deals.send(d, activities) for d in deals.ids))
        answered = await _until_all(deals, activities + 1, ANSWER_TIMEOUT_S)
        after = await _runs(deals)
    finally:
        await stack.stop_worker(worker)
    return {
        "deals": deals_count,
        "activities_per_deal": activities,
        "flood_seconds": round(flood_s, 1),
        "flood_signals_per_s": round(deals_count * activities / flood_s, 1) if flood_s else 0.0,
        "flood_signals_refused_then_sent_again": refused,
        "settled_after_flood": _times(settled, deals_count),
        "after_flood": flood_runs,
        "answered_after_restart": _times(answered, deals_count),
        "after_restart": {
            key: after[key] - flood_runs[key] if key.startswith(("tasks", "of_which")) else after[key]
            for key in after
        },
    }


async def busy_deals(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    d, a = sizes.busy_deals, sizes.busy_activities
    bare = await _variant(stack, "bare", d, a, None)
    ours = await _variant(stack, "oppflow", d, a, sizes.experiment)
    ours_restart = ours["answered_after_restart"]
    return {
        "sizes": {"deals": d, "activities_per_deal": a},
        "figures": {"bare entity": bare, "oppflow": ours},
        "ratios": {
            "flood_rate_vs_bare": round(ours["flood_signals_per_s"] / bare["flood_signals_per_s"], 3)
            if bare["flood_signals_per_s"]
            else 0.0,
            "restart_answer_max_vs_bare": round(
                ours_restart["max_s"] / max(bare["answered_after_restart"]["max_s"], 0.1), 3
            ),
        },
        "targets": {
            "every deal took in its flood": ours["settled_after_flood"]["missing"] == 0,
            "every deal answered within a minute of the restart": ours_restart["missing"] == 0
            and ours_restart["max_s"] <= 60,
        },
    }
