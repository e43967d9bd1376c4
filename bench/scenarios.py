"""The benchmark scenarios (the fifth, busy deals, is in bench/busy_deals.py). Each runs
oppflow and the bare baseline on the same server in alternating rounds (baseline,
oppflow, baseline, oppflow, ...) and answers a dict of figures, ratios and whether the
issue's targets were met."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from bench.baseline import BARE_WORKFLOW, BareInput
from bench.busy_deals import busy_deals
from bench.clients import TimedClient
from bench.cpu import CpuSplit, cpu_split
from bench.measure import Sample, percentile, poll_until, pooled, timed_calls, timed_sequences
from bench.processes import STAGES_PROCESS, STORM_PROCESS, stage_name, stages_process, storm_process
from bench.stack import Stack, owner_id, rep
from bench.worker_process import WorkerProcess
from starter import processes
from starter.client import OpportunityClient, workflow_id
from starter.settings import Settings
from workflows import search_attributes

OPPFLOW_QUEUE = "bench-oppflow"
BARE_QUEUE = "bench-bare"
MIB = 1024 * 1024
STAGE_ROWS = "SELECT count(*) FROM stage_history WHERE opportunity_id = ANY($1)"


@dataclass
class Sizes:
    opportunities: int = 200
    changes: int = 5
    callers: int = 50
    rounds: int = 2
    creations: int = 200
    storm: int = 1000
    storm_rounds: int = 1
    storm_min_stuck: int = 30
    open_deals: int = 1000
    busy_deals: int = 10
    busy_activities: int = 1200
    experiment: str | None = None


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


# -- 1. stage changes ----------------------------------------------------------------------------


async def _bare_deals(
    stack: Stack,
    ids: list[str],
    callers: int,
    due_at: datetime | None = None,
    index_escalation: bool = False,
    indexed_start: bool = False,
) -> Sample:
    async def start(deal_id: str) -> None:
        await stack.client.start_workflow(
            BARE_WORKFLOW,
            BareInput(deal_id=deal_id, stage=stage_name(0), due_at=due_at, index_escalation=index_escalation),
            id=deal_id,
            task_queue=BARE_QUEUE,
            search_attributes=_as_a_new_deal(int(deal_id.rsplit("-", 1)[1])) if indexed_start else None,
        )

    return await timed_calls(ids, callers, start)


def _as_a_new_deal(index: int) -> TypedSearchAttributes:
    """The search attributes the creation scenario's deals get at start
    (workflows/search_attributes.py ``initial``: no close date, an amount)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(search_attributes.STAGE, "Prospecting"),
            SearchAttributePair(search_attributes.OWNER, owner_id(index)),
            SearchAttributePair(search_attributes.STAGE_ENTERED_AT, datetime.now(UTC)),
            SearchAttributePair(search_attributes.ESCALATION_LEVEL, 0),
            SearchAttributePair(search_attributes.FORECAST_CATEGORY, "Pipeline"),
            SearchAttributePair(search_attributes.AMOUNT, 25000.0),
        ]
    )


async def _create_opps(client: OpportunityClient, ids: list[str], callers: int, **extra: Any) -> Sample:
    async def create(opp_id: str) -> None:
        index = int(opp_id.rsplit("-", 1)[1])
        await client.create(
            actor=rep(index),
            name=f"Deal {opp_id}",
            account=f"Account {index % 97}",
            owner_id=owner_id(index),
            opportunity_id=opp_id,
            amount="25000",
            **extra,
        )

    return await timed_calls(ids, callers, create)


async def _warm(stack: Stack, workflow_ids: list[str], callers: int) -> Sample:
    """Query each deal once, so its first task has run and it is in the worker's cache."""
    return await timed_calls(
        workflow_ids, callers, lambda wf: stack.client.get_workflow_handle(wf).query("get_state")
    )


async def _count(stack: Stack, sql: str, ids: list[str]) -> int:
    return int(await stack.pool.fetchval(sql, ids))


