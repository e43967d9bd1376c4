"""While Postgres or Temporal is down the API answers 503 with Retry-After, and it serves
again once they are back, without a restart. Real servers are stopped and started."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth import mint_token
from db.migrate import upgrade
from db.pool import create_pool
from starter import processes
from starter.client import OpportunityClient, workflow_id
from starter.org_chart import Person, import_people
from starter.ports import free_port
from starter.postgres import start_embedded_postgres
from starter.temporal_server import DevServerOptions, start_dev_server
from tests.helpers import new_task_queue

SECRET = "outage-test-secret-long-enough-for-hs256-signing"
BASE = "http://api.test"


def bearer(user: str, roles: list[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, user, roles)}"}


async def until_status(
    expected: int, request: Callable[[], Awaitable[httpx.Response]], wait: float = 30.0
) -> httpx.Response:
    deadline = time.monotonic() + wait
    while True:
        response = await request()
        if response.status_code == expected or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.3)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Outside pytest's basetemp, which concurrent pytest sessions on one machine prune."""
    with tempfile.TemporaryDirectory(prefix="oppflow-api-outage-") as path:
        yield Path(path)


async def test_postgres_down_answers_503_then_the_api_recovers(
    workdir: Path, temporal_env: WorkflowEnvironment
) -> None:
    pgdata = workdir / "pgdata"
    database = await asyncio.to_thread(start_embedded_postgres, pgdata)
    try:
        await asyncio.to_thread(upgrade, database.url)
        pool = await create_pool(database.url, 1, 4)
        rep = f"rep-{uuid.uuid4().hex[:6]}"
        await import_people(pool, [Person(id=rep, name="Rita Rep", email="rita@example.com", roles=["rep"])])
        await processes.ensure_default(pool)
        client = OpportunityClient(temporal_env.client, pool, new_task_queue())
        api = create_app(client, jwt_secret=SECRET, public_url=BASE)
        headers = bearer(rep, ["rep"])
        key = {"Idempotency-Key": f"create-{uuid.uuid4().hex}"}
        body = {"name": "Initech", "account": "Initech", "amount": "9000"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE) as http:
            assert (await http.get("/opportunities", headers=headers)).status_code == 200

            await asyncio.to_thread(database.stop)
            down = await http.get("/opportunities", headers=headers)
            assert down.status_code == 503, down.text
            assert down.json()["rule"] == "postgres_unavailable"
            assert int(down.headers["Retry-After"]) > 0
            create_down = await http.post("/opportunities", json=body, headers={**headers, **key})
            assert create_down.status_code == 503
            health = await http.get("/health")
            assert health.status_code == 503 and health.json()["postgres"].startswith("unavailable")

            database = await asyncio.to_thread(start_embedded_postgres, pgdata)
            back = await until_status(200, lambda: http.get("/opportunities", headers=headers))
            assert back.status_code == 200, back.text
            created = await http.post("/opportunities", json=body, headers={**headers, **key})
            assert created.status_code == 201, created.text
            assert (await http.get("/health")).status_code == 200
        await temporal_env.client.get_workflow_handle(
            workflow_id(created.json()["opportunity_id"])
        ).terminate()
        await pool.close()
    finally:
        await asyncio.to_thread(database.stop)


async def test_temporal_unreachable_answers_503_then_the_api_recovers(
    db_pool: asyncpg.Pool, workdir: Path
) -> None:
    port = free_port()
    temporal = await Client.connect(f"localhost:{port}", lazy=True, data_converter=pydantic_data_converter)
    api = create_app(
        OpportunityClient(temporal, db_pool, new_task_queue()), jwt_secret=SECRET, public_url=BASE
    )
    headers = bearer("mgr-outage", ["manager"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE) as http:
        for method, path, body in [
            ("GET", "/opportunities/any-deal", None),
            ("POST", "/opportunities/any-deal/stage", {"stage": "Qualification"}),
            ("POST", "/opportunities/any-deal/activities", {"kind": "call"}),
        ]:
            response = await http.request(method, path, json=body, headers=headers)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["rule"] == "temporal_unavailable" and "Retry-After" in response.headers
        assert (await http.get("/opportunities", headers=headers)).status_code == 200
        assert (await http.get("/health")).json()["temporal"].startswith("unavailable")

        server = await start_dev_server(
            DevServerOptions(port=port, headless=True, log_file=workdir / "temporal.log")
        )
        try:
            back = await until_status(404, lambda: http.get("/opportunities/any-deal", headers=headers))
            assert (back.status_code, back.json()["rule"]) == (404, "unknown_opportunity")
            assert (await http.get("/health")).status_code == 200
        finally:
            await server.astop()
