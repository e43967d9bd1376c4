"""One worker in its own process, so its memory (RSS) is its own and a restart is real.

``python -m bench.worker_process --kind oppflow|baseline ...`` writes its ready file once
it polls, exits non-zero if the worker fails, and stops gracefully on SIGTERM.
``WorkerProcess`` starts and watches one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
READY = "ready"


@dataclass
class WorkerSpec:
    kind: str  # "oppflow" or "baseline"
    address: str
    database_url: str
    task_queue: str
    max_cached_workflows: int = 0  # 0: the production default (Settings)
    experiment: str | None = None
    metrics_port: int = 0

    def argv(self) -> list[str]:
        args = [sys.executable, "-X", "faulthandler", "-m", "bench.worker_process", "--kind", self.kind]
        args += ["--address", self.address, "--database-url", self.database_url]
        args += ["--task-queue", self.task_queue, "--max-cached", str(self.max_cached_workflows)]
        if self.experiment:
            args += ["--experiment", self.experiment]
        if self.metrics_port:
            args += ["--metrics-port", str(self.metrics_port)]
        return args


class WorkerProcess:
    def __init__(self, spec: WorkerSpec, log_file: Path) -> None:
        self.spec = spec
        self.log_file = log_file
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60.0) -> float:  # noqa: ASYNC109
        """Start and wait until it polls; answer the seconds that took."""
        began = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env.setdefault("OPPFLOW_LOG_LEVEL", "WARNING")
        if "bytecode-cache" in (self.spec.experiment or ""):
            # Compiled modules kept (in the work dir) instead of compiled again on every import.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.log_file.parent / "pycache")
        ready = self.log_file.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        # Output goes to a file, never to an undrained pipe: the SDK core writes its own log
        # lines to stdout, and a full pipe blocks the core thread that writes (the worker stalls).
        with open(self.log_file, "ab") as log:  # noqa: ASYNC230 (a local file, opened once)
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.argv(), "--ready-file", str(ready), cwd=ROOT, env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"{self.spec.kind} worker did not start; see {self.log_file}")
            await asyncio.sleep(0.05)
        return time.perf_counter() - began

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_bytes(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    async def stop(self, grace: float = 20.0) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def _serve(args: argparse.Namespace) -> None:
    from temporalio.client import Client

    from db.pool import create_pool
    from starter.codec import plain_data_converter
    from starter.settings import Settings

    if args.metrics_port:
        # The SDK's Prometheus metrics (task slots, poll counts, latencies) for profiling.
        from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

        prometheus = PrometheusConfig(bind_address=f"127.0.0.1:{args.metrics_port}")
        Runtime.set_default(Runtime(telemetry=TelemetryConfig(metrics=prometheus)))
    client = await Client.connect(args.address, data_converter=plain_data_converter)
    settings = Settings(task_queue=args.task_queue, database_url=args.database_url)
    pool = await create_pool(args.database_url, settings.db_pool_min, settings.db_pool_max)
    options = {"max_cached_workflows": args.max_cached} if args.max_cached else {}
    if args.kind == "oppflow":
        from bench.experiments import oppflow_worker

        worker, background = oppflow_worker(client, pool, settings, args.experiment, **options)
    else:
        from bench.baseline import build_baseline_worker

        worker, background = build_baseline_worker(client, pool, args.task_queue, **options), None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    running = asyncio.create_task(worker.run())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.to_thread(Path(args.ready_file).write_text, READY)
    try:
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            # A worker that failed must not look alive: report it and exit non-zero.
            print(f"worker stopped: {running.exception()!r}", file=sys.stderr, flush=True)
            raise SystemExit(1)
        await worker.shutdown()
        await running
    finally:
        if background is not None:
            background.cancel()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_process")
    parser.add_argument("--kind", choices=["oppflow", "baseline"], required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--max-cached", type=int, default=1000)
    parser.add_argument("--experiment", default=None)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--metrics-port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
