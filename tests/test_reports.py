"""Pipeline reports against a hand-built data set (rows written straight into the read
model), with every figure computed by hand; over HTTP (JSON, CSV) and the CLI too."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth import mint_token
from starter import processes, reports
from starter.client import OpportunityClient
from starter.org_chart import Person, import_people

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # a Wednesday
TODAY = NOW.date()
DAY = timedelta(days=1)
PROBABILITY = {
    "Prospecting": 10,
    "Qualification": 10,
    "Needs Analysis": 20,
    "Proposal/Price Quote": 75,
    "Negotiation/Review": 90,
    "Closed Won": 100,
}


@dataclass
class Seeded:
    tag: str

    def id(self, name: str) -> str:
        return f"{name}-{self.tag}"


INSERT_OPPORTUNITY = """
INSERT INTO opportunities (id, name, account, owner_id, stage, amount, close_date, probability,
    forecast_category, is_closed, is_won, stage_entered_at, stage_entry_seq, escalation_level,
    clock_paused, process_name, process_version, created_at, updated_at)
VALUES ($1, $2, 'Acme', $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $13, 'new-business', $14, $15, $15)
"""

INSERT_HISTORY = """
INSERT INTO stage_history (opportunity_id, request_id, from_stage, to_stage, actor_id, changed_at,
    stage_entry_seq)
