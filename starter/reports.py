"""Pipeline reports and lists, read from Postgres (the workflows' read model).

Every report can be narrowed to one owner or to a team: a manager's reporting chain
(everyone under them, at any depth, and the manager themselves).

- pipeline: open deals by stage and forecast category: count, amount, weighted amount
  (amount x probability / 100).
- time in stage: for each stage, the median and 90th percentile (interpolated) of the time
  between a deal entering it and its next stage change, from ``stage_history``; stints
  still running are not counted.
- stuck: open deals past their stage's ``stuck_after`` (from the deal's pinned process
  version), or with an escalation level already fired; a paused clock is not stuck.
- overdue: open deals whose close date has passed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from sales.durations import add_duration
from sales.process import SalesProcess

REPORTS = ("pipeline", "time-in-stage", "stuck", "overdue")

# $1 owner id or NULL, $2 manager id (team) or NULL.
SCOPE_CTE = """
WITH RECURSIVE team(id, depth) AS (
    SELECT id, 0 FROM users WHERE id = $2
    UNION ALL
    SELECT u.id, t.depth + 1 FROM users u JOIN team t ON u.manager_id = t.id WHERE t.depth < 20
)
"""
# The stage's place in the deal's pinned process, for ordering rows like the process does.
STAGE_POSITION = """LEFT JOIN LATERAL (
    SELECT s.ord FROM sales_processes sp,
         jsonb_array_elements(sp.definition -> 'stages') WITH ORDINALITY AS s(stage, ord)
    WHERE sp.name = o.process_name AND sp.version = o.process_version AND s.stage ->> 'name' = {stage}
) pos ON true"""
SCOPE_WHERE = (
    "($1::text IS NULL OR o.owner_id = $1) AND ($2::text IS NULL OR o.owner_id IN (SELECT id FROM team))"
)

PIPELINE = f"""{SCOPE_CTE}
SELECT {{owner_column}} o.stage, o.forecast_category,
       min(pos.ord) AS position,
       count(*) AS count,
       COALESCE(sum(o.amount), 0)::numeric(18, 2) AS amount,
       round(COALESCE(sum(o.amount * o.probability / 100.0), 0), 2)::numeric(18, 2) AS weighted_amount
FROM opportunities o
{STAGE_POSITION.format(stage="o.stage")}
WHERE NOT o.is_closed AND {SCOPE_WHERE}
GROUP BY {{owner_group}} o.stage, o.forecast_category
ORDER BY {{owner_group}} position NULLS LAST, o.stage, o.forecast_category
"""

TIME_IN_STAGE = f"""{SCOPE_CTE},
stints AS (
    SELECT h.to_stage AS stage, h.changed_at AS entered_at, o.process_name, o.process_version,
           lead(h.changed_at) OVER (PARTITION BY h.opportunity_id ORDER BY h.changed_at, h.id)
             - h.changed_at AS spent
    FROM stage_history h
    JOIN opportunities o ON o.id = h.opportunity_id
    WHERE {SCOPE_WHERE}
)
SELECT o.stage, count(*) AS stints, min(pos.ord) AS position,
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM spent)) / 86400)::numeric, 2)
         AS median_days,
       round((percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM spent)) / 86400)::numeric, 2)
         AS p90_days
FROM stints o
{STAGE_POSITION.format(stage="o.stage")}
WHERE o.spent IS NOT NULL AND ($3::timestamptz IS NULL OR o.entered_at >= $3)
GROUP BY o.stage
ORDER BY position NULLS LAST, o.stage
"""

OPEN_DEALS = f"""{SCOPE_CTE}
SELECT o.id, o.name, o.account, o.owner_id, o.stage, o.amount, o.close_date, o.stage_entered_at,
       o.escalation_level, o.next_escalation_at, o.clock_paused, o.process_name, o.process_version
