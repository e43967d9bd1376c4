"""Sales processes published for the benchmark: stages without entry or exit requirements
(so every stage change is accepted) and a short stuck clock for the escalation storm."""

from __future__ import annotations

from typing import Any

from sales.process import SalesProcess

STAGES_PROCESS = "bench-stages"
STORM_PROCESS = "bench-storm"
STORM_STAGE = "Stalled"

_CLOSED: list[dict[str, Any]] = [
    {"name": "Closed Won", "probability": 100, "forecast_category": "Closed", "closed": True, "won": True},
    {"name": "Closed Lost", "probability": 0, "forecast_category": "Omitted", "closed": True},
]


def stage_name(step: int) -> str:
    return f"Step {step + 1}"


def stages_process(moves: int) -> SalesProcess:
    """``moves + 1`` open stages, each with a 14-day clock like the default process."""
    stages = [
        {
            "name": stage_name(i),
            "probability": min(10 + 5 * i, 90),
            "forecast_category": "Pipeline",
            "stuck_after": "14d",
            "escalation": [{"after": "0s", "notify": "owner"}, {"after": "3d", "notify": "manager"}],
        }
        for i in range(moves + 1)
    ]
    return SalesProcess.model_validate({"name": STAGES_PROCESS, "stages": [*stages, *_CLOSED]})


def storm_process(stuck_seconds: int) -> SalesProcess:
    """One open stage that is stuck after ``stuck_seconds`` and escalates to the owner at once."""
    stalled = {
        "name": STORM_STAGE,
        "probability": 10,
        "forecast_category": "Pipeline",
        "stuck_after": f"{stuck_seconds}s",
        "escalation": [{"after": "0s", "notify": "owner"}],
    }
    return SalesProcess.model_validate({"name": STORM_PROCESS, "stages": [stalled, *_CLOSED]})
