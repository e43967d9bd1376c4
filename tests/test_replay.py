"""The replay gate: every recorded history under tests/histories/ must replay on the
current workflow code. Regenerate the corpus with scripts/record_histories.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.replay_variants import PatchedOpportunityWorkflow, ReorderedOpportunityWorkflow
from worker import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


async def histories(paths: list[Path]) -> AsyncIterator[WorkflowHistory]:
    for path in paths:
        yield load(path)


def workflow_type(path: Path) -> str:
    first = json.loads(path.read_text())["events"][0]
    return str(first["workflowExecutionStartedEventAttributes"]["workflowType"]["name"])


OPPORTUNITY_HISTORIES = [p for p in HISTORIES if workflow_type(p) == "OpportunityWorkflow"]


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_the_corpus_covers_the_main_scenarios() -> None:
    names = {path.stem.split("-")[0] for path in HISTORIES}
    assert {"rep_lifecycle", "escalation_ladder", "handoff_and_automation", "continue_as_new"} <= names


async def test_every_recorded_history_replays_on_current_code() -> None:
    replayer = Replayer(workflows=list(WORKFLOWS), data_converter=pydantic_data_converter)
    async with replayer.workflow_replay_iterator(histories(HISTORIES)) as results:
        failures = [f"{r.history.workflow_id}: {r.replay_failure}" async for r in results if r.replay_failure]
    assert failures == []


async def test_an_unguarded_reordering_is_caught() -> None:
    replayer = Replayer(workflows=[ReorderedOpportunityWorkflow], data_converter=pydantic_data_converter)
    async with replayer.workflow_replay_iterator(histories(OPPORTUNITY_HISTORIES)) as results:
        failures = [r.replay_failure async for r in results if r.replay_failure is not None]
    assert failures, "a reordered workflow replayed every history: the gate would not catch it"
    assert any("nondetermin" in str(f).lower() for f in failures)


async def test_the_same_change_behind_a_patch_replays() -> None:
    replayer = Replayer(workflows=[PatchedOpportunityWorkflow], data_converter=pydantic_data_converter)
    async with replayer.workflow_replay_iterator(histories(OPPORTUNITY_HISTORIES)) as results:
        failures = [f"{r.history.workflow_id}: {r.replay_failure}" async for r in results if r.replay_failure]
    assert failures == []
