"""Pipeline charts drawn from what an import put in Postgres: funnel, time in stage and
escalations per week, as PNG and SVG, from Python and from the command line."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
import uuid
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle
from PIL import Image
from temporalio.testing import WorkflowEnvironment

from sales.process import default_process
from starter.charts import EscalationsData, FunnelData, Scope, TimeInStageData, chart_data, draw, render_chart
from starter.import_mapping import parse_amount
from starter.importer import Importer
from tests.data.salesforce_export import generate
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app

OLD_DEALS = 4
Pipeline = tuple[App, Scope, dict[str, tuple[str, str]]]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pipeline(
    temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pipeline]:
    """A team's imported pipeline: 60 deals, 4 of them 40 days into Prospecting."""
    async with running_app(temporal_env.client, db_pool) as app:
        owners = [app.team.id("rep"), app.team.id("rep2")]
        names = [p.name for p in app.team.people if p.id in owners]
        export = generate(60, 0, names, f"006C{uuid.uuid4().hex[:8]}", old=OLD_DEALS)
        path = tmp_path_factory.mktemp("charts") / "pipeline.csv"
        path.write_text(export.text, encoding="utf-8")
        report = await Importer(app.client, path).run()
        assert report.created == 60
        rows = {
            r["Opportunity ID"]: (r["Stage"], r["Amount"]) for r in csv.DictReader(io.StringIO(export.text))
        }
        yield app, Scope(owner_ids=owners), rows


def bars(axes: Axes) -> list[Rectangle]:
    return [patch for patch in axes.patches if isinstance(patch, Rectangle)]


def expected_funnel(rows: dict[str, tuple[str, str]]) -> tuple[Counter[str], dict[str, Decimal]]:
    deals: Counter[str] = Counter()
    amounts: dict[str, Decimal] = defaultdict(Decimal)
    for stage, amount in rows.values():
        deals[stage] += 1
        amounts[stage] += parse_amount(amount) or Decimal(0)
    return deals, amounts


async def test_the_funnel_has_one_bar_per_stage_with_deals_and_amounts(pipeline: Pipeline) -> None:
    app, scope, rows = pipeline
    deals, amounts = expected_funnel(rows)

    funnel = await chart_data("funnel", app.pool, scope)

    assert isinstance(funnel, FunnelData)
    assert funnel.stages == [s.name for s in default_process().stages]
    assert dict(zip(funnel.stages, funnel.deals, strict=True)) == {s: deals.get(s, 0) for s in funnel.stages}
    assert dict(zip(funnel.stages, funnel.amounts, strict=True)) == {
        s: amounts.get(s, Decimal(0)) for s in funnel.stages
    }
    by_count, by_amount = draw(funnel).axes
    assert [bar.get_width() for bar in bars(by_count)] == funnel.deals
    assert [bar.get_width() for bar in bars(by_amount)] == [float(a) for a in funnel.amounts]


async def test_time_in_stage_has_one_box_per_open_stage_in_use(pipeline: Pipeline) -> None:
    app, scope, rows = pipeline
    deals, _ = expected_funnel(rows)
    open_stages = [s.name for s in default_process().open_stages if deals.get(s.name)]

    data = await chart_data("time-in-stage", app.pool, scope)

    assert isinstance(data, TimeInStageData)
    assert data.stages == open_stages  # Closed Lost deals have no stage clock
    assert [len(samples) for samples in data.days] == [deals[s] for s in open_stages]
    prospecting = data.days[data.stages.index("Prospecting")]
    # imported deals count from their Last Stage Change Date, not from the import
    assert sum(1 for d in prospecting if 40 <= d < 41.1) == OLD_DEALS
    assert all(
        d < 10.1
        for s, samples in zip(data.stages, data.days, strict=True)
        for d in samples
        if s != "Prospecting"
    )
    axes = draw(data).axes[0]
    labels = [label.get_text() for label in axes.get_xticklabels()]
    assert labels == [f"{s}\n({deals[s]})" for s in open_stages]


async def test_escalations_per_week_count_the_levels_that_notified(pipeline: Pipeline) -> None:
    app, scope, _ = pipeline

    async def this_week() -> dict[int, int]:
        data = await chart_data("escalations", app.pool, scope)
        assert isinstance(data, EscalationsData)
        return {level: counts[-1] for level, counts in data.by_level.items()}

    # each old deal notifies once, at level 3; levels 1 and 2 are superseded, not counted
    await assert_eq_eventually({3: OLD_DEALS}, this_week, timeout=30)
    data = await chart_data("escalations", app.pool, scope)
    assert isinstance(data, EscalationsData)
    assert len(data.weeks) == 12 and data.totals == [0] * 11 + [OLD_DEALS]
    axes = draw(data).axes[0]
    assert [bar.get_height() for bar in bars(axes)] == data.totals


async def test_charts_render_as_png_and_svg(pipeline: Pipeline, tmp_path: Path) -> None:
    app, scope, _ = pipeline
    for kind in ("funnel", "time-in-stage", "escalations"):
        png = await render_chart(kind, app.pool, "png", scope)
        svg = await render_chart(kind, app.pool, "svg", scope)

        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(png))
        image.verify()
        assert image.size[0] >= 1000 and image.size[1] >= 500
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
        (tmp_path / f"{kind}.png").write_bytes(png)


async def test_the_chart_command_writes_the_file_named(
    pipeline: Pipeline, tmp_path: Path, postgres_url: str
) -> None:
    _, scope, _ = pipeline
    oppflow = str(Path(sys.executable).parent / "oppflow")
    env = {**os.environ, "DATABASE_URL": postgres_url}
    owners = [arg for owner in scope.owner_ids or [] for arg in ("--owner", owner)]

    async def chart(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            oppflow,
            "chart",
            *args,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        return process.returncode or 0, out.decode()

    code, out = await chart("funnel", "--out", str(tmp_path / "funnel.svg"), *owners)
    assert (code, out.strip()) == (
        0,
        f"wrote {tmp_path / 'funnel.svg'} ({(tmp_path / 'funnel.svg').stat().st_size:,} bytes)",
    )
    assert ET.parse(tmp_path / "funnel.svg").getroot().tag.endswith("svg")

    code, out = await chart("forecast", "--out", str(tmp_path / "x.png"))
    assert (code, out.strip()) == (
        1,
        "error: chart must be one of funnel, time-in-stage, escalations (got 'forecast')",
    )
