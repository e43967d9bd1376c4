"""The client facade for the creation scenario, with the time of each step of ``create``."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from sales.messages import CreateOpportunity
from sales.process import SalesProcess
from starter.client import Created, OpportunityClient


class StepTimes:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, step: str, began: float) -> None:
        self.seconds[step] += time.perf_counter() - began
        self.calls[step] += 1

    def mean_ms(self) -> dict[str, float]:
        return {step: round(self.seconds[step] / self.calls[step] * 1000, 2) for step in self.seconds}


class TimedClient(OpportunityClient):
    """``OpportunityClient`` unchanged, with the time of each step of ``create`` recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps = StepTimes()

    async def _process_and_managers(
        self, process_name: str | None, owner_id: str
    ) -> tuple[SalesProcess, list[str] | None]:
        began = time.perf_counter()
        try:
            return await super()._process_and_managers(process_name, owner_id)
        finally:
            self.steps.add("process version and owner chain (Postgres)", began)

    async def start(self, cmd: CreateOpportunity, process: SalesProcess, managers: list[str]) -> Created:
        began = time.perf_counter()
        try:
            return await super().start(cmd, process, managers)
        finally:
            self.steps.add("start_workflow (Temporal)", began)
