"""Postgres writes of the opportunity workflow, each idempotent on a business key.

Activities run at least once: a retry after a crash between COMMIT and the reply must
change nothing. History rows use ``INSERT ... ON CONFLICT DO NOTHING`` on
``(opportunity_id, request_id)``; the opportunity snapshot only moves forward
(``state_version``); escalation rows are unique per (deal, subject, stage entry, level).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import asyncpg
from pydantic import TypeAdapter
from temporalio import activity

from sales.records import (
    Change,
    EscalatedBatch,
    EscalationRecorded,
    OrgChain,
    OrgChainRequest,
    PersistBatch,
    RecordEscalation,
    RejectedCommand,
)
from sales.state import Handoff
from starter import metrics
from starter.action_links import links_for
from starter.org_chart import CHAIN_OF

ACQUIRE_TIMEOUT = 5.0

# A batch in one statement (one round trip, atomic on its own): the deal's row ($1-$24),
# then its history rows from two JSON arrays, the changes ($25) and the hand-offs ($26),
# each table taking its rows in order. Every write is idempotent on its business key; the
# deal's row only moves forward (state_version).
_BATCH_CTES = """
WITH opportunity AS (
    INSERT INTO opportunities (
        id, name, account, owner_id, stage, amount, close_date, probability, forecast_category,
        is_closed, is_won, stage_entered_at, stage_entry_seq, escalation_level, clock_paused,
        next_escalation_at, process_name, process_version, fields, team, last_activity_at,
        created_at, updated_at, state_version)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
            $21, $22, $23, $24)
    ON CONFLICT (id) DO UPDATE SET
        name = EXCLUDED.name, account = EXCLUDED.account, owner_id = EXCLUDED.owner_id,
        stage = EXCLUDED.stage, amount = EXCLUDED.amount, close_date = EXCLUDED.close_date,
        probability = EXCLUDED.probability, forecast_category = EXCLUDED.forecast_category,
        is_closed = EXCLUDED.is_closed, is_won = EXCLUDED.is_won,
        stage_entered_at = EXCLUDED.stage_entered_at, stage_entry_seq = EXCLUDED.stage_entry_seq,
        escalation_level = EXCLUDED.escalation_level, clock_paused = EXCLUDED.clock_paused,
        next_escalation_at = EXCLUDED.next_escalation_at, process_name = EXCLUDED.process_name,
        process_version = EXCLUDED.process_version, fields = EXCLUDED.fields, team = EXCLUDED.team,
        last_activity_at = EXCLUDED.last_activity_at, updated_at = EXCLUDED.updated_at,
        state_version = EXCLUDED.state_version
    WHERE opportunities.state_version < EXCLUDED.state_version
), changes AS (
    SELECT c, n FROM jsonb_array_elements($25::text::jsonb) WITH ORDINALITY AS x(c, n)
), events AS (
    INSERT INTO opportunity_events (opportunity_id, request_id, kind, actor_id, detail, happened_at)
    SELECT $1, c->>'request_id', c->>'kind', c->>'actor_id', c->'detail', (c->>'at')::timestamptz
    FROM changes ORDER BY n
    ON CONFLICT (opportunity_id, request_id) DO NOTHING
), stages AS (
    INSERT INTO stage_history (opportunity_id, request_id, from_stage, to_stage, actor_id, reason,
        changed_at, stage_entry_seq, amount, probability, forecast_category, close_date)
    SELECT $1, c->>'request_id', s->>'from_stage', s->>'to_stage', c->>'actor_id', s->>'reason',
        (c->>'at')::timestamptz, (s->>'stage_entry_seq')::integer, (s->>'amount')::numeric,
        (s->>'probability')::integer, s->>'forecast_category', (s->>'close_date')::date
    FROM changes CROSS JOIN LATERAL (SELECT c->'stage_change' AS s) AS stage_change
    WHERE jsonb_typeof(s) = 'object' ORDER BY n
    ON CONFLICT (opportunity_id, request_id) DO NOTHING
), fields AS (
    INSERT INTO field_history (opportunity_id, request_id, field, old_value, new_value, actor_id, changed_at)
    SELECT $1, c->>'request_id', f->>'field', NULLIF(f->'old_value', 'null'), NULLIF(f->'new_value', 'null'),
        c->>'actor_id', (c->>'at')::timestamptz
    FROM changes CROSS JOIN LATERAL jsonb_array_elements(c->'field_changes') WITH ORDINALITY AS y(f, m)
    ORDER BY n, m
    ON CONFLICT (opportunity_id, request_id, field) DO NOTHING
), logged AS (
    INSERT INTO activities (opportunity_id, request_id, kind, subject, outcome, occurred_at, actor_id,
        data, recorded_at)
    SELECT $1, c->>'request_id', a->>'kind', a->>'subject', a->>'outcome', (a->>'occurred_at')::timestamptz,
        c->>'actor_id', a->'data', (c->>'at')::timestamptz
    FROM changes CROSS JOIN LATERAL (SELECT c->'activity' AS a) AS logged_activity
    WHERE jsonb_typeof(a) = 'object' ORDER BY n
    ON CONFLICT (opportunity_id, request_id) DO NOTHING
)
"""
_SAVE_HANDOFFS = """
INSERT INTO handoffs (id, opportunity_id, kind, title, team_role, assignee_id, stage, status,
    opened_at, due_at, finished_at, note)