VALUES ($1, $2, $3, $4, 'seed', $5, $6)
"""


async def seed(pool: asyncpg.Pool) -> Seeded:
    s = Seeded(uuid.uuid4().hex[:6])
    await import_people(
        pool,
        [
            Person(id=s.id(n), name=n, email=f"{n}@example.com", manager_id=m and s.id(m), roles=r)
            for n, m, r in [
                ("vp", None, ["manager"]),
                ("mgr", "vp", ["manager"]),
                ("othermgr", "vp", ["manager"]),
                ("repa", "mgr", ["rep"]),
                ("repb", "mgr", ["rep"]),
                ("repc", "othermgr", ["rep"]),
            ]
        ],
    )
    version = (await processes.ensure_default(pool)).version
    # name, owner, stage, amount, close date, days in stage, escalation level, paused
    deals = [
        ("a1", "repa", "Prospecting", "10000", TODAY - 5 * DAY, 20, 2, False),
        ("a2", "repa", "Prospecting", "5000", TODAY + 10 * DAY, 3, 0, False),
        ("a3", "repa", "Proposal/Price Quote", "40000", None, 1, 0, False),
        ("b1", "repb", "Negotiation/Review", "100000", TODAY - DAY, 30, 0, False),
        ("b2", "repb", "Prospecting", None, None, 20, 0, True),
        ("b3", "repb", "Closed Won", "70000", TODAY - 20 * DAY, 5, 0, False),
        ("c1", "repc", "Prospecting", "8000", TODAY - 2 * DAY, 2, 0, False),
    ]
    for name, owner, stage, amount, close, days, level, paused in deals:
        closed = stage.startswith("Closed")
        await pool.execute(
            INSERT_OPPORTUNITY,
            s.id(name),
            name,
            s.id(owner),
            stage,
            Decimal(amount) if amount else None,
            close,
            PROBABILITY[stage],
            "Closed" if closed else "Pipeline",
            closed,
            closed,
            NOW - days * DAY,
            level,
            paused,
            version,
            NOW,
        )
    # stage entries: (deal, [(stage, days after the first entry)])
    histories = {
        "a3": [("Prospecting", 0), ("Qualification", 2), ("Needs Analysis", 6), ("Proposal/Price Quote", 10)],
        "b1": [("Prospecting", 0), ("Qualification", 4), ("Needs Analysis", 12), ("Negotiation/Review", 15)],
        "b3": [("Prospecting", 0), ("Qualification", 6), ("Closed Won", 16)],
        "a2": [("Prospecting", 0)],
        "c1": [("Prospecting", 0), ("Qualification", 100)],
    }
    start = NOW - 200 * DAY
    for deal, entries in histories.items():
        previous = None
        for seq, (stage, offset) in enumerate(entries, start=1):
            await pool.execute(
                INSERT_HISTORY, s.id(deal), f"seed-{seq}", previous, stage, start + offset * DAY, seq
            )
            previous = stage
    return s


@pytest_asyncio.fixture(loop_scope="session")
async def seeded(db_pool: asyncpg.Pool) -> AsyncIterator[Seeded]:
    yield await seed(db_pool)


def money(text: str) -> Decimal:
    return Decimal(text)


async def test_pipeline_by_stage_and_category_for_a_team_an_owner_and_per_owner(
    db_pool: asyncpg.Pool, seeded: Seeded
) -> None:
    team = await reports.pipeline(db_pool, team=seeded.id("mgr"))
    assert [
        (r["stage"], r["forecast_category"], r["count"], r["amount"], r["weighted_amount"]) for r in team.rows
    ] == [
        ("Prospecting", "Pipeline", 3, money("15000.00"), money("1500.00")),
        ("Proposal/Price Quote", "Pipeline", 1, money("40000.00"), money("30000.00")),
        ("Negotiation/Review", "Pipeline", 1, money("100000.00"), money("90000.00")),
    ]
    assert team.totals == {"count": 5, "amount": money("155000.00"), "weighted_amount": money("121500.00")}

    whole_org = await reports.pipeline(db_pool, team=seeded.id("vp"))
    assert (whole_org.rows[0]["count"], whole_org.rows[0]["amount"]) == (4, money("23000.00"))
    assert whole_org.totals is not None
    assert whole_org.totals["weighted_amount"] == money("122300.00")

    owner = await reports.pipeline(db_pool, owner_id=seeded.id("repa"))
    assert [(r["stage"], r["count"], r["weighted_amount"]) for r in owner.rows] == [
        ("Prospecting", 2, money("1500.00")),
        ("Proposal/Price Quote", 1, money("30000.00")),
    ]

    per_owner = await reports.pipeline(db_pool, team=seeded.id("mgr"), by_owner=True)
    assert [(r["owner_id"], r["stage"], r["count"], r["amount"]) for r in per_owner.rows] == [
        (seeded.id("repa"), "Prospecting", 2, money("15000.00")),
        (seeded.id("repa"), "Proposal/Price Quote", 1, money("40000.00")),
        (seeded.id("repb"), "Prospecting", 1, money("0.00")),
        (seeded.id("repb"), "Negotiation/Review", 1, money("100000.00")),
    ]


async def test_time_in_stage_median_and_p90_from_stage_history(db_pool: asyncpg.Pool, seeded: Seeded) -> None:
    report = await reports.time_in_stage(db_pool, team=seeded.id("mgr"))
    # Prospecting stints 2, 4, 6 days; Qualification 4, 8, 10; Needs Analysis 4, 3.
    # p90 interpolates: 4 + 0.8 x (6 - 4) = 5.6; 8 + 0.8 x 2 = 9.6; 3 + 0.9 x 1 = 3.9.
    assert [(r["stage"], r["stints"], r["median_days"], r["p90_days"]) for r in report.rows] == [
        ("Prospecting", 3, money("4.00"), money("5.60")),
        ("Qualification", 3, money("8.00"), money("9.60")),
        ("Needs Analysis", 2, money("3.50"), money("3.90")),
    ]
    whole_org = await reports.time_in_stage(db_pool, team=seeded.id("vp"))
    assert (whole_org.rows[0]["stage"], whole_org.rows[0]["stints"]) == ("Prospecting", 4)
    assert whole_org.rows[0]["p90_days"] == money("71.80")  # 2, 4, 6, 100: 6 + 0.7 x (100 - 6)


async def test_stuck_deals_come_with_their_escalation_level(db_pool: asyncpg.Pool, seeded: Seeded) -> None:
    report = await reports.stuck(db_pool, team=seeded.id("mgr"), now=NOW)
    assert [
        (r["opportunity_id"], r["stage"], r["escalation_level"], r["stuck_since"], r["days_in_stage"])
        for r in report.rows
    ] == [
        # 14d after entering Prospecting on 2026-05-21 12:00
        (seeded.id("a1"), "Prospecting", 2, datetime(2026, 6, 4, 12, tzinfo=UTC), 20.0),
        # 10 business days after entering on Monday 2026-05-11 12:00: Monday 2026-05-25
        (seeded.id("b1"), "Negotiation/Review", 0, datetime(2026, 5, 25, 12, tzinfo=UTC), 30.0),
    ]
    assert (await reports.stuck(db_pool, owner_id=seeded.id("repc"), now=NOW)).rows == []
    assert [
        r["opportunity_id"] for r in (await reports.stuck(db_pool, team=seeded.id("vp"), now=NOW)).rows
    ] == [
        seeded.id("a1"),
        seeded.id("b1"),
    ]


async def test_overdue_deals_are_open_ones_past_their_close_date(
    db_pool: asyncpg.Pool, seeded: Seeded
) -> None:
    report = await reports.overdue(db_pool, team=seeded.id("mgr"), today=TODAY)
    assert [(r["opportunity_id"], r["close_date"], r["days_overdue"]) for r in report.rows] == [
        (seeded.id("a1"), date(2026, 6, 5), 5),
        (seeded.id("b1"), date(2026, 6, 9), 1),
    ]
    assert report.totals == {"count": 2, "amount": money("110000.00")}
    whole_org = await reports.overdue(db_pool, team=seeded.id("vp"), today=TODAY)
    assert [r["opportunity_id"] for r in whole_org.rows] == [
        seeded.id("a1"),
        seeded.id("c1"),
        seeded.id("b1"),
    ]


async def test_reports_over_http_as_json_and_csv(
    db_pool: asyncpg.Pool, seeded: Seeded, temporal_env: WorkflowEnvironment
) -> None:
    secret = "reports-test-secret-long-enough-for-hs256"
    api = create_app(
        OpportunityClient(temporal_env.client, db_pool), jwt_secret=secret, public_url="http://t"
    )
    headers = {"Authorization": f"Bearer {mint_token(secret, seeded.id('mgr'), ['manager'])}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as http:
        as_json = (await http.get(f"/reports/pipeline?team={seeded.id('mgr')}", headers=headers)).json()
        assert as_json["totals"] == {"count": 5, "amount": "155000.00", "weighted_amount": "121500.00"}
        assert as_json["rows"][0]["weighted_amount"] == "1500.00"

        as_csv = await http.get(f"/reports/pipeline?team={seeded.id('mgr')}&format=csv", headers=headers)
        assert as_csv.headers["content-type"].startswith("text/csv")
        assert as_csv.text.splitlines() == [
            "stage,forecast_category,count,amount,weighted_amount",
            "Prospecting,Pipeline,3,15000.00,1500.00",
            "Proposal/Price Quote,Pipeline,1,40000.00,30000.00",
            "Negotiation/Review,Pipeline,1,100000.00,90000.00",
        ]
        stages = await http.get(f"/reports/time-in-stage?team={seeded.id('mgr')}&format=csv", headers=headers)
        assert stages.text.splitlines()[1] == "Prospecting,3,4.00,5.60"
        # Today is long after the seeded June: every open deal of repa is stuck and overdue.
        owner = f"owner_id={seeded.id('repa')}"
        stuck = (await http.get(f"/reports/stuck?{owner}", headers=headers)).json()["rows"]
        assert [r["opportunity_id"] for r in stuck] == [seeded.id(n) for n in ("a1", "a2", "a3")]
        overdue = (await http.get(f"/reports/overdue?{owner}", headers=headers)).json()["rows"]
        assert [r["opportunity_id"] for r in overdue] == [seeded.id("a1"), seeded.id("a2")]
        assert (await http.get("/reports/pipeline?format=xml", headers=headers)).json()["field"] == "format"
        assert (await http.get("/reports/pipeline")).status_code == 401


async def test_reports_from_the_command_line(postgres_url: str, seeded: Seeded, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": postgres_url, "OPPFLOW_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    oppflow = str(Path(sys.executable).parent / "oppflow")

    async def run(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            oppflow, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        return out.decode()

    csv_out, table_out, json_out = await asyncio.gather(
        run("report", "pipeline", "--team", seeded.id("mgr"), "--format", "csv"),
        run("report", "overdue", "--team", seeded.id("mgr")),
        run("report", "time-in-stage", "--owner", seeded.id("repb"), "--format", "json"),
    )
    assert csv_out.splitlines()[1] == "Prospecting,Pipeline,3,15000.00,1500.00"
    assert all(seeded.id(n) in table_out for n in ("a1", "a2", "b1")) and "115000.00" in table_out
    assert [r["stage"] for r in json.loads(json_out)["rows"]] == [
        "Prospecting",
        "Qualification",
        "Needs Analysis",
    ]
