"""Deals in a known state, for unit tests of the domain rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sales.messages import Actor
from sales.process import SalesProcess, default_process
from sales.state import OpportunityState

MONDAY = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

OWNER = Actor(id="rep-1", role="rep")
OTHER_REP = Actor(id="rep-2", role="rep")
MANAGER = Actor(id="mgr-1", role="manager")
OTHER_MANAGER = Actor(id="mgr-9", role="manager")
ADMIN = Actor(id="ops-1", role="admin")
AUTOMATION = Actor(id="automation", role="automation")


def deal(stage: str = "Prospecting", process: SalesProcess | None = None, **changes: Any) -> OpportunityState:
    process = process or default_process()
    definition = process.stage(stage)
    state = OpportunityState(
        opportunity_id="o-1",
        name="Acme rollout",
        account="Acme",
        owner_id="rep-1",
        owner_managers=["mgr-1", "vp-1"],
        stage=stage,
        stage_entered_at=MONDAY,
        probability=definition.probability,
        forecast_category=definition.forecast_category,
        is_closed=definition.closed,
        is_won=definition.won,
        process=process,
        created_at=MONDAY,
        updated_at=MONDAY,
    )
    return state.model_copy(update=changes)