SAVED_AND_INDEXED = "bare update + LA insert + SA upsert"
# The target's reference first; then what persisting and indexing a change cost the engine alone.
BARE_UPDATES = (
    ("bare update", "set_stage"),
    ("bare update + LA insert", "set_stage_saved"),
    (SAVED_AND_INDEXED, "set_stage_saved_indexed"),
)


async def stage_changes(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    n, m, c = sizes.opportunities, sizes.changes, sizes.callers
    await processes.publish(stack.pool, stages_process(m), "bench")
    client = OpportunityClient(stack.client, stack.pool, OPPFLOW_QUEUE)
    samples: dict[str, list[Sample]] = {variant: [] for variant, _ in (*BARE_UPDATES, ("oppflow", ""))}
    cpu: dict[str, list[CpuSplit]] = {variant: [] for variant in samples}
    persisted_ok = True
    last_bare = ""
    for _ in range(sizes.rounds):
        for variant, update in BARE_UPDATES:
            tag = _tag()
            ids = [f"bare-{tag}-{i}" for i in range(n)]
            await _bare_deals(stack, ids, c)
            await _warm(stack, ids, c)

            async def bare_move(deal_id: str, step: int, update: str = update) -> None:
                request_id = uuid.uuid4().hex
                await stack.client.get_workflow_handle(deal_id).execute_update(
                    update, {"stage": stage_name(step + 1), "request_id": request_id}, id=request_id
                )

            async with cpu_split(stack.workdir) as spent:
                samples[variant].append(await timed_sequences(ids, m, c, bare_move))
            cpu[variant].append(spent)
            if update == "set_stage":
                last_bare = ids[0]

        tag = _tag()
        opp_ids = [f"chg-{tag}-{i}" for i in range(n)]
        await _create_opps(client, opp_ids, c, process_name=STAGES_PROCESS)
        await _warm(stack, [f"opportunity-{o}" for o in opp_ids], c)

        async def move(opp_id: str, step: int) -> None:
            index = int(opp_id.rsplit("-", 1)[1])
            await client.change_stage(opp_id, actor=rep(index), stage=stage_name(step + 1))

        async with cpu_split(stack.workdir) as spent:
            samples["oppflow"].append(await timed_sequences(opp_ids, m, c, move))
        cpu["oppflow"].append(spent)
        rows = await _count(
            stack, "SELECT count(*) FROM stage_history WHERE opportunity_id = ANY($1)", opp_ids
        )
        persisted_ok &= rows == n * (m + 1)

    figures = {name: pooled(s).summary() for name, s in samples.items()}
    rounds = {name: [s.summary() for s in runs] for name, runs in samples.items()}
    history = {
        "bare update": await _history_shape(stack, last_bare),
        "oppflow": await _history_shape(stack, f"opportunity-{opp_ids[0]}"),
    }
    bare, ours = figures["bare update"], figures["oppflow"]
    ratios = {
        "throughput_vs_bare": _ratio(ours["per_s"], bare["per_s"]),
        "p99_vs_bare": _ratio(ours["p99_ms"], bare["p99_ms"]),
        "throughput_vs_bare_la": _ratio(ours["per_s"], figures["bare update + LA insert"]["per_s"]),
        "throughput_vs_bare_la_sa": _ratio(ours["per_s"], figures[SAVED_AND_INDEXED]["per_s"]),
        "p99_vs_bare_la_sa": _ratio(ours["p99_ms"], figures[SAVED_AND_INDEXED]["p99_ms"]),
    }
    return {
        "sizes": {"opportunities": n, "changes_each": m, "callers": c, "rounds": sizes.rounds},
        "figures": figures,
        "rounds": rounds,
        "ratios": ratios,
        "all_rows_in_postgres_when_answered": persisted_ok,
        "cpu_ms_per_change": {
            name: CpuSplit.pooled(splits).per_call_ms(n * m * len(splits)) for name, splits in cpu.items()
        },
        "history_of_one_deal": history,
        "targets": {
            "throughput >= 0.8x bare update": ratios["throughput_vs_bare"] >= 0.8,
            "p99 <= 2x bare update": ratios["p99_vs_bare"] <= 2.0,
            # The same Temporal work as a stage change (the update, its row saved by a local
            # activity, its stage indexed), without oppflow's logic.
            "throughput >= 0.8x bare update + LA insert + SA upsert": ratios["throughput_vs_bare_la_sa"]
            >= 0.8,
            "p99 <= 2x bare update + LA insert + SA upsert": ratios["p99_vs_bare_la_sa"] <= 2.0,
        },
    }


async def _history_shape(stack: Stack, workflow_id: str) -> dict[str, Any]:
    """Events and workflow tasks in one deal's history (its creation and M changes)."""
    kinds: dict[str, int] = {}
    size = 0
    async for event in stack.client.get_workflow_handle(workflow_id).fetch_history_events():
        name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        kinds[name] = kinds.get(name, 0) + 1
        size += event.ByteSize()
    return {"events": sum(kinds.values()), "bytes": size, "by_type": kinds}


# -- 2. creation ---------------------------------------------------------------------------------


BARE_START = "bare start"  # the target's reference
# The same start with the search attributes the contract gives a new deal (what indexing
# a new deal costs the engine).
BARE_START_INDEXED = "bare start + search attributes"


async def creation(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    n, c = sizes.creations, sizes.callers
    timed = TimedClient(stack.client, stack.pool, OPPFLOW_QUEUE)
    samples: dict[str, list[Sample]] = {BARE_START: [], BARE_START_INDEXED: [], "oppflow": []}
    cpu: dict[str, list[CpuSplit]] = {variant: [] for variant in samples}
    settled_after: dict[str, list[float]] = {variant: [] for variant in samples}
    for _ in range(sizes.rounds):
        for variant in (BARE_START, BARE_START_INDEXED):
            tag = _tag()
            ids = [f"bare-new-{tag}-{i}" for i in range(n)]
            began = time.perf_counter()
            async with cpu_split(stack.workdir) as spent:
                sample = await _bare_deals(stack, ids, c, indexed_start=variant == BARE_START_INDEXED)
            samples[variant].append(sample)
            cpu[variant].append(spent)
            # The next round starts on an idle stack, as the baseline's round did: its
            # workflows' first tasks are done (a query is answered only after the first task).
            await _warm(stack, ids, c)
            settled_after[variant].append(time.perf_counter() - began)
        tag = _tag()
        opp_ids = [f"new-{tag}-{i}" for i in range(n)]
        began = time.perf_counter()
        async with cpu_split(stack.workdir) as spent:
            samples["oppflow"].append(await _create_opps(timed, opp_ids, c))
        cpu["oppflow"].append(spent)
        await poll_until(partial(_rows_at_least, stack, opp_ids, n), timeout=120, interval=0.05)
        settled_after["oppflow"].append(time.perf_counter() - began)

    figures = {name: pooled(s).summary() for name, s in samples.items()}
    bare, ours = figures[BARE_START], figures["oppflow"]
    ratios = {
        "throughput_vs_bare": _ratio(ours["per_s"], bare["per_s"]),
        "throughput_vs_bare_indexed": _ratio(ours["per_s"], figures[BARE_START_INDEXED]["per_s"]),
    }
    return {
        "sizes": {"opportunities": n, "callers": c, "rounds": sizes.rounds},
        "figures": figures,
        "rounds": {name: [s.summary() for s in runs] for name, runs in samples.items()},
        "oppflow_all_rows_saved_s": [round(s, 2) for s in settled_after["oppflow"]],
        "bare_all_first_tasks_done_s": [round(s, 2) for s in settled_after[BARE_START]],
        "oppflow_step_mean_ms": timed.steps.mean_ms(),
        "cpu_ms_per_creation": {
            name: CpuSplit.pooled(splits).per_call_ms(n * len(splits)) for name, splits in cpu.items()
        },
        "ratios": ratios,
        "targets": {
            "throughput >= 0.8x bare start": ratios["throughput_vs_bare"] >= 0.8,
            "the same, against a bare start with the deal's search attributes": (
                ratios["throughput_vs_bare_indexed"] >= 0.8
            ),
        },
    }


async def _rows_at_least(stack: Stack, ids: list[str], n: int) -> bool:
    return await _count(stack, "SELECT count(*) FROM opportunities WHERE id = ANY($1)", ids) >= n


# -- 3. escalation storm -------------------------------------------------------------------------


def _storm_figures(rows: list[Any], due: datetime, n: int, created_s: float) -> dict[str, Any]:
    inserted = [(r["inserted_at"] - due).total_seconds() for r in rows]
    fired = [(r["fired_at"] - due).total_seconds() for r in rows]
    drain = max(inserted, default=0.0)
    return {
        "deals": n,
        "rows": len(rows),
        "created_in_s": round(created_s, 1),
        "all_rows_after_due_s": round(drain, 2),
        "drain_per_s": round(len(rows) / drain, 1) if drain > 0 else 0.0,
        "row_lateness_p50_ms": round(percentile(inserted, 50) * 1000),
        "row_lateness_p99_ms": round(percentile(inserted, 99) * 1000),
        "fired_lateness_p50_ms": round(percentile(fired, 50) * 1000),
        "fired_lateness_p99_ms": round(percentile(fired, 99) * 1000),
    }


async def _creation_rate(stack: Stack, kind: str, callers: int) -> float:
    """Deals per second this machine creates right now (a pilot of 20 deals)."""
    ids = [f"pilot-{kind}-{_tag()}-{i}" for i in range(20)]
    if kind != "oppflow":
        sample = await _bare_deals(stack, ids, callers)
    else:
        sample = await _create_opps(OpportunityClient(stack.client, stack.pool, OPPFLOW_QUEUE), ids, callers)
    return sample.count / sample.seconds if sample.seconds else 1.0


async def _storm_round(stack: Stack, sizes: Sizes, kind: str) -> dict[str, Any]:
    n, c = sizes.storm, sizes.callers
    # Every deal is due at the same second, after all of them had time to be created and
    # to run their first task (a third of the pilot's creation rate, as a margin).
    rate = await _creation_rate(stack, kind, c)
    stuck = max(sizes.storm_min_stuck, math.ceil(n / (rate / 3)) + 5)
    due = (datetime.now(UTC) + timedelta(seconds=stuck)).replace(microsecond=0)
    tag = _tag()
    began = time.perf_counter()
    if kind != "oppflow":
        ids = [f"bare-storm-{tag}-{i}" for i in range(n)]
        await _bare_deals(stack, ids, c, due_at=due, index_escalation=kind == "bare indexed")
        sql = "SELECT due_at, fired_at, inserted_at FROM bench_bare_escalations WHERE deal_id = ANY($1)"
    else:
        await processes.publish(stack.pool, storm_process(stuck), "bench")
        client = OpportunityClient(stack.client, stack.pool, OPPFLOW_QUEUE)
        ids = [f"storm-{tag}-{i}" for i in range(n)]
        await _create_opps(
            client, ids, c, process_name=STORM_PROCESS, stage_entered_at=due - timedelta(seconds=stuck)
        )
        sql = (
            "SELECT due_at, fired_at, updated_at AS inserted_at FROM escalations "
            "WHERE opportunity_id = ANY($1) AND level = 1"
        )
    created_s = time.perf_counter() - began
    if kind == "oppflow":
        # A new deal's first task (its row, its stage clock) runs after its start is
        # answered; the storm is measured once every deal is idle, as the baseline's are.
        await poll_until(
            partial(_rows_at_least, stack, ids, n), timeout=max(60.0, stuck - created_s), interval=0.25
        )
    idle_before_due_s = (due - datetime.now(UTC)).total_seconds()
    settled_query = SETTLED_QUERIES.get(kind)
    settled_before = await _count_settled(stack, settled_query) if settled_query else 0
    # The CPU of the storm itself: from a second before the deadline until the last row.
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - 1))
    async with cpu_split(stack.workdir) as until_settled:
        async with cpu_split(stack.workdir) as spent:
            await poll_until(lambda: _count_rows(stack, sql, ids, n), timeout=600, interval=0.25)
        if settled_query:
            settled = partial(_settled_at_least, stack, settled_query, settled_before + n)
            await poll_until(settled, timeout=600, interval=0.25)
            settled_s = (datetime.now(UTC) - due).total_seconds()
    rows = await stack.pool.fetch(sql, ids)
    figures = _storm_figures(rows, due, n, created_s)
    if settled_query:
        figures["all_settled_after_due_s"] = round(settled_s, 2)
        figures["settled_per_s"] = round(n / settled_s, 1) if settled_s > 0 else 0.0
        figures["cpu_ms_per_escalation_until_settled"] = until_settled.per_call_ms(n)
    workflow_ids = ids if kind != "oppflow" else [workflow_id(i) for i in ids]
    figures["task_timed_out_in_sample"] = await _timed_out_tasks(stack, workflow_ids)
    figures["cpu_ms_per_escalation"] = spent.per_call_ms(n)
    figures["idle_before_due_s"] = round(idle_before_due_s, 1)
    figures["stuck_after_s"] = stuck
    figures["created_after_due"] = created_s > stuck
    return figures


