"""The local stack for real: migrations, the asyncpg pool, search attribute registration,
port checks, the Temporal dev server's persistence, and `run_dev_stack` end to end."""

import asyncio
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeIndexedValueType as SAType
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from db.migrate import current_revision, head_revision, upgrade
from db.pool import PoolExhaustedError, acquire, create_pool
from starter.codec import plain_data_converter
from starter.connect import connect_temporal
from starter.dev_stack import run_dev_stack
from starter.ports import PortInUseError, check_ports_free, free_port, port_is_free
from starter.settings import Settings
from starter.temporal_server import DevServerOptions, dev_server_args, start_dev_server
from starter.temporal_setup import SEARCH_ATTRIBUTES, TemporalSetupError, register_search_attributes
from tests.helpers import new_task_queue

CONTRACT_COLUMNS = {
    "opportunities": {
        "id", "name", "account", "owner_id", "stage", "amount", "close_date", "probability",
        "forecast_category", "is_closed", "is_won", "stage_entered_at", "updated_at",
    },
    "stage_history": {
        "opportunity_id", "request_id", "from_stage", "to_stage", "actor_id", "reason", "changed_at",
    },
    "escalations": {"opportunity_id", "stage", "level", "recipient_id", "fired_at", "status"},
    "users": {"id", "name", "email", "manager_id", "roles"},
}  # fmt: skip

UNIQUE_COLUMN_SETS = """
SELECT array_agg(a.attname::text) AS columns
FROM pg_index i
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey)
WHERE t.relname = $1 AND i.indisunique AND NOT i.indisprimary
GROUP BY i.indexrelid
"""


