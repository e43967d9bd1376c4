"""Serving the API with uvicorn inside an asyncio program (``oppflow dev``, ``oppflow api``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from temporalio.client import Client

from api.app import create_app
from db.pool import create_pool
from starter.client import OpportunityClient
from starter.settings import DEV_JWT_SECRET, Settings, get_settings

log = logging.getLogger("oppflow.api")


def public_url(settings: Settings) -> str:
    """Where people reach the API (for action links in notifications)."""
    return settings.api_public_url()


def api_host(settings: Settings) -> str:
    return settings.api_host


class _EmbeddedServer(uvicorn.Server):
    """Leaves SIGINT/SIGTERM to the program that embeds it; stops when its task is cancelled."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: FastAPI, port: int, host: str = "127.0.0.1") -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise
    if not server.started:
        raise OSError(f"the HTTP API could not listen on {host}:{port}")


async def serve_api(client: Client, database_url: str) -> None:
    """Run the HTTP API on ``settings.api_port`` until cancelled."""
    settings = get_settings()
    if settings.jwt_secret == DEV_JWT_SECRET:
        log.warning("OPPFLOW_JWT_SECRET is not set: tokens are signed with the public dev secret")
    pool = await create_pool(database_url, settings.db_pool_min, settings.db_pool_max)
    try:
        opportunities = OpportunityClient(client, pool, settings.task_queue)
        app = create_app(opportunities, jwt_secret=settings.jwt_secret, public_url=public_url(settings))
        await serve(app, settings.api_port, api_host(settings))
    finally:
        await pool.close()