async def _timed_out_tasks(stack: Stack, workflow_ids: list[str], sample: int = 100) -> dict[str, int]:
    """How many of a sample of deals had a workflow task time out, most often one that
    waited past the sticky queue's timeout and went to the normal queue: the worker then
    replays the deal from its whole history."""
    chosen = random.Random(7).sample(workflow_ids, min(sample, len(workflow_ids)))
    shapes = [await _history_shape(stack, workflow_id) for workflow_id in chosen]
    timed_out = [shape["by_type"].get("WORKFLOW_TASK_TIMED_OUT", 0) for shape in shapes]
    return {
        "deals": len(chosen),
        "with_a_timed_out_task": sum(1 for t in timed_out if t),
        "tasks": sum(timed_out),
    }


async def _count_rows(stack: Stack, sql: str, ids: list[str], n: int) -> bool:
    return len(await stack.pool.fetch(sql, ids)) >= n


# A deal has settled its escalation once the workflow task that follows the row's write has
# completed: EscalationLevel 1 is indexed. The baseline writes its row in an activity and
# indexes in the next task, so its rows appear before its storm is handled; oppflow writes
# and indexes in one task. (Earlier rounds' deals are counted before the storm.)
SETTLED_QUERIES = {
    "bare indexed": f"WorkflowType = '{BARE_WORKFLOW}' AND EscalationLevel = 1",
    "oppflow": "WorkflowType = 'OpportunityWorkflow' AND EscalationLevel = 1",
}