@workflow.defn
class ProbeWorkflow:
    """Never completes; with no worker polling it simply stays Running."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/oppflow")
    monkeypatch.setenv("OPPFLOW_WEBHOOK_URLS", "https://a.example/hook, https://b.example/hook")
    monkeypatch.setenv("OPPFLOW_API_PORT", "9000")
    settings = Settings(_env_file=None)
    assert settings.database_url == "postgresql://u@db/oppflow"
    assert settings.webhook_urls == ["https://a.example/hook", "https://b.example/hook"]
    assert (settings.api_port, settings.task_queue, settings.temporal_port) == (9000, "opportunities", 7233)


async def test_connect_follows_temporal_env_vars(
    temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    client = await connect_temporal(Settings(_env_file=None, temporal_port=1))
    assert client.data_converter is plain_data_converter
    assert await client.service_client.check_health()


async def test_migrations_twice_are_a_noop_and_create_the_contract_tables(
    postgres_url: str, db_pool: asyncpg.Pool
) -> None:
    table_oid = "SELECT 'opportunities'::regclass::oid"
    before = await db_pool.fetchval(table_oid)
    await asyncio.to_thread(upgrade, postgres_url)
    await asyncio.to_thread(upgrade, postgres_url)
    assert await db_pool.fetchval(table_oid) == before
    assert await asyncio.to_thread(current_revision, postgres_url) == head_revision()
    assert await db_pool.fetchval("SELECT count(*) FROM alembic_version") == 1

    for table, wanted in CONTRACT_COLUMNS.items():
        rows = await db_pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
        )
        assert wanted <= {row["column_name"] for row in rows}, table

    history_uniques = [
        set(row["columns"]) for row in await db_pool.fetch(UNIQUE_COLUMN_SETS, "stage_history")
    ]
    assert {"opportunity_id", "request_id"} in history_uniques
    escalation_uniques = [
        set(row["columns"]) for row in await db_pool.fetch(UNIQUE_COLUMN_SETS, "escalations")
    ]
    assert any({"opportunity_id", "stage_entry_seq", "level"} <= cols for cols in escalation_uniques)


async def test_pool_json_codec_and_fail_fast_acquire(postgres_url: str, db_pool: asyncpg.Pool) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert await db_pool.fetchval("SELECT $1::jsonb", {"at": at, "n": 1}) == {"at": str(at), "n": 1}

    pool = await create_pool(postgres_url, min_size=1, max_size=1)
    try:
        async with acquire(pool):
            with pytest.raises(PoolExhaustedError, match=r"no database connection free within 0\.2s"):
                async with acquire(pool, timeout=0.2):
                    pass
    finally:
        await pool.close()


async def test_a_connection_left_in_a_transaction_comes_back_rolled_back(postgres_url: str) -> None:
    """The pool skips asyncpg's session reset query; an abandoned transaction is still undone."""
    pool = await create_pool(postgres_url, min_size=1, max_size=1)
    try:
        async with acquire(pool) as conn:
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS pool_probe (n int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
        async with acquire(pool) as conn:  # the same (only) connection
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
    finally:
        await pool.close()


async def test_search_attribute_registration_is_idempotent(temporal_env: WorkflowEnvironment) -> None:
    client = temporal_env.client
    assert await register_search_attributes(client, "default") == []
    probe = {f"OppflowProbeKw{uuid.uuid4().hex[:8]}": SAType.KEYWORD}
    assert await register_search_attributes(client, "default", probe) == list(probe)
    assert await register_search_attributes(client, "default", probe) == []

    listing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    for name, sa_type in {**SEARCH_ATTRIBUTES, **probe}.items():
        assert listing.custom_attributes[name] == sa_type.value


async def test_search_attribute_with_another_type_is_a_clear_error(temporal_env: WorkflowEnvironment) -> None:
    client = temporal_env.client
    await register_search_attributes(client, "default", {"OppflowProbe": SAType.TEXT})
    with pytest.raises(TemporalSetupError) as caught:
        await register_search_attributes(client, "default", {"OppflowProbe": SAType.KEYWORD})
    assert str(caught.value) == "search attribute OppflowProbe exists as Text, oppflow needs Keyword"


async def test_port_in_use_fails_with_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(PortInUseError) as caught:
            check_ports_free({port: "stop the other Temporal server or set OPPFLOW_TEMPORAL_PORT"})
        assert str(caught.value) == (
            f"port {port} is in use: stop the other Temporal server or set OPPFLOW_TEMPORAL_PORT"
        )
        with pytest.raises(PortInUseError, match=f"^port {port} is in use: stop the other Temporal server"):
            await start_dev_server(DevServerOptions(port=port, headless=True))


def test_the_dev_server_runs_each_task_queue_as_one_partition(tmp_path: Path) -> None:
    args = dev_server_args("temporal", DevServerOptions(db_filename=tmp_path / "t.db"))
    settings = {args[i + 1] for i, arg in enumerate(args) if arg == "--dynamic-config-value"}
    assert {"matching.numTaskqueueReadPartitions=1", "matching.numTaskqueueWritePartitions=1"} <= settings
    assert ["--sqlite-pragma", "journal_mode=wal"] == args[args.index("journal_mode=wal") - 1 :][:2]


async def test_dev_server_keeps_a_workflow_across_restart(tmp_path: Path) -> None:
    options = DevServerOptions(
        port=free_port(), headless=True, db_filename=tmp_path / "temporal.db", log_file=tmp_path / "log"
    )
    workflow_id = f"probe-{uuid.uuid4()}"

    server = await start_dev_server(options)
    try:
        client = await Client.connect(server.address)
        await client.start_workflow(ProbeWorkflow.run, id=workflow_id, task_queue=new_task_queue())
    finally:
        await server.astop()
    assert server.process.returncode is not None

    # Same --search-attribute flags against a db where they already exist: must start fine.
    server = await start_dev_server(options)
    try:
        client = await Client.connect(server.address)
        described = await client.get_workflow_handle(workflow_id).describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
        assert await register_search_attributes(client, "default") == []
    finally:
        await server.astop()


async def test_run_dev_stack_brings_everything_up_and_down_and_keeps_data(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        database_url=None,
        data_dir=tmp_path / "oppflow",
        temporal_port=free_port(),
        temporal_ui_port=free_port(),
        api_port=free_port(),
    )
    workflow_id = f"probe-{uuid.uuid4()}"
    seen: dict[str, object] = {}

    async def first_worker(client: Client, database_url: str) -> None:
        listing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        seen["stage_type"] = listing.custom_attributes["OpportunityStage"]
        connection = await asyncpg.connect(database_url)
        try:
            seen["revision"] = await connection.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await connection.close()
        seen["database_url"] = database_url
        await client.start_workflow(ProbeWorkflow.run, id=workflow_id, task_queue=new_task_queue())
        stop.set()
        await asyncio.Event().wait()

    async def api(client: Client, database_url: str) -> None:
        await asyncio.Event().wait()

    lines: list[str] = []
    stop = asyncio.Event()
    await run_dev_stack(settings, start_worker=first_worker, start_api=api, stop=stop, print_fn=lines.append)

    assert seen["stage_type"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    assert seen["revision"] == head_revision()
    database_url = str(seen["database_url"])
    assert database_url.startswith("postgresql://postgres:@/oppflow?host=")
    banner = "\n".join(lines)
    assert f"http://localhost:{settings.temporal_ui_port}" in banner
    assert f"http://localhost:{settings.api_port}" in banner
    assert database_url in banner
    assert port_is_free(settings.temporal_port)
    assert not (settings.data_dir / "postgres" / "postmaster.pid").exists()

    async def second_worker(client: Client, database_url: str) -> None:
        seen["status"] = (await client.get_workflow_handle(workflow_id).describe()).status
        stop.set()
        await asyncio.Event().wait()

    stop = asyncio.Event()
    await run_dev_stack(settings, start_worker=second_worker, stop=stop, print_fn=lines.append)
    assert seen["status"] == WorkflowExecutionStatus.RUNNING


async def test_time_skipping_server_knows_no_custom_search_attributes(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    """Documents a limit: workflows that set the contract's search attributes need `temporal_env`."""
    stage = SearchAttributeKey.for_keyword("OpportunityStage")
    with pytest.raises(RPCError, match="search attribute OpportunityStage is not defined"):
        await time_skipping_env.client.start_workflow(
            ProbeWorkflow.run,
            id=f"probe-{uuid.uuid4()}",
            task_queue=new_task_queue(),
            search_attributes=TypedSearchAttributes([SearchAttributePair(stage, "Prospecting")]),
        )
