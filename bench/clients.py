"""Client facades for the creation scenario: the real one with each step timed, and a
lean variant measuring proposed changes (cached process and owner chain, no describe)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextvars import ContextVar
from typing import Any

from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from sales.messages import CreateOpportunity
from sales.process import SalesProcess
from sales.state import OpportunityInput
from starter.client import Created, OpportunityClient, workflow_id
from workflows import search_attributes


class StepTimes:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, step: str, began: float) -> None:
        self.seconds[step] += time.perf_counter() - began
        self.calls[step] += 1

    def mean_ms(self) -> dict[str, float]:
        return {step: round(self.seconds[step] / self.calls[step] * 1000, 2) for step in self.seconds}


# The describe time of the create running in this task (creates run concurrently).
_described: ContextVar[float] = ContextVar("described", default=0.0)


class TimedClient(OpportunityClient):
    """``OpportunityClient`` unchanged, with the time of each step of ``create`` recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps = StepTimes()

    async def process_for(self, name: str | None) -> SalesProcess:
        began = time.perf_counter()
        try:
            return await super().process_for(name)
        finally:
            self.steps.add("process lookup (Postgres + parse)", began)

    async def _managers(self, user_id: str) -> list[str] | None:
        began = time.perf_counter()
        try:
            return await super()._managers(user_id)
        finally:
            self.steps.add("owner chain (Postgres)", began)

    async def _exists(self, wf_id: str) -> bool:
        began = time.perf_counter()
        try:
            return await super()._exists(wf_id)
        finally:
            _described.set(time.perf_counter() - began)
            self.steps.add("describe (Temporal)", began)

    async def start(self, cmd: CreateOpportunity, process: SalesProcess, managers: list[str]) -> Created:
        began = time.perf_counter()
        _described.set(0.0)
        try:
            return await super().start(cmd, process, managers)
        finally:
            # start() includes the describe; book the rest as the start itself
            self.steps.seconds["start_workflow (Temporal)"] += time.perf_counter() - began - _described.get()
            self.steps.calls["start_workflow (Temporal)"] += 1


class LeanClient(OpportunityClient):
    """Proposed creation path: processes (immutable once published) and owner chains cached
    briefly in the client, and one start call that fails on a duplicate id instead of a
    describe before it."""

    CACHE_SECONDS = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._processes: dict[str | None, tuple[float, SalesProcess]] = {}
        self._chains: dict[str, tuple[float, list[str] | None]] = {}

    async def process_for(self, name: str | None) -> SalesProcess:
        hit = self._processes.get(name)
        if hit and time.monotonic() - hit[0] < self.CACHE_SECONDS:
            return hit[1]
        process = await super().process_for(name)
        self._processes[name] = (time.monotonic(), process)
        return process

    async def _managers(self, user_id: str) -> list[str] | None:
        hit = self._chains.get(user_id)
        if hit and time.monotonic() - hit[0] < self.CACHE_SECONDS:
            return hit[1]
        managers = await super()._managers(user_id)
        self._chains[user_id] = (time.monotonic(), managers)
        return managers

    async def start(self, cmd: CreateOpportunity, process: SalesProcess, managers: list[str]) -> Created:
        wf_id = workflow_id(cmd.opportunity_id)
        stage = process.stage(cmd.stage) if cmd.stage else process.first_stage
        try:
            await self.temporal.start_workflow(
                "OpportunityWorkflow",
                OpportunityInput(create=cmd, process=process, owner_managers=managers),
                id=wf_id,
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=search_attributes.initial(cmd, stage.name, stage.forecast_category),
                static_summary=f"{cmd.name} — {cmd.account}",
                static_details=f"Opportunity {cmd.opportunity_id}, process {process.name} v{process.version}",
            )
        except WorkflowAlreadyStartedError:
            return Created(cmd.opportunity_id, wf_id, False)
        return Created(cmd.opportunity_id, wf_id, True)
