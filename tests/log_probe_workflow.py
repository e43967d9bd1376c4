"""A workflow that only logs, to show which ids its log lines carry (run by test_observability)."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import workflow


class Probe(BaseModel):
    request_id: str


@workflow.defn(name="LogContextProbe")
class LogContextProbe:
    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self) -> None:
        workflow.logger.info("probe started")
        await workflow.wait_condition(lambda: self.done)

    @workflow.update
    async def finish(self, probe: Probe) -> None:
        workflow.logger.info("probe finishing")
        self.done = True
