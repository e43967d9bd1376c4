"""``oppflow``: the command line for reps, managers, admins and operators."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.service import RPCError

from sales.process import ProcessFileError
from starter.client import CommandRejected, OpportunityClient, OpportunityNotFound
from starter.codec_server import command as codec_server_command
from starter.settings import Settings, get_settings

app = typer.Typer(help="oppflow: sales opportunities as durable workflows.", no_args_is_help=True)
opp_app = typer.Typer(help="Create, move and read opportunities.", no_args_is_help=True)
users_app = typer.Typer(help="The org chart.", no_args_is_help=True)
process_app = typer.Typer(help="Sales processes.", no_args_is_help=True)
app.add_typer(opp_app, name="opp")
app.add_typer(users_app, name="users")
app.add_typer(process_app, name="process")

console = Console()
T = TypeVar("T")

Actor = Annotated[str, typer.Option("--actor", help="who acts (user id; role from the org chart)")]
RequestId = Annotated[str | None, typer.Option("--request-id", help="idempotency key (generated if omitted)")]


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def run(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T | None]:
    """Run an async command; every failure ends as one clear line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except typer.Exit:
            raise
        except CommandRejected as exc:
            missing = f" (missing: {', '.join(exc.missing)})" if exc.missing else ""
            fail(f"refused [{exc.rule}]: {exc.message}{missing}")
        except OpportunityNotFound as exc:
            fail(str(exc))
        except (ProcessFileError, ValueError, RuntimeError) as exc:
            # RuntimeError: the stack's own one-line errors (ports in use, a search attribute
            # with another type, a dev server that would not start).
            fail(str(exc))
        except (OSError, asyncpg.PostgresError, RPCError) as exc:
            fail(f"{type(exc).__name__}: {exc}")
        return None

    return wrapper


def database_url_file(settings: Settings) -> Path:
    return settings.data_dir / "database_url"


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    recorded = database_url_file(settings)
    if recorded.exists():
        return recorded.read_text().strip()
    raise ValueError("no database: start `oppflow dev` in another terminal, or set DATABASE_URL")


