"""Bringing an existing pipeline in: CRM exports become running opportunities, once each,
resumably, with broken rows reported and old deals escalated at the right level."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from openpyxl import Workbook
from temporalio.testing import WorkflowEnvironment

from db.pool import create_pool
from sales.process import default_process
from starter.client import OpportunityClient
from starter.import_mapping import (
    HUBSPOT,
    SALESFORCE,
    MappingError,
    OwnerDirectory,
    Person,
    RowConverter,
    detect,
    load_mapping,
    parse_mapping,
    resolve_columns,
)
from starter.importer import Importer, ImportReport, ImportStalled
from tests.data.salesforce_export import HEADER, generate
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app


@pytest_asyncio.fixture(loop_scope="session")
async def app(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    async with running_app(temporal_env.client, db_pool) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def importing(app: App, postgres_url: str) -> AsyncIterator[OpportunityClient]:
    """The client an `oppflow import` process has: its own small pool, not the worker's."""
    pool = await create_pool(postgres_url, 1, 4)
    try:
        yield OpportunityClient(app.temporal, pool, app.task_queue)
    finally:
        await pool.close()


def owner_names(app: App) -> list[str]:
    return [p.name for p in app.team.people if p.id in (app.team.id("rep"), app.team.id("rep2"))]


async def workflows_started(app: App, id_prefix: str) -> int:
    query = f"WorkflowType='OpportunityWorkflow' AND WorkflowId STARTS_WITH 'opportunity-{id_prefix}'"
    return (await app.temporal.count_workflows(query)).count


