"""Insurance against lost timers: deals whose next escalation is due by the database but
has not fired. ``repair`` re-arms them with the ``check_clock`` signal, which makes the
workflow recompute its deadline and fire what is due (once: levels are keyed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from temporalio.client import Client
from temporalio.service import RPCError

OVERDUE = """
SELECT o.id, o.stage, o.stage_entry_seq, o.escalation_level, o.next_escalation_at
FROM opportunities o
WHERE NOT o.is_closed AND NOT o.clock_paused
  AND o.next_escalation_at < now() - $1::interval
  AND NOT EXISTS (
      SELECT 1 FROM escalations e
      WHERE e.opportunity_id = o.id AND e.subject = 'stage'
        AND e.stage_entry_seq = o.stage_entry_seq AND e.level > o.escalation_level)
ORDER BY o.next_escalation_at
"""


@dataclass(frozen=True)
class OverdueEscalation:
    opportunity_id: str
    stage: str
    stage_entry_seq: int
    level: int
    due_at: datetime

    def describe(self) -> str:
        return (
            f"{self.opportunity_id}: level {self.level} in {self.stage} was due "
            f"{self.due_at:%Y-%m-%d %H:%M:%S} UTC and has not fired"
        )


async def find_overdue(
    pool: asyncpg.Pool, grace: timedelta = timedelta(minutes=1)
) -> list[OverdueEscalation]:
    rows = await pool.fetch(OVERDUE, grace)
    return [
        OverdueEscalation(
            r["id"], r["stage"], r["stage_entry_seq"], r["escalation_level"] + 1, r["next_escalation_at"]
        )
        for r in rows
    ]


async def repair(client: Client, overdue: list[OverdueEscalation]) -> list[str]:
    """Nudge each workflow; answers the problems it could not fix."""
    problems = []
    for item in overdue:
        try:
            await client.get_workflow_handle(f"opportunity-{item.opportunity_id}").signal("check_clock")
        except RPCError as exc:
            problems.append(f"{item.opportunity_id}: {exc.message}")
    return problems
