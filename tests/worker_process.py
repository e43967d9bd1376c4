"""Run `oppflow` commands as separate processes configured only by environment variables, as
a container would run them (no `.env`, no inherited OPPFLOW_*/TEMPORAL_* settings)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

OWN_PREFIXES = ("OPPFLOW_", "TEMPORAL_", "DATABASE_URL", "OTEL_")


def oppflow_binary() -> str:
    return str(Path(sys.executable).parent / "oppflow")


def temporal_address(client: Client) -> str:
    return client.service_client.config.target_host


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(settings)
    return env


async def run_oppflow(
    args: list[str], env: Mapping[str, str], cwd: Path, within: float = 60
) -> tuple[int, str]:
    """Run one `oppflow` command to its end; answer its exit code and combined output."""
    process = await asyncio.create_subprocess_exec(
        oppflow_binary(),
        *args,
        env=dict(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), within)
    return process.returncode or 0, output.decode()


@dataclass(eq=False)
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def identity(self) -> str:
        # The SDK's default worker identity is "<pid>@<hostname>".
        return f"{self.process.pid}@"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def worker_process(env: Mapping[str, str], cwd: Path, name: str = "worker") -> Iterator[WorkerProcess]:
    log_path = cwd / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [oppflow_binary(), "worker"],
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    worker = WorkerProcess(process, log_path)
    try:
        yield worker
    finally:
        worker.stop(signal.SIGKILL)


async def wait_for_pollers(client: Client, task_queue: str, count: int, within: float = 30) -> list[str]:
    """Until `count` distinct worker identities poll the queue's workflow tasks; answer them."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    deadline = asyncio.get_running_loop().time() + within
    identities: list[str] = []
    while asyncio.get_running_loop().time() < deadline:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        identities = sorted({poller.identity for poller in response.pollers})
        if len(identities) >= count:
            return identities
        await asyncio.sleep(0.3)
    raise AssertionError(f"{count} workers expected on {task_queue}, pollers seen: {identities}")