async def deals_in_postgres(pool: asyncpg.Pool, id_prefix: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM opportunities WHERE starts_with(id, $1)", id_prefix)


async def checkpointed(pool: asyncpg.Pool, run_id: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM import_rows WHERE run_id = $1", run_id)


class CancelAfter:
    """Progress that cancels the running import after `rows` deals, like Ctrl-C would."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.seen = 0
        self.task: asyncio.Task[ImportReport] | None = None

    def start(self, total: int, already_done: int, errors: int) -> None:
        pass

    def advance(self, ok: bool) -> None:
        self.seen += 1
        if self.seen == self.rows and self.task:
            self.task.cancel()

    def finish(self) -> None:
        pass


# -- reading exports (no services) ----------------------------------------------------------------


def test_the_export_format_is_recognised_from_the_header() -> None:
    assert detect(HEADER) is SALESFORCE
    assert detect(["Record ID", "Deal Name", "Deal Stage", "Amount", "Close Date", "Deal owner"]) is HUBSPOT
    with pytest.raises(MappingError, match="--mapping FILE"):
        detect(["Name", "Status", "Value"])
    with pytest.raises(MappingError, match=r"no column for owner: Opportunity Owner"):
        resolve_columns(SALESFORCE, [h for h in HEADER if h != "Opportunity Owner"])


def test_each_broken_cell_is_named_with_its_line_column_and_reason() -> None:
    owners = OwnerDirectory(
        [
            Person("rep-1", "Rita Rep", "rita@example.com", ["rep"]),
            Person("rep-2", "Sam Lee", "sam@example.com", ["rep"]),
            Person("rep-3", "Sam Lee", "sam.lee@example.com", ["rep"]),
        ]
    )
    mapping = parse_mapping(
        "preset: hubspot\nid_prefix: hs-\ndecimal_comma: true\nstage_map: {Discovery call: Needs Analysis}\n",
        "hubspot.yaml",
    )
    headers = [
        "Record ID",
        "Deal Name",
        "Associated Company",
        "Deal owner",
        "Deal Stage",
        "Amount",
        "Close Date",
    ]
    converter = RowConverter(
        mapping, resolve_columns(mapping, headers), default_process(), owners, datetime.now(UTC)
    )

    def row(**values: str) -> dict[str, str]:
        base = dict(
            zip(
                headers,
                [
                    "101",
                    "Acme",
                    "Acme Inc",
                    "rita@example.com",
                    "appointmentscheduled",
                    "1.250,50",
                    "2026-12-31",
                ],
                strict=True,
            )
        )
        return {**base, **values}

    good = converter.convert(2, row())
    assert not isinstance(good, list)
    assert (good.opportunity_id, good.owner_id, good.stage, str(good.amount)) == (
        "hs-101",
        "rep-1",
        "Qualification",
        "1250.50",
    )
    by_label = converter.convert(
        3, row(**{"Record ID": "102", "Deal Stage": "discovery call", "Deal owner": "RITA  rep"})
    )
    assert not isinstance(by_label, list) and (by_label.stage, by_label.owner_id) == (
        "Needs Analysis",
        "rep-1",
    )

    def problems(line: int, **values: str) -> list[tuple[int, str | None, str]]:
        result = converter.convert(line, row(**{"Record ID": str(line), **values}))
        assert isinstance(result, list)
        return [(p.line, p.column, p.reason) for p in result]

    assert problems(4, **{"Deal Stage": "Negotiating"}) == [
        (
            4,
            "Deal Stage",
            "unknown stage 'Negotiating': not a stage of process new-business and not in the stage map",
        )
    ]
    assert problems(5, **{"Deal owner": "Sam Lee"})[0][1:] == (
        "Deal owner",
        "owner 'Sam Lee' matches several people in the org chart (rep-2, rep-3); use id or email",
    )
    assert problems(6, Amount="12,5x") == [(6, "Amount", "amount '12,5x' is not a number")]
    assert problems(7, **{"Close Date": "31/31/2026"})[0][:2] == (7, "Close Date")
    assert problems(8, **{"Deal Name": " "}) == [(8, "Deal Name", "missing name")]
    assert problems(9, **{"Record ID": "101"}) == [(9, "Record ID", "duplicate id 101 (first on line 2)")]
    assert problems(10, **{"Deal owner": "", "Amount": "-5"}) == [
        (10, "Deal owner", "missing owner"),
        (10, "Amount", "amount '-5' is negative"),
    ]


# -- against Temporal and Postgres --------------------------------------------------------------------


async def test_a_deal_40_days_into_prospecting_escalates_once_at_level_3(app: App, tmp_path: Path) -> None:
    prefix = f"006E{uuid.uuid4().hex[:8]}"
    export = generate(1, 0, owner_names(app)[:1], prefix, old=1)
    path = tmp_path / "old-deal.csv"
    path.write_text(export.text, encoding="utf-8")
    (opp,) = export.old_ids

    report = await Importer(app.client, path).run()

    assert (report.created, report.problems) == (1, [])

    async def escalations() -> list[tuple[int, str, str | None]]:
        rows = await app.pool.fetch(
            "SELECT level, status, recipient_id FROM escalations WHERE opportunity_id = $1 ORDER BY level",
            opp,
        )
        return [(r["level"], r["status"], r["recipient_id"]) for r in rows]

    # Prospecting: stuck after 14d, level 1 at +0s (owner), 2 at +3d (manager), 3 at +7d (manager's manager).
    await assert_eq_eventually(
        [(1, "superseded", None), (2, "superseded", None), (3, "open", app.team.id("vp"))], escalations
    )
    state = await app.client.state(opp)
    assert (state["stage"], state["escalation_level"]) == ("Prospecting", 3)
    entered = datetime.fromisoformat(state["stage_entered_at"])
    assert entered.date() == (datetime.now(UTC) - timedelta(days=40)).date()
    history = await app.client.history(opp)
    assert [(h["from_stage"], h["to_stage"], h["reason"]) for h in history] == [
        (None, "Prospecting", "imported")
    ]
    await asyncio.sleep(1.0)  # a storm would show up as more rows by now
    assert len(await escalations()) == 3


async def test_an_import_with_no_worker_stops_and_says_so(app: App, tmp_path: Path) -> None:
    export = generate(40, 0, owner_names(app), f"006W{uuid.uuid4().hex[:8]}")
    path = tmp_path / "no-worker.csv"
    path.write_text(export.text, encoding="utf-8")
    queue = f"nobody-polls-{uuid.uuid4().hex[:6]}"
    importer = Importer(OpportunityClient(app.temporal, app.pool, queue), path, landing_timeout=1.5)

    with pytest.raises(ImportStalled, match=f"is a worker running on task queue '{queue}'"):
        await importer.run()

    assert importer.report.interrupted
    assert await checkpointed(app.pool, importer.run_id) == 0


async def import_until_cancelled(importer: Importer, rows: int) -> ImportReport:
    stopper = CancelAfter(rows)
    importer.progress = stopper
    task = asyncio.create_task(importer.run())
    stopper.task = task
    with pytest.raises(asyncio.CancelledError):
        await task
    return importer.report


async def check_interrupted_resumed_and_rerun(
    app: App, client: OpportunityClient, tmp_path: Path, rows: int, broken: int
) -> ImportReport:
    """Import `rows` rows in three goes (--limit, then cancelled, then to the end), run it once
    more, and check Postgres and Temporal hold each good deal exactly once. Returns the
    report of the run that went to the end."""
    prefix = f"006T{uuid.uuid4().hex[:8]}"
    export = generate(rows, broken, owner_names(app), prefix, old=3)
    path = tmp_path / "salesforce-opportunities.csv"
    path.write_text(export.text, encoding="utf-8")
    good = len(export.good_ids)
    first_go = rows // 4

    limited = await Importer(client, path, limit=first_go).run()

    assert (limited.created, limited.existing, limited.remaining) == (first_go, 0, good - first_go)
    assert {p.line: p.column for p in limited.problems} == export.broken
    assert await checkpointed(app.pool, limited.run_id) == first_go

    interrupted = await import_until_cancelled(Importer(client, path), rows // 4)

    assert interrupted.interrupted
    done_so_far = await checkpointed(app.pool, limited.run_id)
    assert done_so_far == first_go + interrupted.created + interrupted.existing
    assert first_go + rows // 4 <= done_so_far < good

    resumed = await Importer(client, path).run()

    assert resumed.already_imported == done_so_far
    # Deals whose start was in flight at the interruption were created then, and are found now.
    assert resumed.created + resumed.existing == good - done_so_far
    assert resumed.existing <= 16
    assert (resumed.remaining, resumed.skipped) == (0, broken)
    assert await checkpointed(app.pool, limited.run_id) == good

    rerun = await Importer(client, path).run()

    assert (rerun.created, rerun.existing, rerun.already_imported, rerun.skipped) == (0, 0, good, broken)
    await assert_eq_eventually(good, lambda: deals_in_postgres(app.pool, prefix), timeout=60)
    await assert_eq_eventually(good, lambda: workflows_started(app, prefix), timeout=30)
    creations = await app.pool.fetchval(
        "SELECT count(*) FROM stage_history WHERE starts_with(opportunity_id, $1) AND from_stage IS NULL "
        "AND reason = 'imported'",
        prefix,
    )
    assert creations == good
    by_stage = dict(
        await app.pool.fetch(
            "SELECT stage, count(*) FROM opportunities WHERE starts_with(id, $1) GROUP BY stage", prefix
        )
    )
    expected: dict[str, int] = {}
    for stage in export.stages.values():
        expected[stage] = expected.get(stage, 0) + 1
    assert by_stage == expected
    await assert_eq_eventually(
        [3] * len(export.old_ids), lambda: levels(app.pool, export.old_ids), timeout=30
    )
    return resumed


async def levels(pool: asyncpg.Pool, ids: list[str]) -> list[int]:
    rows = await pool.fetch("SELECT escalation_level FROM opportunities WHERE id = ANY($1) ORDER BY id", ids)
    return [r["escalation_level"] for r in rows]


def rate_line(report: ImportReport) -> str:
    rows = report.created + report.existing
    return f"last run imported {rows} rows in {report.elapsed_s:.1f}s = {report.rows_per_s} rows/s"


async def test_300_rows_interrupted_resumed_and_rerun_import_each_deal_once(
    app: App, importing: OpportunityClient, tmp_path: Path
) -> None:
    resumed = await check_interrupted_resumed_and_rerun(app, importing, tmp_path, rows=300, broken=5)
    print(f"\nimport (300-row export, concurrency 16): {rate_line(resumed)}")


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_2000_rows_with_30_broken_interrupted_resumed_and_rerun(
    app: App, importing: OpportunityClient, tmp_path: Path
) -> None:
    resumed = await check_interrupted_resumed_and_rerun(app, importing, tmp_path, rows=2000, broken=30)
    print(f"\nimport (2,000-row export, concurrency 16): {rate_line(resumed)}")


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(command: list[str], cwd: Path, env: dict[str, str]) -> CliRun:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    return CliRun(process.returncode or 0, out.decode(), err.decode())


def hubspot_workbook(path: Path, app: App) -> None:
    book = Workbook()
    sheet = book.active
    sheet.append(
        [
            "Record ID",
            "Deal Name",
            "Associated Company",
            "Deal owner",
            "Deal Stage",
            "Amount",
            "Close Date",
            "Stage since",
            "Budget",
        ]
    )
    rep = app.team.people[3]
    sheet.append(
        [
            9001,
            "Globex renewal",
            "Globex",
            rep.email,
            "appointmentscheduled",
            12000,
            datetime(2026, 12, 31),
            datetime.now() - timedelta(days=2),
            "15000",
        ]
    )
    sheet.append(
        [9002, "Initech pilot", "Initech", rep.name, "Pilot", 5000, datetime(2026, 11, 30), None, None]
    )
    sheet.append([9003, "Umbrella", "Umbrella Corp", rep.id, "contractsent", "n/a", None, None, None])
    book.save(path)


async def test_a_hubspot_workbook_imports_from_the_command_line_with_a_mapping_file(
    app: App, tmp_path: Path, postgres_url: str, temporal_env: WorkflowEnvironment
) -> None:
    prefix = f"hs{uuid.uuid4().hex[:8]}-"
    workbook = tmp_path / "deals.xlsx"
    hubspot_workbook(workbook, app)
    mapping = tmp_path / "hubspot.yaml"
    mapping.write_text(
        f"preset: hubspot\nid_prefix: {prefix}\ncolumns:\n  stage_entered_at: Stage since\n"
        "fields:\n  Budget: budget\nstage_map:\n  Pilot: Value Proposition\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "OPPFLOW_TASK_QUEUE": app.task_queue,
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
    }
    command = [
        str(Path(sys.executable).parent / "oppflow"),
        "import",
        str(workbook),
        "--mapping",
        str(mapping),
    ]
    checked = await Importer(app.client, workbook, mapping=load_mapping(mapping), dry_run=True).run()
    assert (checked.created, checked.remaining, [p.line for p in checked.problems]) == (0, 2, [4])
    assert await workflows_started(app, prefix) == 0

    first = await run_cli(command, tmp_path, env)

    assert first.returncode == 2, first.stderr
    assert "import: 2/2 rows" in first.stdout  # plain progress lines when not on a terminal
    assert "rows 3: created 2, already existed 0, imported by an earlier run 0, skipped 1" in first.stdout
    assert "line 4: Amount: amount 'n/a' is not a number" in first.stdout
    report = json.loads((tmp_path / "deals.xlsx.import-report.json").read_text())
    assert report["counts"] == {
        "rows": 3,
        "created": 2,
        "existing": 0,
        "already_imported": 0,
        "skipped": 1,
        "remaining": 0,
    }
    assert report["errors"] == [
        {
            "line": 4,
            "column": "Amount",
            "reason": "amount 'n/a' is not a number",
            "opportunity_id": f"{prefix}9003",
        }
    ]
    globex = await app.client.state(f"{prefix}9001")
    assert (globex["stage"], globex["owner_id"], globex["amount"], globex["fields"]) == (
        "Qualification",
        app.team.id("rep"),
        "12000.00",
        {"budget": "15000.00"},
    )
    initech = await app.client.state(f"{prefix}9002")
    assert (initech["stage"], initech["close_date"]) == ("Value Proposition", "2026-11-30")

    again = await run_cli(command, tmp_path, env)

    assert "created 0, already existed 0, imported by an earlier run 2, skipped 1" in again.stdout
    assert await workflows_started(app, prefix) == 2
