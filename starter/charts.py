"""Pipeline charts from the reporting tables: the funnel (deals and amount per stage),
time in stage (box plot per stage, from stage_history) and escalations fired per week.

``render_chart(kind, pool, fmt)`` returns PNG or SVG bytes, for the CLI and the HTTP API;
``chart_data`` returns the numbers a chart is drawn from.
"""

from __future__ import annotations

import asyncio
import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

import asyncpg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sales.process import DEFAULT_PROCESS_NAME, SalesProcess, default_process
from starter import processes

ChartKind = Literal["funnel", "time-in-stage", "escalations"]
ChartFormat = Literal["png", "svg"]
CHART_KINDS: tuple[ChartKind, ...] = ("funnel", "time-in-stage", "escalations")
LEVEL_COLOURS = ("#f2c14e", "#f78154", "#b4436c", "#5d2e46")


@dataclass(frozen=True)
class Scope:
    """Which deals a chart covers: all, or those of some owners (a manager's team)."""

    owner_ids: list[str] | None = None
    process_name: str = DEFAULT_PROCESS_NAME
    weeks: int = 12


@dataclass(frozen=True)
class FunnelData:
    stages: list[str]
    deals: list[int]
    amounts: list[Decimal]
    closed: list[bool]


@dataclass(frozen=True)
class TimeInStageData:
    stages: list[str]
    days: list[list[float]]  # one sample per stage entry, open entries counted up to now


@dataclass(frozen=True)
class EscalationsData:
    weeks: list[date]  # Mondays, oldest first
    by_level: dict[int, list[int]] = field(default_factory=dict)  # level -> count per week

    @property
    def totals(self) -> list[int]:
        return [sum(counts[i] for counts in self.by_level.values()) for i in range(len(self.weeks))]


ChartData = FunnelData | TimeInStageData | EscalationsData


async def _process(pool: asyncpg.Pool, name: str) -> SalesProcess:
    return await processes.latest(pool, name) or default_process()


def _ordered(process: SalesProcess, seen: set[str]) -> list[str]:
    known = [s.name for s in process.stages]
    return known + sorted(seen - set(known))


async def funnel_data(pool: asyncpg.Pool, scope: Scope) -> FunnelData:
    rows = await pool.fetch(
        "SELECT stage, count(*) AS deals, COALESCE(sum(amount), 0) AS amount FROM opportunities "
        "WHERE $1::text[] IS NULL OR owner_id = ANY($1) GROUP BY stage",
        scope.owner_ids,
    )
    process = await _process(pool, scope.process_name)
    by_stage = {r["stage"]: r for r in rows}
    stages = _ordered(process, set(by_stage))
    return FunnelData(
        stages=stages,
        deals=[by_stage[s]["deals"] if s in by_stage else 0 for s in stages],
        amounts=[by_stage[s]["amount"] if s in by_stage else Decimal(0) for s in stages],
        closed=[process.has_stage(s) and process.stage(s).closed for s in stages],
    )


# An imported deal's creation row is written at import time; it entered its stage earlier.
TIME_IN_STAGE = """
WITH entries AS (
    SELECT sh.opportunity_id, sh.to_stage AS stage,
           CASE WHEN sh.from_stage IS NULL AND sh.reason = 'imported'
                THEN COALESCE((ev.detail->>'stage_entered_at')::timestamptz, sh.changed_at)
                ELSE sh.changed_at END AS entered_at,
           LEAD(sh.changed_at) OVER (PARTITION BY sh.opportunity_id ORDER BY sh.changed_at, sh.id) AS left_at
    FROM stage_history sh
    LEFT JOIN opportunity_events ev
      ON ev.opportunity_id = sh.opportunity_id AND ev.request_id = sh.request_id AND ev.kind = 'create'
)
SELECT e.stage, EXTRACT(EPOCH FROM (COALESCE(e.left_at, now()) - e.entered_at)) / 86400.0 AS days
FROM entries e JOIN opportunities o ON o.id = e.opportunity_id
WHERE ($1::text[] IS NULL OR o.owner_id = ANY($1)) AND (e.left_at IS NOT NULL OR NOT o.is_closed)
"""


async def time_in_stage_data(pool: asyncpg.Pool, scope: Scope) -> TimeInStageData:
    rows = await pool.fetch(TIME_IN_STAGE, scope.owner_ids)
    process = await _process(pool, scope.process_name)
    samples: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        stage = row["stage"]
        if process.has_stage(stage) and process.stage(stage).closed:
            continue
        samples[stage].append(max(float(row["days"]), 0.0))
    stages = [s for s in _ordered(process, set(samples)) if samples.get(s)]
    return TimeInStageData(stages=stages, days=[samples[s] for s in stages])


