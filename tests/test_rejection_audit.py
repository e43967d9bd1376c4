"""The audit of refused commands survives what callers send: text Postgres cannot hold is
stored with a replacement character, and the refusals queued behind it are written."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg

from activities import rejection_log
from sales.records import RejectedCommand
from tests.helpers import assert_eq_eventually
from worker import write_rejections


def refusal(opp: str, request_id: str, message: str) -> RejectedCommand:
    return RejectedCommand(
        opportunity_id=opp,
        request_id=request_id,
        command="change_stage",
        actor_id="u-1",
        actor_role="rep",
        rule="malformed",
        message=message,
        rejected_at=datetime.now(UTC),
        source="validator",
    )


async def test_a_refusal_with_nul_bytes_or_lone_surrogates_does_not_stop_the_audit(
    db_pool: asyncpg.Pool,
) -> None:
    opp = f"audit-{uuid.uuid4().hex[:8]}"
    rejection_log.push(refusal(opp, "nul\x00id", "stage: got 'a\x00b'"))
    rejection_log.push(refusal(opp, "surrogate", "name: got '\ud800'"))
    rejection_log.push(refusal(opp, "plain", "stage: unknown stage 'Negotiation'"))
    writer = asyncio.create_task(write_rejections(db_pool, interval=0.05))
    try:

        async def stored() -> dict[str, str]:
            rows = await db_pool.fetch(
                "SELECT request_id, message FROM rejected_commands WHERE opportunity_id = $1", opp
            )
            return {r["request_id"]: r["message"] for r in rows}

        await assert_eq_eventually(
            {
                "nul\ufffdid": "stage: got 'a\ufffdb'",
                "surrogate": "name: got '?'",
                "plain": "stage: unknown stage 'Negotiation'",
            },
            stored,
        )
        assert not writer.done(), "the audit writer stopped"
    finally:
        writer.cancel()
