"""The bare baseline: an entity workflow doing the same Temporal work as an opportunity,
without oppflow's rules, rows or search attributes.

- ``set_stage`` is an update that only mutates a dict (the stage-change baseline);
  ``set_stage_saved`` also awaits one local activity doing a Postgres INSERT;
  ``set_stage_saved_indexed`` also upserts the stage search attribute: the least a stage
  change that is persisted and searchable costs the engine.
- Started with ``due_at``, the workflow sleeps until then and runs one activity that
  inserts a row (the escalation-storm baseline).
- ``get_state`` answers the dict (the open-deals baseline).
- ``record_activity`` signals are saved by one local activity per workflow task and
  counted, and a run continues as new when Temporal suggests it (the busy-deals baseline).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    # Re-imported inside the workflow sandbox, asyncpg's C state breaks (segfault).
    import asyncpg

    from starter.settings import Settings
    from worker import SANDBOX
    from workflows.search_attributes import ESCALATION_LEVEL, STAGE

BARE_WORKFLOW = "BareDeal"

CREATE_TABLES = """
CREATE TABLE IF NOT EXISTS bench_bare_rows (
    deal_id     text NOT NULL,
    request_id  text NOT NULL,
    stage       text NOT NULL,
    PRIMARY KEY (deal_id, request_id)
);
CREATE TABLE IF NOT EXISTS bench_bare_activities (
    deal_id     text NOT NULL,
    request_id  text NOT NULL,
    PRIMARY KEY (deal_id, request_id)
);
CREATE TABLE IF NOT EXISTS bench_bare_escalations (
    deal_id      text PRIMARY KEY,
    due_at       timestamptz NOT NULL,
    fired_at     timestamptz NOT NULL,
    inserted_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


class BareInput(BaseModel):
    deal_id: str
    stage: str
    due_at: datetime | None = None
    # The storm's indexed baseline: the escalation also sets EscalationLevel, as oppflow does.
    index_escalation: bool = False
    activity_count: int = 0  # carried by continue-as-new


class BareActivities(BaseModel):
    deal_id: str
    request_ids: list[str]


class BareRow(BaseModel):
    deal_id: str
    request_id: str
    stage: str


class BareEscalation(BaseModel):
    deal_id: str
    due_at: datetime
    fired_at: datetime


class BareStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @activity.defn(name="bare_insert_row")
    async def insert_row(self, row: BareRow) -> None:
        await self.pool.execute(
            "INSERT INTO bench_bare_rows (deal_id, request_id, stage) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            row.deal_id,
            row.request_id,
            row.stage,
        )

    @activity.defn(name="bare_insert_activities")
    async def insert_activities(self, rows: BareActivities) -> None:
        await self.pool.execute(
            "INSERT INTO bench_bare_activities (deal_id, request_id) "
            "SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            rows.deal_id,
            rows.request_ids,
        )

    @activity.defn(name="bare_record_escalation")
    async def record_escalation(self, row: BareEscalation) -> None:
        await self.pool.execute(
            "INSERT INTO bench_bare_escalations (deal_id, due_at, fired_at) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            row.deal_id,
            row.due_at,
            row.fired_at,
        )


@workflow.defn(name=BARE_WORKFLOW)
class BareDeal:
    @workflow.init
    def __init__(self, input: BareInput) -> None:
        self.state: dict[str, Any] = {
            "deal_id": input.deal_id,
            "stage": input.stage,
            "activity_count": input.activity_count,
        }
        self.closed = False
        self.unsaved: list[str] = []

    @workflow.run
    async def run(self, input: BareInput) -> dict[str, Any]:
        if input.due_at is not None:
            await workflow.sleep(max(input.due_at - workflow.now(), timedelta(0)))
            await workflow.execute_activity_method(
                BareStore.record_escalation,
                BareEscalation(deal_id=input.deal_id, due_at=input.due_at, fired_at=workflow.now()),
                start_to_close_timeout=timedelta(seconds=15),
            )
            if input.index_escalation:
                workflow.upsert_search_attributes([ESCALATION_LEVEL.value_set(1)])
        while True:
            await workflow.wait_condition(
                lambda: self.closed or bool(self.unsaved) or workflow.info().is_continue_as_new_suggested()
            )
            while self.unsaved:
                batch, self.unsaved = self.unsaved, []
                await workflow.execute_local_activity_method(
                    BareStore.insert_activities,
                    BareActivities(deal_id=input.deal_id, request_ids=batch),
                    start_to_close_timeout=timedelta(seconds=15),
                )
                self.state["activity_count"] += len(batch)
            if self.closed:
                return self.state
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self.unsaved:
                    workflow.continue_as_new(
                        BareInput(
                            deal_id=input.deal_id,
                            stage=self.state["stage"],
                            activity_count=self.state["activity_count"],
                        )
                    )

    @workflow.update(name="set_stage")
    async def set_stage(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.state.update(payload)
        return {"stage": self.state["stage"]}

    @workflow.update(name="set_stage_saved")
    async def set_stage_saved(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._save(payload)

    async def _save(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.state.update(payload)
        await workflow.execute_local_activity_method(
            BareStore.insert_row,
            BareRow(deal_id=self.state["deal_id"], request_id=payload["request_id"], stage=payload["stage"]),
            start_to_close_timeout=timedelta(seconds=15),
        )
        return {"stage": self.state["stage"]}

    @workflow.update(name="set_stage_saved_indexed")
    async def set_stage_saved_indexed(self, payload: dict[str, Any]) -> dict[str, Any]:
        result = await self._save(payload)
        workflow.upsert_search_attributes([STAGE.value_set(self.state["stage"])])
        return result

    @workflow.signal(name="record_activity")
    def record_activity(self, payload: dict[str, Any]) -> None:
        self.unsaved.append(str(payload["request_id"]))

    @workflow.signal(name="close")
    def close(self) -> None:
        self.closed = True

    @workflow.query(name="get_state")
    def get_state(self) -> dict[str, Any]:
        return dict(self.state)


def build_baseline_worker(client: Client, pool: asyncpg.Pool, task_queue: str, **options: Any) -> Worker:
    """Same limits and sandbox as the oppflow worker (``worker.build_worker``)."""
    store = BareStore(pool)
    defaults = Settings()
    options.setdefault("max_concurrent_activities", defaults.db_pool_max * 2)
    options.setdefault("max_concurrent_local_activities", defaults.db_pool_max * 2)
    options.setdefault("max_concurrent_workflow_tasks", defaults.max_concurrent_workflow_tasks)
    options.setdefault("max_cached_workflows", defaults.max_cached_workflows)
    options.setdefault(
        "sticky_queue_schedule_to_start_timeout", timedelta(seconds=defaults.sticky_queue_timeout_seconds)
    )
    options.setdefault("workflow_runner", SANDBOX)
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=10))
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[BareDeal],
        activities=[store.insert_row, store.insert_activities, store.record_escalation],
        **options,
    )
