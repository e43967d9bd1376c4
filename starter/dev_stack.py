"""`oppflow dev`: Postgres, migrations, the Temporal dev server with its UI, search attributes,
then the worker and the HTTP API, until Ctrl-C or SIGTERM. Data stays under data_dir."""

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager

from temporalio.client import Client

from db.migrate import upgrade
from starter.codec import data_converter
from starter.ports import check_ports_free
from starter.postgres import start_database
from starter.settings import Settings
from starter.temporal_server import DevServer, DevServerOptions, start_dev_server, stop_orphan
from starter.temporal_setup import register_search_attributes

# Called with the connected client and the database URL; expected to run until cancelled.
Service = Callable[[Client, str], Awaitable[None]]

NAMESPACE = "default"


def dev_server_options(settings: Settings) -> DevServerOptions:
    data_dir = settings.data_dir.resolve()
    return DevServerOptions(
        port=settings.temporal_port,
        ui_port=settings.temporal_ui_port,
        namespace=NAMESPACE,
        db_filename=data_dir / "temporal.db",
        log_file=data_dir / "temporal.log",
        pid_file=data_dir / "temporal.pid",
    )


def banner(settings: Settings, server: DevServer, database_url: str, *, api: bool) -> str:
    lines = [
        "oppflow dev is up",
        f"  Temporal UI   {server.ui_url}",
        f"  Temporal      {server.address} (namespace {NAMESPACE}, task queue {settings.task_queue})",
    ]
    if api:
        lines.append(f"  HTTP API      http://localhost:{settings.api_port}")
    lines += [
        f"  DATABASE_URL  {database_url}",
        f"  data          {settings.data_dir.resolve()}",
        "Ctrl-C to stop.",
    ]
    return "\n".join(lines)


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread, or Windows: rely on the `stop` event / KeyboardInterrupt
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run_dev_stack(
    settings: Settings,
    *,
    start_worker: Service | None = None,
    start_api: Service | None = None,
    stop: asyncio.Event | None = None,
    print_fn: Callable[[str], None] = print,
) -> None:
    """Run until SIGINT/SIGTERM (or `stop` is set, or a service fails), then stop the services,
    the Temporal dev server and the embedded Postgres, in that order."""
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        async with AsyncExitStack() as stack:
            main = asyncio.create_task(_up_and_serve(settings, stack, start_worker, start_api, print_fn))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if main.done():
                main.result()
                return
            print_fn("stopping oppflow dev ...")
            main.cancel()
            try:
                await main
            except asyncio.CancelledError:
                pass


async def _up_and_serve(
    settings: Settings,
    stack: AsyncExitStack,
    start_worker: Service | None,
    start_api: Service | None,
    print_fn: Callable[[str], None],
) -> None:
    options = dev_server_options(settings)
    settings.data_dir.resolve().mkdir(parents=True, exist_ok=True)
    if options.pid_file is not None:
        await asyncio.to_thread(stop_orphan, options.pid_file)
    ports = {
        options.port: "stop the other Temporal server or set OPPFLOW_TEMPORAL_PORT",
        options.ui_port: "stop whatever serves it or set OPPFLOW_TEMPORAL_UI_PORT",
    }
    if start_api is not None:
        ports[settings.api_port] = "stop whatever serves it or set OPPFLOW_API_PORT"
    check_ports_free(ports)

    database = await asyncio.to_thread(start_database, settings)
    stack.push_async_callback(asyncio.to_thread, database.stop)
    await asyncio.to_thread(upgrade, database.url)

    server = await start_dev_server(options)
    stack.push_async_callback(server.astop)
    # data_converter() encrypts payloads when OPPFLOW_ENCRYPTION_KEYS is set (off by default).
    client = await Client.connect(server.address, namespace=NAMESPACE, data_converter=data_converter())
    await register_search_attributes(client, NAMESPACE)

    print_fn(banner(settings, server, database.url, api=start_api is not None))
    services = [service(client, database.url) for service in (start_worker, start_api) if service]
    await run_until_first_failure(services)


async def run_until_first_failure(coroutines: list[Awaitable[None]]) -> None:
    """Run all until cancelled; when one fails, cancel the others and raise its own exception
    (not an ExceptionGroup, so the CLI can print one line)."""
    if not coroutines:
        await asyncio.Event().wait()
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