FROM opportunities o
WHERE NOT o.is_closed AND {SCOPE_WHERE}
"""

OVERDUE = f"""{SCOPE_CTE}
SELECT o.id AS opportunity_id, o.name, o.account, o.owner_id, o.stage, o.amount, o.close_date,
       ($3::date - o.close_date) AS days_overdue, o.escalation_level
FROM opportunities o
WHERE NOT o.is_closed AND o.close_date < $3::date AND {SCOPE_WHERE}
ORDER BY o.close_date, o.id
"""

PROCESSES = """
SELECT definition FROM sales_processes WHERE (name, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))
"""

LIST_OPPORTUNITIES = """
SELECT id, name, account, owner_id, stage, amount, close_date, probability, forecast_category,
       is_closed, is_won, stage_entered_at, escalation_level, next_escalation_at, clock_paused, updated_at
FROM opportunities
WHERE ($1::text IS NULL OR stage = $1) AND ($2::text IS NULL OR owner_id = $2)
  AND ($3::boolean IS NULL OR (escalation_level > 0) = $3)
  AND ($4::boolean IS NULL OR is_closed = $4)
ORDER BY updated_at DESC, id
LIMIT $5 OFFSET $6
"""

ESCALATION_INBOX = """
SELECT e.id, e.opportunity_id, o.name AS opportunity_name, o.account, o.owner_id, o.amount,
       e.subject, e.stage, e.stage_entry_seq, e.level, e.notify, e.recipient_id, e.status,
       e.due_at, e.fired_at, e.note
FROM escalations e
LEFT JOIN opportunities o ON o.id = e.opportunity_id
WHERE ($1::text IS NULL OR e.recipient_id = $1) AND ($2::text IS NULL OR e.status = $2)
  AND e.status <> 'superseded'