@asynccontextmanager
async def connected() -> AsyncIterator[OpportunityClient]:
    from db.pool import create_pool
    from starter.connect import connect_temporal

    settings = get_settings()
    pool = await create_pool(resolve_database_url(settings), 1, 4)
    try:
        temporal = await connect_temporal(settings)
        yield OpportunityClient(temporal, pool, settings.task_queue)
    finally:
        await pool.close()


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def parse_fields(pairs: list[str] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--field {pair!r}: use key=value")
        try:
            fields[key] = (
                json.loads(value) if value[:1] in '[{"' or value in ("true", "false", "null") else value
            )
        except json.JSONDecodeError:
            fields[key] = value
    return fields


# -- the stack ------------------------------------------------------------------------------------


@app.command()
@run
async def dev(
    api: Annotated[bool, typer.Option(help="serve the HTTP API too")] = True,
) -> None:
    """The whole local stack: Temporal dev server + UI, Postgres, migrations, worker, HTTP API."""
    from db.pool import create_pool
    from starter import processes
    from starter.dev_stack import run_dev_stack
    from worker import run_worker
    from workflows.digest import ensure_digest_schedule

    settings = get_settings()

    async def start_worker(client: Client, database_url: str) -> None:
        database_url_file(settings).write_text(database_url)
        pool = await create_pool(database_url, settings.db_pool_min, settings.db_pool_max)
        try:
            await processes.ensure_default(pool)
            await ensure_digest_schedule(client, settings.task_queue)
            await run_worker(client, pool, settings)
        finally:
            await pool.close()

    start_api = None
    if api:
        try:
            from api.server import serve_api
        except ImportError:
            pass
        else:
            start_api = serve_api
    await run_dev_stack(settings, start_worker=start_worker, start_api=start_api)


@app.command()
@run
async def worker() -> None:
    """Run a worker against the configured Temporal and Postgres."""
    from worker import main

    await main()


@app.command()
@run
async def migrate() -> None:
    """Apply database migrations (and publish the default process)."""
    from db.migrate import upgrade
    from db.pool import create_pool
    from starter import processes

    url = resolve_database_url(get_settings())
    await asyncio.to_thread(upgrade, url)
    pool = await create_pool(url, 1, 2)
    try:
        published = await processes.ensure_default(pool)
    finally:
        await pool.close()
    typer.echo(f"database at the latest migration; process {published.name} v{published.version} published")


@app.command("setup-temporal")
@run
async def setup_temporal_cmd() -> None:
    """Register oppflow's search attributes (and namespace) on any Temporal cluster."""
    from starter.connect import connect_config, connect_temporal
    from starter.temporal_setup import setup_temporal
    from workflows.digest import ensure_digest_schedule

    settings = get_settings()
    client = await connect_temporal(settings)
    namespace = connect_config(settings)["namespace"]
    done = await setup_temporal(client, namespace)
    schedule = await ensure_digest_schedule(client, settings.task_queue)
    added = f"added {', '.join(done)}" if done else "all already registered"
    typer.echo(f"namespace {namespace}: search attributes {added}; weekly digest schedule {schedule}")


app.command("codec-server")(codec_server_command)


# -- opportunities ---------------------------------------------------------------------------------


@opp_app.command("create")
@run
async def opp_create(
    name: Annotated[str, typer.Option("--name")],
    account: Annotated[str, typer.Option("--account")],
    owner: Annotated[str, typer.Option("--owner")],
    amount: Annotated[str | None, typer.Option("--amount")] = None,
    close_date: Annotated[str | None, typer.Option("--close-date")] = None,
    opp_id: Annotated[str | None, typer.Option("--id")] = None,
    process: Annotated[str | None, typer.Option("--process")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="who creates it (default: the owner)")] = None,
    field: Annotated[list[str] | None, typer.Option("--field")] = None,
    request_id: RequestId = None,
) -> None:
    """Start an opportunity; print its id."""
    async with connected() as client:
        created = await client.create(
            actor=await client.actor(actor or owner),
            name=name,
            account=account,
            owner_id=owner,
            opportunity_id=opp_id,
            amount=amount,
            close_date=close_date,
            process_name=process,
            fields=parse_fields(field),
            request_id=request_id,
        )
    typer.echo(created.opportunity_id)


@opp_app.command("move")
@run
async def opp_move(
    opportunity_id: str,
    stage: str,
    actor: Actor,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    field: Annotated[
        list[str] | None, typer.Option("--field", help="key=value, set in the same step")
    ] = None,
    amount: Annotated[str | None, typer.Option("--amount")] = None,
    request_id: RequestId = None,
) -> None:
    """Change stage (closing is a move to Closed Won or Closed Lost)."""
    async with connected() as client:
        result = await client.change_stage(
            opportunity_id,
            actor=await client.actor(actor),
            stage=stage,
            reason=reason,
            fields=parse_fields(field),
            amount=amount,
            request_id=request_id,
        )
    typer.echo(result.message)


@opp_app.command("update")
@run
async def opp_update(
    opportunity_id: str,
    actor: Actor,
    field: Annotated[list[str] | None, typer.Option("--field", help="key=value")] = None,
    amount: Annotated[str | None, typer.Option("--amount")] = None,
    close_date: Annotated[str | None, typer.Option("--close-date")] = None,
    request_id: RequestId = None,
) -> None:
    """Set fields, amount or close date."""
    async with connected() as client:
        result = await client.update_fields(
            opportunity_id,
            actor=await client.actor(actor),
            fields=parse_fields(field),
            amount=amount,
            close_date=close_date,
            request_id=request_id,
        )
    typer.echo(result.message)


@opp_app.command("reopen")
@run
async def opp_reopen(
    opportunity_id: str,
    stage: str,
    actor: Actor,
    reason: Annotated[str, typer.Option("--reason")],
    request_id: RequestId = None,
) -> None:
    """Reopen a closed opportunity into an open stage."""
    async with connected() as client:
        result = await client.reopen(
            opportunity_id, actor=await client.actor(actor), stage=stage, reason=reason, request_id=request_id
        )
    typer.echo(result.message)