async def _count_settled(stack: Stack, query: str) -> int:
    return (await stack.client.count_workflows(query)).count


async def _settled_at_least(stack: Stack, query: str, n: int) -> bool:
    return await _count_settled(stack, query) >= n


STORM_BASELINES = (
    ("timer + activity", "bare"),  # the target's reference
    # What indexing each escalation (EscalationLevel, as oppflow does) costs the engine.
    ("timer + activity + SA upsert", "bare indexed"),
)


async def escalation_storm(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in (*STORM_BASELINES, ("oppflow", ""))}
    for _ in range(sizes.storm_rounds):
        for name, kind in STORM_BASELINES:
            rounds[name].append(await _storm_round(stack, sizes, kind))
        rounds["oppflow"].append(await _storm_round(stack, sizes, "oppflow"))
    figures = {name: _best_of(runs) for name, runs in rounds.items()}
    ours = figures["oppflow"]["drain_per_s"]
    drain = _ratio(ours, figures["timer + activity"]["drain_per_s"])
    indexed = figures[STORM_BASELINES[1][0]]
    settled = _ratio(figures["oppflow"]["settled_per_s"], indexed["settled_per_s"])
    return {
        "sizes": {"deals": sizes.storm, "rounds": sizes.storm_rounds},
        "figures": figures,
        "rounds": rounds,
        "ratios": {
            "drain_rate_vs_baseline": drain,
            "drain_rate_vs_indexed_baseline": _ratio(ours, indexed["drain_per_s"]),
            "settled_rate_vs_indexed_baseline": settled,
        },
        "targets": {
            "drain rate >= 0.8x baseline": drain >= 0.8,
            "the same, until every escalation is settled (indexed baseline)": settled >= 0.8,
        },
    }


