"""Session-wide real infrastructure: PostgreSQL (embedded unless DATABASE_URL is set), an asyncpg
pool, a Temporal dev server and the time-skipping test server. Nothing here is mocked."""

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from db.migrate import upgrade
from db.pool import create_pool
from starter.postgres import start_embedded_postgres
from starter.temporal_server import temporal_binary
from tests.helpers import start_dev_server
from tests.reliability.ledger import REPORT_FILE_ENV


def pytest_configure(config: pytest.Config) -> None:
    # The fault tests append their figures here; parallel test processes inherit the path.
    if "PYTEST_XDIST_WORKER" not in os.environ:
        handle, path = tempfile.mkstemp(prefix="oppflow-reliability-", suffix=".jsonl")
        os.close(handle)
        os.environ[REPORT_FILE_ENV] = path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    path = os.environ.get(REPORT_FILE_ENV)
    if "PYTEST_XDIST_WORKER" in os.environ or not path or not os.path.exists(path):
        return
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    os.unlink(path)
    if lines:
        terminalreporter.section("reliability figures")
        for line in lines:
            terminalreporter.write_line(line)


# Makes workflows suggest continue-as-new after 60 events, so tests exercise it.
DEV_SERVER_EXTRA_ARGS = ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=60"]


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    if external:
        upgrade(external)
        yield external
        return
    # Not under pytest's basetemp: concurrent pytest runs prune each other's old basetemps.
    database = start_embedded_postgres(Path(tempfile.mkdtemp(prefix="oppflow-pg-")) / "pgdata")
    try:
        upgrade(database.url)
        yield database.url
    finally:
        database.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db_pool(postgres_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(postgres_url, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server(DEV_SERVER_EXTRA_ARGS)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Java test server: skips time, but knows no custom search attributes (it rejects
    them and has no operator service), so workflows that set them cannot run here."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=temporal_binary("temporal-test-server"),
        test_server_startup_timeout=timedelta(seconds=30),
    )
    try:
        yield env
    finally:
        await env.shutdown()