@opp_app.command("reassign")
@run
async def opp_reassign(
    opportunity_id: str,
    owner: str,
    actor: Actor,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    request_id: RequestId = None,
) -> None:
    """Give the opportunity to a new owner."""
    async with connected() as client:
        result = await client.reassign(
            opportunity_id,
            actor=await client.actor(actor),
            owner_id=owner,
            reason=reason,
            request_id=request_id,
        )
    typer.echo(result.message)


@opp_app.command("team-add")
@run
async def opp_team_add(
    opportunity_id: str, user: str, team_role: str, actor: Actor, request_id: RequestId = None
) -> None:
    """Add a person to the deal team (sales_engineer, customer_success, support, legal...)."""
    async with connected() as client:
        result = await client.add_team_member(
            opportunity_id,
            actor=await client.actor(actor),
            user_id=user,
            team_role=team_role,
            request_id=request_id,
        )
    typer.echo(result.message)


@opp_app.command("team-remove")
@run
async def opp_team_remove(opportunity_id: str, user: str, actor: Actor, request_id: RequestId = None) -> None:
    """Remove a person from the deal team."""
    async with connected() as client:
        result = await client.remove_team_member(
            opportunity_id, actor=await client.actor(actor), user_id=user, request_id=request_id
        )
    typer.echo(result.message)


@opp_app.command("ack")
@run
async def opp_ack(
    opportunity_id: str,
    actor: Actor,
    note: Annotated[str | None, typer.Option("--note")] = None,
    request_id: RequestId = None,
) -> None:
    """Acknowledge the escalation: the ladder stops until the next stage change."""
    async with connected() as client:
        result = await client.acknowledge_escalation(
            opportunity_id, actor=await client.actor(actor), note=note, request_id=request_id
        )
    typer.echo(result.message)


@opp_app.command("snooze")
@run
async def opp_snooze(
    opportunity_id: str,
    until: Annotated[str, typer.Option("--until", help="ISO date-time with zone")],
    actor: Actor,
    request_id: RequestId = None,
) -> None:
    """Push the next escalation level to a date."""
    async with connected() as client:
        result = await client.snooze_escalation(
            opportunity_id, actor=await client.actor(actor), until=until, request_id=request_id
        )
    typer.echo(result.message)


@opp_app.command("pause")
@run
async def opp_pause(
    opportunity_id: str,
    actor: Actor,
    reason: Annotated[str, typer.Option("--reason")],
    until: Annotated[str | None, typer.Option("--until")] = None,
    request_id: RequestId = None,
) -> None:
    """Pause the stage clock while the deal waits on the customer or legal."""
    async with connected() as client:
        result = await client.pause_clock(
            opportunity_id, actor=await client.actor(actor), reason=reason, until=until, request_id=request_id
        )
    typer.echo(result.message)


@opp_app.command("resume")
@run
async def opp_resume(opportunity_id: str, actor: Actor, request_id: RequestId = None) -> None:
    """Resume the stage clock."""
    async with connected() as client:
        result = await client.resume_clock(
            opportunity_id, actor=await client.actor(actor), request_id=request_id
        )
    typer.echo(result.message)


