"""Published sales processes: immutable, numbered versions in Postgres."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from sales.process import SalesProcess, default_process, parse_process_yaml


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    created: bool
    published_at: datetime
    stages: int


def checksum(process: SalesProcess) -> str:
    body = process.model_dump(mode="json", exclude={"version"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


async def publish(pool: asyncpg.Pool, process: SalesProcess, published_by: str | None = None) -> Published:
    """Publish a new version; publishing an identical definition again returns its version."""
    digest = checksum(process)
    async with pool.acquire(timeout=5) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"process:{process.name}")
        existing = await conn.fetchrow(
            "SELECT version, published_at FROM sales_processes WHERE name = $1 AND checksum = $2",
            process.name,
            digest,
        )
        if existing:
            return Published(
                process.name, existing["version"], False, existing["published_at"], len(process.stages)
            )
        version = await conn.fetchval(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM sales_processes WHERE name = $1", process.name
        )
        pinned = process.model_copy(update={"version": version})
        published_at = await conn.fetchval(
            "INSERT INTO sales_processes (name, version, definition, checksum, published_by) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING published_at",
            process.name,
            version,
            pinned.model_dump(mode="json"),
            digest,
            published_by,
        )
    return Published(process.name, version, True, published_at, len(process.stages))


async def publish_file(pool: asyncpg.Pool, path: str, published_by: str | None = None) -> Published:
    text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
    process = parse_process_yaml(text, source=path)
    return await publish(pool, process, published_by)


async def ensure_default(pool: asyncpg.Pool) -> Published:
    return await publish(pool, default_process(), "oppflow")


# Published versions never change (the checksum is part of the key all the same, so two
# databases with different definitions under one version number are never confused).
# Parsing a definition is the costly part of creating a deal; each one is parsed once.
_parsed: dict[tuple[str, int, str], SalesProcess] = {}


async def load(pool: asyncpg.Pool, row: Mapping[str, Any] | None) -> SalesProcess | None:
    """The parsed version a row of ``(name, version, checksum)`` names (None for no row)."""
    if row is None:
        return None
    key = (row["name"], row["version"], row["checksum"])
    if key not in _parsed:
        definition = await pool.fetchval(
            "SELECT definition FROM sales_processes WHERE name = $1 AND version = $2",
            row["name"],
            row["version"],
        )
        _parsed[key] = SalesProcess.model_validate(definition)
    return _parsed[key]


async def latest(pool: asyncpg.Pool, name: str) -> SalesProcess | None:
    row = await pool.fetchrow(
        "SELECT name, version, checksum FROM sales_processes WHERE name = $1 ORDER BY version DESC LIMIT 1",
        name,
    )
    return await load(pool, row)


async def get_version(pool: asyncpg.Pool, name: str, version: int) -> SalesProcess | None:
    row = await pool.fetchrow(
        "SELECT name, version, checksum FROM sales_processes WHERE name = $1 AND version = $2", name, version
    )
    return await load(pool, row)


async def list_versions(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT name, version, published_at, published_by, "
        "jsonb_array_length(definition->'stages') AS stages FROM sales_processes ORDER BY name, version"
    )