SELECT h->>'handoff_id', $1, h->>'kind', h->>'title', h->>'team_role', h->>'assignee_id', h->>'stage',
    h->>'status', (h->>'opened_at')::timestamptz, (h->>'due_at')::timestamptz,
    (h->>'finished_at')::timestamptz, h->>'note'
FROM jsonb_array_elements($26::text::jsonb) AS z(h)
ON CONFLICT (id) DO UPDATE SET assignee_id = EXCLUDED.assignee_id, status = EXCLUDED.status,
    due_at = COALESCE(EXCLUDED.due_at, handoffs.due_at), finished_at = EXCLUDED.finished_at,
    note = EXCLUDED.note
"""
SAVE_BATCH = _BATCH_CTES + _SAVE_HANDOFFS
# The same, and a fired level's escalation rows ($27: the superseded levels', then the fired
# one's), in one statement. The final SELECT sees the table as it was before the statement:
# on a retry it finds the recipient the first attempt recorded.
SAVE_BATCH_AND_ESCALATIONS = (
    _BATCH_CTES
    + ", saved_handoffs AS ("
    + _SAVE_HANDOFFS
    + """), fired AS (
    INSERT INTO escalations (opportunity_id, subject, stage, stage_entry_seq, level, notify,
        recipient_id, due_at, fired_at, status, webhook_id)
    SELECT $1, e->>'subject', e->>'stage', (e->>'stage_entry_seq')::integer, (e->>'level')::integer,
        e->>'notify', e->>'recipient_id', (e->>'due_at')::timestamptz, (e->>'fired_at')::timestamptz,
        e->>'status', e->>'webhook_id'
    FROM jsonb_array_elements($27::text::jsonb) WITH ORDINALITY AS w(e, n) ORDER BY n
    ON CONFLICT (opportunity_id, subject, stage_entry_seq, level) DO NOTHING
    RETURNING level
)
SELECT ARRAY(SELECT level FROM fired) AS inserted_levels,
    (SELECT recipient_id FROM escalations WHERE opportunity_id = $1 AND subject = $28
        AND stage_entry_seq = $29 AND level = $30) AS recorded_recipient
"""
)


def _move_escalations(first: int) -> str:
    """The UPDATE that moves one stage entry's escalations of deal $1 to a new status; its
    other parameters (entry, statuses replaced, status, note, at) are numbered from ``first``."""
    entry, replaced, status, note, at = (f"${first + i}" for i in range(5))
    return f"""UPDATE escalations SET status = {status}, note = COALESCE({note}, note), updated_at = {at}