@opp_app.command("activity")
@run
async def opp_activity(
    opportunity_id: str,
    kind: str,
    actor: Actor,
    subject: Annotated[str | None, typer.Option("--subject")] = None,
    outcome: Annotated[str | None, typer.Option("--outcome")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", help="key=value")] = None,
    request_id: RequestId = None,
) -> None:
    """Record an activity (meeting, call, email, quote_sent, contract_signed...)."""
    async with connected() as client:
        sent = await client.record_activity(
            opportunity_id,
            actor=await client.actor(actor),
            kind=kind,
            subject=subject,
            outcome=outcome,
            data=parse_fields(data),
            request_id=request_id,
        )
    typer.echo(f"recorded {kind} ({sent})")


@opp_app.command("migrate-process")
@run
async def opp_migrate_process(
    opportunity_id: str,
    version: Annotated[int, typer.Option("--version")],
    actor: Actor,
    reason: Annotated[str, typer.Option("--reason")],
    process: Annotated[str | None, typer.Option("--process", help="default: the deal's own")] = None,
    request_id: RequestId = None,
) -> None:
    """Admin: move an in-flight opportunity to another published process version."""
    async with connected() as client:
        state = await client.state(opportunity_id)
        result = await client.migrate_process(
            opportunity_id,
            actor=await client.actor(actor),
            name=process or state["process"]["name"],
            version=version,
            reason=reason,
            request_id=request_id,
        )
    typer.echo(result.message)


@opp_app.command("show")
@run
async def opp_show(opportunity_id: str) -> None:
    """Live state, from the workflow."""
    async with connected() as client:
        print_json(await client.state(opportunity_id))


@opp_app.command("history")
@run
async def opp_history(opportunity_id: str) -> None:
    """Stage history, from Postgres."""
    async with connected() as client:
        rows = await client.history(opportunity_id)
    table = Table("changed at", "from", "to", "by", "reason")
    for row in rows:
        changed: datetime = row["changed_at"]
        table.add_row(
            f"{changed:%Y-%m-%d %H:%M:%S}",
            row["from_stage"] or "—",
            row["to_stage"],
            row["actor_id"],
            row["reason"] or "",
        )
    console.print(table)


@app.command("check-escalations")
@run
async def check_escalations(
    repair: Annotated[bool, typer.Option("--repair", help="re-arm the deals found")] = False,
    grace_seconds: Annotated[int, typer.Option("--grace", help="seconds late before it counts")] = 60,
) -> None:
    """Find escalations due by the database that have not fired (lost timers); --repair re-arms them."""
    from datetime import timedelta

    from starter import escalation_check

    async with connected() as client:
        overdue = await escalation_check.find_overdue(client.pool, timedelta(seconds=grace_seconds))
        for item in overdue:
            typer.echo(item.describe())
        if repair and overdue:
            problems = await escalation_check.repair(client.temporal, overdue)
            for problem in problems:
                typer.echo(f"could not re-arm {problem}", err=True)
            typer.echo(f"re-armed {len(overdue) - len(problems)} of {len(overdue)}")
    if not overdue:
        typer.echo("no overdue escalations")
    elif not repair:
        raise typer.Exit(2)


# -- org chart and processes --------------------------------------------------------------------------


@users_app.command("import")
@run
async def users_import(path: Path) -> None:
    """Load or update the org chart from YAML or CSV."""
    from starter import org_chart

    async with connected() as client:
        count = await org_chart.import_file(client.pool, str(path))
    typer.echo(f"imported {count} users from {path}")


@process_app.command("publish")
@run
async def process_publish(path: Path, actor: Annotated[str | None, typer.Option("--actor")] = None) -> None:
    """Publish a new version of a sales process from YAML."""
    from starter import processes

    async with connected() as client:
        published = await processes.publish_file(client.pool, str(path), actor)
    state = "published" if published.created else "unchanged, already published as"
    typer.echo(f"{state} {published.name} v{published.version} ({published.stages} stages)")


@process_app.command("list")
@run
async def process_list() -> None:
    """List published process versions."""
    from starter import processes

    async with connected() as client:
        rows = await processes.list_versions(client.pool)
    table = Table("name", "version", "stages", "published at", "by")
    for row in rows:
        table.add_row(
            row["name"],
            str(row["version"]),
            str(row["stages"]),
            f"{row['published_at']:%Y-%m-%d %H:%M}",
            row["published_by"] or "",
        )
    console.print(table)


from starter.cli_import import register as register_import_commands  # noqa: E402

register_import_commands(app)

from starter.cli_api import register as register_api_commands  # noqa: E402

register_api_commands(app)


def main() -> NoReturn:
    """The `oppflow` command. It leaves with os._exit: the Temporal client's background threads
    can abort a normal interpreter shutdown (temporalio/sdk-python#300), turning a finished
    command into SIGABRT."""
    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    atexit._run_exitfuncs()  # what a normal exit runs first: span export, embedded Postgres cleanup
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
