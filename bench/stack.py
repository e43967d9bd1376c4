"""The benchmark's own stack: a Temporal dev server with the same settings as
``oppflow dev`` (SQLite file in WAL mode, synchronous=normal) on free ports, an embedded
Postgres with oppflow's migrations, an org chart, and a worker process per kind."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from temporalio.client import Client

from bench.baseline import CREATE_TABLES
from bench.worker_process import WorkerProcess, WorkerSpec
from db.migrate import upgrade
from db.pool import create_pool
from sales.messages import Actor
from starter import processes
from starter.codec import plain_data_converter
from starter.org_chart import Person, import_people
from starter.ports import free_port
from starter.postgres import start_embedded_postgres
from starter.temporal_server import DevServerOptions, start_dev_server

OWNERS = 20
MANAGER = "bench-mgr"


def owner_id(index: int) -> str:
    return f"bench-rep-{index % OWNERS}"


def org_chart() -> list[Person]:
    people = [
        Person(id="bench-vp", name="Bench VP", email="vp@bench.example", roles=["manager"]),
        Person(
            id=MANAGER,
            name="Bench Manager",
            email="mgr@bench.example",
            manager_id="bench-vp",
            roles=["manager"],
        ),
    ]
    for i in range(OWNERS):
        people.append(
            Person(
                id=owner_id(i),
                name=f"Bench Rep {i}",
                email=f"rep{i}@bench.example",
                manager_id=MANAGER,
                roles=["rep"],
            )
        )
    return people


def rep(index: int) -> Actor:
    return Actor(id=owner_id(index), role="rep")


@dataclass
class Stack:
    workdir: Path
    address: str
    database_url: str
    client: Client
    pool: asyncpg.Pool
    workers: list[WorkerProcess] = field(default_factory=list)
    keep_files: bool = False  # set when a scenario failed: its logs are worth reading

    async def start_worker(
        self,
        kind: str,
        task_queue: str,
        *,
        max_cached: int = 0,
        experiment: str | None = None,
        metrics_port: int = 0,
    ) -> WorkerProcess:
        spec = WorkerSpec(
            kind, self.address, self.database_url, task_queue, max_cached, experiment, metrics_port
        )
        process = WorkerProcess(spec, self.workdir / f"worker-{kind}.log")
        await process.start()
        self.workers.append(process)
        return process

    async def stop_worker(self, process: WorkerProcess) -> None:
        await process.stop()
        if process in self.workers:
            self.workers.remove(process)


@asynccontextmanager
async def bench_stack(keep: bool = False) -> AsyncIterator[Stack]:
    """Everything in a fresh temporary directory, removed afterwards unless ``keep``."""
    workdir = Path(tempfile.mkdtemp(prefix="oppflow-bench-"))
    made: list[Stack] = []

    def remove_workdir() -> None:
        if not (keep or any(stack.keep_files for stack in made)):
            shutil.rmtree(workdir, ignore_errors=True)

    async with AsyncExitStack() as exits:
        exits.callback(remove_workdir)
        database = await asyncio.to_thread(start_embedded_postgres, workdir / "pgdata")
        exits.push_async_callback(asyncio.to_thread, database.stop)
        await asyncio.to_thread(upgrade, database.url)

        options = DevServerOptions(
            port=free_port(),
            db_filename=workdir / "temporal.db",
            headless=True,
            log_file=workdir / "temporal.log",
        )
        server = await start_dev_server(options)
        exits.push_async_callback(server.astop)

        client = await Client.connect(server.address, data_converter=plain_data_converter)
        pool = await create_pool(database.url, min_size=2, max_size=20)
        exits.push_async_callback(pool.close)
        await pool.execute(CREATE_TABLES)
        await import_people(pool, org_chart())
        await processes.ensure_default(pool)  # as `oppflow dev` and `oppflow migrate` do

        stack = Stack(workdir, server.address, database.url, client, pool)
        made.append(stack)
        try:
            yield stack
        finally:
            for process in list(stack.workers):
                await stack.stop_worker(process)