async def escalations_data(pool: asyncpg.Pool, scope: Scope, today: date | None = None) -> EscalationsData:
    today = today or datetime.now(UTC).date()
    this_monday = today - timedelta(days=today.weekday())
    weeks = [this_monday - timedelta(weeks=n) for n in range(scope.weeks - 1, -1, -1)]
    rows = await pool.fetch(
        "SELECT (date_trunc('week', e.fired_at AT TIME ZONE 'UTC'))::date AS week, e.level, count(*) AS n "
        "FROM escalations e JOIN opportunities o ON o.id = e.opportunity_id "
        "WHERE e.status <> 'superseded' AND e.fired_at >= $2 "
        "AND ($1::text[] IS NULL OR o.owner_id = ANY($1)) GROUP BY 1, 2",
        scope.owner_ids,
        datetime.combine(weeks[0], datetime.min.time(), UTC),
    )
    index = {week: i for i, week in enumerate(weeks)}
    by_level: dict[int, list[int]] = {}
    for row in rows:
        if row["week"] in index:
            by_level.setdefault(row["level"], [0] * len(weeks))[index[row["week"]]] += row["n"]
    return EscalationsData(weeks=weeks, by_level=dict(sorted(by_level.items())))


async def chart_data(kind: ChartKind, pool: asyncpg.Pool, scope: Scope | None = None) -> ChartData:
    scope = scope or Scope()
    if kind == "funnel":
        return await funnel_data(pool, scope)
    if kind == "time-in-stage":
        return await time_in_stage_data(pool, scope)
    if kind == "escalations":
        return await escalations_data(pool, scope)
    raise ValueError(f"chart must be one of {', '.join(CHART_KINDS)} (got {kind!r})")


# -- drawing ---------------------------------------------------------------------------------


def draw(data: ChartData) -> Figure:
    if isinstance(data, FunnelData):
        return _draw_funnel(data)
    if isinstance(data, TimeInStageData):
        return _draw_time_in_stage(data)
    return _draw_escalations(data)


def _draw_funnel(data: FunnelData) -> Figure:
    fig = Figure(figsize=(11, 5.5), layout="constrained")
    by_count, by_amount = fig.subplots(1, 2, sharey=True)
    colours = ["#9aa5b1" if closed else "#2b6cb0" for closed in data.closed]
    positions = list(range(len(data.stages)))
    by_count.barh(positions, data.deals, color=colours)
    by_count.set_yticks(positions, data.stages)
    by_count.invert_yaxis()
    by_count.set_title("Deals per stage")
    by_count.bar_label(by_count.containers[0], padding=3)
    by_count.xaxis.set_major_locator(MaxNLocator(integer=True))
    amounts = [float(a) for a in data.amounts]
    by_amount.barh(positions, amounts, color=colours)
    by_amount.set_title("Amount per stage")
    by_amount.bar_label(by_amount.containers[0], labels=[_money(a) for a in amounts], padding=3)
    by_amount.xaxis.set_major_formatter(lambda value, _pos: _money(value))
    for axes in (by_count, by_amount):
        axes.margins(x=0.18)
        axes.grid(axis="x", alpha=0.3)
    fig.suptitle("Pipeline funnel (grey: closed stages)")
    return fig


def _draw_time_in_stage(data: TimeInStageData) -> Figure:
    fig = Figure(figsize=(11, 5.5), layout="constrained")
    axes = fig.subplots()
    if data.stages:
        labels = [f"{stage}\n({len(samples)})" for stage, samples in zip(data.stages, data.days, strict=True)]
        axes.boxplot(data.days, tick_labels=labels, showfliers=True)
        axes.tick_params(axis="x", labelrotation=20)
    else:
        axes.text(0.5, 0.5, "no stage history yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylabel("days in stage")
    axes.grid(axis="y", alpha=0.3)
    axes.set_title("Time in stage (stage entries per stage in brackets; open ones counted up to now)")
    return fig


def _draw_escalations(data: EscalationsData) -> Figure:
    fig = Figure(figsize=(11, 5), layout="constrained")
    axes = fig.subplots()
    positions = list(range(len(data.weeks)))
    bottom = [0] * len(data.weeks)
    for level, counts in data.by_level.items():
        axes.bar(
            positions,
            counts,
            bottom=bottom,
            label=f"level {level}",
            color=LEVEL_COLOURS[(level - 1) % len(LEVEL_COLOURS)],
        )
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    if not data.by_level:
        axes.bar(positions, bottom)
    axes.set_xticks(positions, [f"{w:%d %b}" for w in data.weeks], rotation=45, ha="right")
    axes.set_xlabel("week starting")
    axes.set_ylabel("escalations sent")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(axis="y", alpha=0.3)
    if data.by_level:
        axes.legend(title="ladder level")
    axes.set_title("Escalations per week (superseded levels not counted)")
    return fig


def _money(value: float) -> str:
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def to_bytes(fig: Figure, fmt: ChartFormat) -> bytes:
    FigureCanvasAgg(fig)  # Agg renders PNG; SVG goes through matplotlib's own SVG writer
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else None
    fig.savefig(buffer, format=fmt, dpi=110, metadata=metadata)
    return buffer.getvalue()


async def render_chart(
    kind: ChartKind, pool: asyncpg.Pool, fmt: ChartFormat = "png", scope: Scope | None = None
) -> bytes:
    """The chart as PNG or SVG bytes; drawing runs in a thread so an event loop stays free."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"format must be png or svg (got {fmt!r})")
    data = await chart_data(kind, pool, scope)
    return await asyncio.to_thread(lambda: to_bytes(draw(data), fmt))
