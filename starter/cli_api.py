"""``oppflow token``, ``oppflow api``, ``oppflow escalations`` and ``oppflow report ...``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import typer
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.table import Table

from starter import reports
from starter.settings import get_settings

console = Console()

Owner = Annotated[str | None, typer.Option("--owner", help="only this owner's deals")]
Team = Annotated[str | None, typer.Option("--team", help="a manager id: their whole reporting chain")]
Format = Annotated[str, typer.Option("--format", help="table, csv or json")]


@asynccontextmanager
async def database() -> AsyncIterator[asyncpg.Pool]:
    from db.pool import create_pool
    from starter.cli import resolve_database_url

    pool = await create_pool(resolve_database_url(get_settings()), 1, 2)
    try:
        yield pool
    finally:
        await pool.close()


async def token(
    user: Annotated[str, typer.Option("--user", help="user id from the org chart")],
    ttl: Annotated[str, typer.Option("--ttl", help="lifetime, e.g. 30m, 8h, 7d")] = "8h",
) -> None:
    """Mint an HTTP API token for a user (roles from the org chart); prints only the token."""
    from api.auth import mint_token, parse_ttl
    from starter import org_chart

    lifetime = parse_ttl(ttl)
    async with database() as pool:
        roles = await org_chart.roles_of(pool, user)
    if roles is None:
        raise ValueError(f"user {user} is not in the org chart (oppflow users import FILE)")
    typer.echo(mint_token(get_settings().jwt_secret, user, roles, lifetime))


async def api() -> None:
    """Run the HTTP API alone, against the configured Temporal and DATABASE_URL."""
    from api.server import serve_api
    from starter import observability
    from starter.cli import resolve_database_url
    from starter.connect import connect_temporal
    from starter.dev_stack import stop_on_signals
    from starter.ports import check_ports_free

    settings = get_settings()
    check_ports_free({settings.api_port: "stop whatever serves it or set OPPFLOW_API_PORT"})
    database_url = resolve_database_url(settings)
    observability.setup_api_process()
    client = await connect_temporal(settings)
    typer.echo(f"oppflow API on http://localhost:{settings.api_port} (docs at /docs); Ctrl-C to stop")
    stop = asyncio.Event()
    with stop_on_signals(stop):
        serving = asyncio.create_task(serve_api(client, database_url))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (serving, stopping):
            task.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
        try:
            await serving
        except asyncio.CancelledError:
            typer.echo("oppflow API stopped")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return str(value)


def _print_rows(columns: list[str], rows: list[dict[str, Any]], totals: dict[str, Any] | None = None) -> None:
    table = Table(*columns)
    for row in rows:
        table.add_row(*(_text(row.get(c)) for c in columns))
    if totals:
        table.add_section()
        table.add_row(*("total" if i == 0 else _text(totals.get(c, "")) for i, c in enumerate(columns)))
    console.print(table)


def _print_report(report: reports.Report, output: str) -> None:
    if output == "csv":
        typer.echo(report.as_csv(), nl=False)
    elif output == "json":
        typer.echo(json.dumps(to_jsonable_python(report.as_json())))
    elif output == "table":
        _print_rows(report.columns, report.rows, report.totals)
    else:
        raise ValueError(f"--format {output!r}: use table, csv or json")


async def escalations(
    recipient: Annotated[str | None, typer.Option("--recipient", help="whose inbox")] = None,
    status: Annotated[str | None, typer.Option("--status", help="open, acknowledged, snoozed...")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
) -> None:
    """A manager's escalation inbox, newest first."""
    async with database() as pool:
        rows = await reports.escalation_inbox(pool, recipient_id=recipient, status=status, limit=limit)
    columns = ["fired_at", "opportunity_id", "opportunity_name", "stage", "level", "recipient_id", "status"]
    _print_rows(columns, rows)


async def report_pipeline(
    owner: Owner = None,
    team: Team = None,
    by_owner: Annotated[bool, typer.Option("--by-owner", help="one row per owner")] = False,
    output: Format = "table",
) -> None:
    """Open pipeline by stage and forecast category: count, amount, weighted amount."""
    async with database() as pool:
        _print_report(await reports.pipeline(pool, owner_id=owner, team=team, by_owner=by_owner), output)


async def report_time_in_stage(owner: Owner = None, team: Team = None, output: Format = "table") -> None:
    """Median and p90 days spent in each stage (finished stints)."""
    async with database() as pool:
        _print_report(await reports.time_in_stage(pool, owner_id=owner, team=team), output)


async def report_stuck(owner: Owner = None, team: Team = None, output: Format = "table") -> None:
    """Open deals past their stage's stuck_after, with the escalation level reached."""
    async with database() as pool:
        _print_report(await reports.stuck(pool, owner_id=owner, team=team), output)


async def report_overdue(owner: Owner = None, team: Team = None, output: Format = "table") -> None:
    """Open deals whose close date has passed."""
    async with database() as pool:
        _print_report(await reports.overdue(pool, owner_id=owner, team=team), output)


def register(app: typer.Typer) -> None:
    """Add these commands to the ``oppflow`` app (called by starter.cli)."""
    from starter.cli import run

    app.command("token")(run(token))
    app.command("api")(run(api))
    app.command("escalations")(run(escalations))
    report_app = typer.Typer(help="Pipeline reports from Postgres.", no_args_is_help=True)
    report_app.command("pipeline")(run(report_pipeline))
    report_app.command("time-in-stage")(run(report_time_in_stage))
    report_app.command("stuck")(run(report_stuck))
    report_app.command("overdue")(run(report_overdue))
    app.add_typer(report_app, name="report")