def _best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median round by drain rate (the only round when there is one)."""
    ordered = sorted(runs, key=lambda r: r["drain_per_s"])
    return ordered[len(ordered) // 2]


# -- 4. many open deals --------------------------------------------------------------------------


TARGET_OPEN_DEALS = 10_000


async def _open_deals_variant(stack: Stack, sizes: Sizes, kind: str) -> dict[str, Any]:
    k, c = sizes.open_deals, sizes.callers
    queue = f"bench-open-{kind}-{_tag()}"
    worker_kind = "baseline" if kind == "bare" else "oppflow"
    max_cached = k + 500

    worker = await stack.start_worker(worker_kind, queue, max_cached=max_cached, experiment=sizes.experiment)
    idle_rss = worker.rss_bytes()
    tag = _tag()
    if kind == "bare":
        wf_ids = [f"bare-open-{tag}-{i}" for i in range(k)]

        async def start(deal_id: str) -> None:
            await stack.client.start_workflow(
                BARE_WORKFLOW, BareInput(deal_id=deal_id, stage="Prospecting"), id=deal_id, task_queue=queue
            )

        created = await timed_calls(wf_ids, c, start)
    else:
        client = OpportunityClient(stack.client, stack.pool, queue)
        opp_ids = [f"open-{tag}-{i}" for i in range(k)]
        created = await _create_opps(client, opp_ids, c)
        wf_ids = [f"opportunity-{o}" for o in opp_ids]
    first_pass = await _warm(stack, wf_ids, c)
    loaded_rss = worker.rss_bytes()

    await stack.stop_worker(worker)
    began = time.perf_counter()
    worker = await stack.start_worker(worker_kind, queue, max_cached=max_cached, experiment=sizes.experiment)
    started_s = time.perf_counter() - began
    cold = await _warm(stack, random.sample(wf_ids, len(wf_ids)), c)
    cold_rss = worker.rss_bytes()
    warm = await _warm(stack, random.sample(wf_ids, len(wf_ids)), c)
    warm_rss = worker.rss_bytes()
    # The latency of one read on its own, as a deal page asks for it, without C callers queued.
    one_caller = await _warm(stack, random.sample(wf_ids, min(len(wf_ids), 500)), 1)
    await stack.stop_worker(worker)
    per_deal = (warm_rss - idle_rss) / k
    production = await _open_deals_production_cache(
        stack, worker_kind, queue, wf_ids, idle_rss, per_deal, sizes
    )
    return {
        "deals": k,
        "max_cached_workflows": max_cached,
        "created": created.summary(),
        "query_after_create": first_pass.summary(),
        "rss_idle_mib": round(idle_rss / MIB, 1),
        "rss_loaded_mib": round(loaded_rss / MIB, 1),
        "rss_after_restart_all_served_mib": round(cold_rss / MIB, 1),
        "rss_warm_mib": round(warm_rss / MIB, 1),
        "kib_per_deal": round((warm_rss - idle_rss) / k / 1024, 1),
        "restart_worker_ready_s": round(started_s, 2),
        "restart_serve_all_s": round(cold.seconds, 2),
        "cold_get_state": cold.summary(),
        "warm_get_state": warm.summary(),
        "warm_get_state_one_caller": one_caller.summary(),
        "rss_at_10000_deals_mib": round(
            warm_rss / MIB if k >= TARGET_OPEN_DEALS else (idle_rss + per_deal * TARGET_OPEN_DEALS) / MIB,
            1,
        ),
        "production_cache": production,
    }


async def _open_deals_production_cache(
    stack: Stack,
    worker_kind: str,
    queue: str,
    wf_ids: list[str],
    idle_rss: int,
    per_deal: float,
    sizes: Sizes,
) -> dict[str, Any]:
    """The same deals served by a worker with the production cache size (``Settings``):
    it keeps the most recently used deals in memory and replays any other on its next
    read. Measured when there are more deals than the cache holds; otherwise every deal
    fits and the figures above are the production ones."""
    cache = Settings().max_cached_workflows
    at_target = idle_rss + per_deal * min(TARGET_OPEN_DEALS, cache)
    if len(wf_ids) <= cache:
        return {
            "max_cached_workflows": cache,
            "measured": False,
            "rss_at_10000_deals_mib": round(at_target / MIB, 1),
        }
    worker = await stack.start_worker(worker_kind, queue, experiment=sizes.experiment)
    try:
        await _warm(stack, random.sample(wf_ids, len(wf_ids)), sizes.callers)
        warm = await _warm(stack, random.sample(wf_ids, len(wf_ids)), sizes.callers)
        rss = worker.rss_bytes()
        one_caller = await _warm(stack, random.sample(wf_ids, min(len(wf_ids), 500)), 1)
    finally:
        await stack.stop_worker(worker)
    return {
        "max_cached_workflows": cache,
        "measured": True,
        "rss_mib": round(rss / MIB, 1),
        "rss_at_10000_deals_mib": round((rss if len(wf_ids) >= TARGET_OPEN_DEALS else at_target) / MIB, 1),
        "warm_get_state": warm.summary(),
        "warm_get_state_one_caller": one_caller.summary(),
    }


async def open_deals(stack: Stack, sizes: Sizes) -> dict[str, Any]:
    bare = await _open_deals_variant(stack, sizes, "bare")
    ours = await _open_deals_variant(stack, sizes, "oppflow")
    rss_mib = ours["rss_at_10000_deals_mib"]  # measured, or extrapolated from fewer deals
    production = ours["production_cache"]
    production_rss = production["rss_at_10000_deals_mib"]
    warm_p99 = ours["warm_get_state_one_caller"]["p99_ms"]
    production_p99 = production["warm_get_state_one_caller"]["p99_ms"] if production["measured"] else warm_p99
    return {
        "sizes": {"deals": sizes.open_deals, "callers": sizes.callers},
        "figures": {"bare entity": bare, "oppflow": ours},
        "ratios": {
            "rss_vs_bare": _ratio(ours["rss_warm_mib"], bare["rss_warm_mib"]),
            "warm_p99_vs_bare": _ratio(ours["warm_get_state"]["p99_ms"], bare["warm_get_state"]["p99_ms"]),
            "warm_one_caller_p99_vs_bare": _ratio(warm_p99, bare["warm_get_state_one_caller"]["p99_ms"]),
            "restart_serve_all_vs_bare": _ratio(ours["restart_serve_all_s"], bare["restart_serve_all_s"]),
        },
        "targets": {
            "worker RSS <= 1 GiB at 10,000 deals (production cache)": production_rss <= 1024,
            "warm get_state p99 < 100 ms (one caller, production cache)": production_p99 < 100,
            "worker RSS <= 1 GiB at 10,000 deals (every deal cached)": rss_mib <= 1024,
            "warm get_state p99 < 100 ms (one caller, every deal cached)": warm_p99 < 100,
        },
    }


async def start_shared_workers(stack: Stack, sizes: Sizes) -> list[WorkerProcess]:
    """One oppflow and one bare worker, each in its own process, for scenarios 1-3."""
    return [
        await stack.start_worker(
            "oppflow",
            OPPFLOW_QUEUE,
            experiment=sizes.experiment,
            # BENCH_METRICS_PORT: the SDK's Prometheus metrics of this worker, for profiling
            metrics_port=int(os.environ.get("BENCH_METRICS_PORT", "0")),
        ),
        await stack.start_worker("baseline", BARE_QUEUE),
    ]


SCENARIOS = {
    "stage-changes": stage_changes,
    "creation": creation,
    "storm": escalation_storm,
    "open-deals": open_deals,
    "busy-deals": busy_deals,
}