WHERE opportunity_id = $1 AND subject = 'stage' AND stage_entry_seq = {entry}
  AND status = ANY({replaced}::text[])"""


UPDATE_ESCALATIONS = _move_escalations(2)
# A batch that moves one stage entry's escalations (a stage change resolves them) in one
# statement too. Two moves of the same rows cannot share a statement, so a batch with more
# takes a transaction.
SAVE_BATCH_AND_STATUS = (
    _BATCH_CTES + ", escalation_status AS (" + _move_escalations(27) + ")" + _SAVE_HANDOFFS
)

INSERT_ESCALATION = """
INSERT INTO escalations (opportunity_id, subject, stage, stage_entry_seq, level, notify,
    recipient_id, due_at, fired_at, status, webhook_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (opportunity_id, subject, stage_entry_seq, level) DO NOTHING
RETURNING id
"""

MANAGEMENT_CHAIN = CHAIN_OF + "SELECT id FROM chain ORDER BY depth"

# Resolution of the ladder's ``notify`` to a person, at the moment the level fires.
SALES_OPS = "SELECT id FROM users WHERE 'admin' = ANY(roles) ORDER BY id LIMIT 1"
MANAGER_OF = "SELECT manager_id FROM users WHERE id = $1"

CHANGES_JSON = TypeAdapter(list[Change])
HANDOFFS_JSON = TypeAdapter(list[Handoff])
ESCALATION_ROWS_JSON = TypeAdapter(list[dict[str, Any]])

ESCALATION_STATUSES_REPLACED = {
    "resolved": ["open", "snoozed", "acknowledged"],
    "acknowledged": ["open", "snoozed"],
    "snoozed": ["open"],
}


def webhook_id_for(opportunity_id: str, subject: str, stage_entry_seq: int, level: int) -> str:
    key = f"{opportunity_id}|{subject}|{stage_entry_seq}|{level}"
    return "msg_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _batch_arguments(batch: PersistBatch) -> list[Any]:
    """SAVE_BATCH's parameters $1-$26."""
    row = batch.opportunity
    return [
        row.id,
        row.name,
        row.account,
        row.owner_id,
        row.stage,
        row.amount,
        row.close_date,
        row.probability,
        row.forecast_category,
        row.is_closed,
        row.is_won,
        row.stage_entered_at,
        row.stage_entry_seq,
        row.escalation_level,
        row.clock_paused,
        row.next_escalation_at,
        row.process_name,
        row.process_version,
        row.fields,
        row.team,
        row.last_activity_at,
        row.created_at,
        row.updated_at,
        row.state_version,
        CHANGES_JSON.dump_json(batch.changes).decode(),
        HANDOFFS_JSON.dump_json(batch.handoffs).decode(),
    ]


def _status_arguments(opportunity_id: str, change: Change) -> list[Any]:
    """UPDATE_ESCALATIONS' parameters $1-$6 for a change that moves escalation statuses."""
    es = change.escalation_status
    assert es is not None
    return [
        opportunity_id,
        es.stage_entry_seq,
        ESCALATION_STATUSES_REPLACED.get(es.status, ["open"]),
        es.status,
        es.note,
        change.at,
    ]


def _escalation_row(
    esc: RecordEscalation, level: int, notify: str, recipient: str | None, status: str
) -> dict[str, Any]:
    """One escalations row, in INSERT_ESCALATION's parameter order."""
    return {
        "opportunity_id": esc.opportunity_id,
        "subject": esc.subject,
        "stage": esc.stage,
        "stage_entry_seq": esc.stage_entry_seq,
        "level": level,
        "notify": notify,
        "recipient_id": recipient,
        "due_at": esc.due_at,
        "fired_at": esc.fired_at,
        "status": status,
        "webhook_id": webhook_id_for(esc.opportunity_id, esc.subject, esc.stage_entry_seq, level),
    }


class OpportunityStore:
    """Activities that read and write the opportunity tables through one pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        public_url: str | None = None,
        link_secret: str | None = None,
        *,
        webhook_urls: list[str] | None = None,
    ) -> None:
        self.pool = pool
        self.public_url = public_url
        self.link_secret = link_secret
        self.webhook_urls = webhook_urls or []

    @activity.defn(name="persist_opportunity")
    async def persist(self, batch: PersistBatch) -> int:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            await self._write_batch(conn, batch)
        metrics.observe_batch(batch)
        _maybe_crash_after_commit()
        return len(batch.changes)

    @activity.defn(name="persist_escalation")
    async def persist_escalation(self, escalated: EscalatedBatch) -> EscalationRecorded:
        """The deal's queued rows and the escalation rows, atomically (one local activity per
        fired level): one statement, or a transaction when the batch also moves the statuses
        of earlier escalations (those must change before the new level's row exists)."""
        batch, esc = escalated.batch, escalated.escalation
        updates_escalations = any(c.escalation_status is not None for c in batch.changes)
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            if updates_escalations or esc.opportunity_id != batch.opportunity.id:
                async with conn.transaction():
                    await self._write_batch(conn, batch)
                    recorded = await self._write_escalation(conn, esc)
            else:
                recorded = await self._write_batch_and_escalation(conn, batch, esc)
        metrics.observe_batch(batch)
        if recorded.newly_recorded:
            metrics.observe_escalation(esc)
        _maybe_crash_after_commit()
        return recorded

    async def _write_batch(self, conn: asyncpg.Connection, batch: PersistBatch) -> None:
        """The batch in one statement, atomic on its own, when it moves escalation statuses
        (a stage change resolves, a snooze...) at most once; in a transaction when more."""
        moves = [
            _status_arguments(batch.opportunity.id, c)
            for c in batch.changes
            if c.escalation_status is not None
        ]
        if not moves:
            await conn.execute(SAVE_BATCH, *_batch_arguments(batch))
        elif len(moves) == 1:
            await conn.execute(SAVE_BATCH_AND_STATUS, *_batch_arguments(batch), *moves[0][1:])
        else:
            async with conn.transaction():  # inside the caller's, a savepoint
                await conn.execute(SAVE_BATCH, *_batch_arguments(batch))
                for move in moves:
                    await conn.execute(UPDATE_ESCALATIONS, *move)

    async def _write_batch_and_escalation(
        self, conn: asyncpg.Connection, batch: PersistBatch, esc: RecordEscalation
    ) -> EscalationRecorded:
        recipient = await self._recipient(conn, esc.notify, esc.owner_id, esc.assignee_id)
        rows = [
            *(_escalation_row(esc, level, "superseded", None, "superseded") for level in esc.superseded),
            _escalation_row(esc, esc.level, esc.notify, recipient, "open"),
        ]
        result = await conn.fetchrow(
            SAVE_BATCH_AND_ESCALATIONS,
            *_batch_arguments(batch),
            ESCALATION_ROWS_JSON.dump_json(rows).decode(),
            esc.subject,
            esc.stage_entry_seq,
            esc.level,
        )
        newly_recorded = esc.level in result["inserted_levels"]
        if not newly_recorded:  # a retry: answer what the first attempt recorded
            recipient = result["recorded_recipient"]
        return self._recorded(esc, recipient, newly_recorded)

    @activity.defn(name="record_escalation")
    async def record_escalation(self, esc: RecordEscalation) -> EscalationRecorded:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
            recorded = await self._write_escalation(conn, esc)
        if recorded.newly_recorded:
            metrics.observe_escalation(esc)
        return recorded

    async def _write_escalation(self, conn: asyncpg.Connection, esc: RecordEscalation) -> EscalationRecorded:
        recipient = await self._recipient(conn, esc.notify, esc.owner_id, esc.assignee_id)
        for level in esc.superseded:
            superseded = _escalation_row(esc, level, "superseded", None, "superseded")
            await conn.execute(INSERT_ESCALATION, *superseded.values())
        fired = _escalation_row(esc, esc.level, esc.notify, recipient, "open")
        inserted = await conn.fetchval(INSERT_ESCALATION, *fired.values())
        if inserted is None:  # a retry: answer what the first attempt recorded
            recipient = await conn.fetchval(
                "SELECT recipient_id FROM escalations WHERE opportunity_id = $1 AND subject = $2 "
                "AND stage_entry_seq = $3 AND level = $4",
                esc.opportunity_id,
                esc.subject,
                esc.stage_entry_seq,
                esc.level,
            )
        return self._recorded(esc, recipient, inserted is not None)

    def _recorded(
        self, esc: RecordEscalation, recipient: str | None, newly_recorded: bool
    ) -> EscalationRecorded:
        deliver = bool(self.webhook_urls or esc.extra_webhooks)
        links: dict[str, str] = {}
        # Links travel only in the webhook: without one, signing them is wasted work, and
        # they would sit in the deal's history (2 KB per escalation).
        if deliver and self.public_url and self.link_secret and recipient and esc.subject == "stage":
            # fired_at, not now: a retried activity answers the same links.
            links = links_for(
                self.public_url,
                self.link_secret,
                esc.opportunity_id,
                esc.stage_entry_seq,
                esc.level,
                recipient,
                esc.fired_at,
            )
        return EscalationRecorded(
            recipient_id=recipient,
            webhook_id=webhook_id_for(esc.opportunity_id, esc.subject, esc.stage_entry_seq, esc.level),
            newly_recorded=newly_recorded,
            links=links,
            deliver=deliver,
        )

    async def _recipient(
        self, conn: asyncpg.Connection, notify: str, owner_id: str, assignee_id: str | None
    ) -> str | None:
        async def manager_of(user_id: str | None) -> str | None:
            return await conn.fetchval(MANAGER_OF, user_id) if user_id else None

        if notify == "owner":
            return owner_id
        if notify == "assignee":
            return assignee_id or await manager_of(owner_id)
        if notify == "manager":
            found = await manager_of(owner_id)
        elif notify == "manager_of_manager":
            found = await manager_of(await manager_of(owner_id))
        elif notify == "assignee_manager":
            found = await manager_of(assignee_id) or await manager_of(owner_id)
        else:
            found = None
        return found or await conn.fetchval(SALES_OPS)

    @activity.defn(name="org_chain")
    async def org_chain(self, request: OrgChainRequest) -> OrgChain:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            ids = [r["id"] for r in await conn.fetch(MANAGEMENT_CHAIN, request.user_id)]
        if not ids:
            return OrgChain(user_id=request.user_id, exists=False)
        return OrgChain(user_id=request.user_id, exists=True, managers=ids[1:])

    async def write_rejections(self, items: list[RejectedCommand]) -> None:
        # Refusals echo what callers sent; text Postgres cannot hold (NUL, lone surrogates)
        # is replaced, so one hostile request never blocks the audit of the others.
        items = [_storable(r) for r in items]
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            await conn.executemany(
                "INSERT INTO rejected_commands (opportunity_id, request_id, command, actor_id, "
                "actor_role, rule, message, missing, rejected_at, source) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
                "ON CONFLICT (opportunity_id, request_id, command, rule) DO NOTHING",
                [
                    (
                        r.opportunity_id,
                        r.request_id,
                        r.command,
                        r.actor_id,
                        r.actor_role,
                        r.rule,
                        r.message,
                        r.missing,
                        r.rejected_at,
                        r.source,
                    )
                    for r in items
                ],
            )


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _storable(r: RejectedCommand) -> RejectedCommand:
    return r.model_copy(
        update={
            "opportunity_id": _text(r.opportunity_id),
            "request_id": _text(r.request_id),
            "command": _text(r.command),
            "actor_id": _text(r.actor_id) if r.actor_id is not None else None,
            "actor_role": _text(r.actor_role) if r.actor_role is not None else None,
            "rule": _text(r.rule),
            "message": _text(r.message),
            "missing": [_text(m) for m in r.missing],
        }
    )


def _maybe_crash_after_commit() -> None:
    """Fault injection for the reliability suite: die between COMMIT and the reply."""
    marker = os.environ.get("OPPFLOW_FAULT_CRASH_AFTER_COMMIT")
    if marker and not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write("crashed")
        os._exit(137)