ORDER BY e.fired_at DESC, e.id DESC
LIMIT $3
"""


@dataclass
class Report:
    name: str
    columns: list[str]
    rows: list[dict[str, Any]]
    totals: dict[str, Any] | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self) -> dict[str, Any]:
        return {
            "report": self.name,
            "generated_at": self.generated_at,
            "filters": self.filters,
            "columns": self.columns,
            "rows": self.rows,
            "totals": self.totals,
        }

    def as_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else value


def _scope(owner_id: str | None, team: str | None) -> dict[str, Any]:
    return {k: v for k, v in {"owner_id": owner_id, "team": team}.items() if v}


async def pipeline(
    pool: asyncpg.Pool, *, owner_id: str | None = None, team: str | None = None, by_owner: bool = False
) -> Report:
    sql = PIPELINE.format(
        owner_column="o.owner_id," if by_owner else "", owner_group="o.owner_id," if by_owner else ""
    )
    records = await pool.fetch(sql, owner_id, team)
    columns = [*(["owner_id"] if by_owner else []), "stage", "forecast_category", "count", "amount"]
    columns.append("weighted_amount")
    rows = [{c: r[c] for c in columns} for r in records]
    totals = {
        "count": sum(r["count"] for r in rows),
        "amount": sum((r["amount"] for r in rows), Decimal("0.00")),
        "weighted_amount": sum((r["weighted_amount"] for r in rows), Decimal("0.00")),
    }
    filters = {**_scope(owner_id, team), **({"by_owner": True} if by_owner else {})}
    return Report("pipeline", columns, rows, totals, filters)


async def time_in_stage(
    pool: asyncpg.Pool,
    *,
    owner_id: str | None = None,
    team: str | None = None,
    since: datetime | None = None,
) -> Report:
    """``since``: count only stints that began at or after it."""
    records = await pool.fetch(TIME_IN_STAGE, owner_id, team, since)
    columns = ["stage", "stints", "median_days", "p90_days"]
    filters = {**_scope(owner_id, team), **({"since": since.isoformat()} if since else {})}
    return Report("time-in-stage", columns, [dict(r) for r in records], None, filters)


async def _processes(pool: asyncpg.Pool, keys: set[tuple[str, int]]) -> dict[tuple[str, int], SalesProcess]:
    if not keys:
        return {}
    names, versions = zip(*sorted(keys), strict=True)
    found = {}
    for definition in [r["definition"] for r in await pool.fetch(PROCESSES, list(names), list(versions))]:
        process = SalesProcess.model_validate(definition)
        found[(process.name, process.version)] = process
    return found


async def stuck(
    pool: asyncpg.Pool,
    *,
    owner_id: str | None = None,
    team: str | None = None,
    now: datetime | None = None,
) -> Report:
    now = now or datetime.now(UTC)
    deals = await pool.fetch(OPEN_DEALS, owner_id, team)
    processes = await _processes(pool, {(d["process_name"], d["process_version"]) for d in deals})
    rows = []
    for deal in deals:
        process = processes.get((deal["process_name"], deal["process_version"]))
        if process is None or not process.has_stage(deal["stage"]) or deal["clock_paused"]:
            continue
        clock = process.stage(deal["stage"]).stuck_clock
        if clock is None:
            continue
        stuck_since = add_duration(deal["stage_entered_at"], clock, process.holidays)
        if stuck_since > now and deal["escalation_level"] == 0:
            continue
        rows.append(
            {
                "opportunity_id": deal["id"],
                "name": deal["name"],
                "account": deal["account"],
                "owner_id": deal["owner_id"],
                "stage": deal["stage"],
                "amount": deal["amount"],
                "stage_entered_at": deal["stage_entered_at"],
                "days_in_stage": round((now - deal["stage_entered_at"]).total_seconds() / 86400, 1),
                "stuck_since": stuck_since,
                "escalation_level": deal["escalation_level"],
                "next_escalation_at": deal["next_escalation_at"],
            }
        )
    rows.sort(key=lambda r: (-r["escalation_level"], r["stuck_since"], r["opportunity_id"]))
    columns = list(rows[0]) if rows else STUCK_COLUMNS
    return Report("stuck", columns, rows, None, _scope(owner_id, team))


STUCK_COLUMNS = [
    "opportunity_id", "name", "account", "owner_id", "stage", "amount", "stage_entered_at",
    "days_in_stage", "stuck_since", "escalation_level", "next_escalation_at",
]  # fmt: skip


async def overdue(
    pool: asyncpg.Pool, *, owner_id: str | None = None, team: str | None = None, today: date | None = None
) -> Report:
    today = today or datetime.now(UTC).date()
    records = await pool.fetch(OVERDUE, owner_id, team, today)
    columns = ["opportunity_id", "name", "account", "owner_id", "stage", "amount", "close_date"]
    columns += ["days_overdue", "escalation_level"]
    rows = [dict(r) for r in records]
    totals = {"count": len(rows), "amount": sum((r["amount"] or Decimal(0) for r in rows), Decimal("0.00"))}
    return Report("overdue", columns, rows, totals, {**_scope(owner_id, team), "as_of": today.isoformat()})


async def run_report(pool: asyncpg.Pool, name: str, **options: Any) -> Report:
    if name == "pipeline":
        return await pipeline(pool, **options)
    if name == "time-in-stage":
        return await time_in_stage(pool, **options)
    if name == "stuck":
        return await stuck(pool, **options)
    if name == "overdue":
        return await overdue(pool, **options)
    raise ValueError(f"unknown report {name!r}: choose one of {', '.join(REPORTS)}")


async def list_opportunities(
    pool: asyncpg.Pool,
    *,
    stage: str | None = None,
    owner_id: str | None = None,
    escalated: bool | None = None,
    closed: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    records = await pool.fetch(LIST_OPPORTUNITIES, stage, owner_id, escalated, closed, limit, offset)
    return [dict(r) for r in records]


async def escalation_inbox(
    pool: asyncpg.Pool, *, recipient_id: str | None = None, status: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(ESCALATION_INBOX, recipient_id, status, limit)]
