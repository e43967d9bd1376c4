"""Alembic environment: runs on the connection `db.migrate.upgrade` hands over, or, for the
alembic CLI, on DATABASE_URL."""

import os

import sqlalchemy as sa
from alembic import context

from db.urls import sqlalchemy_url


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(sqlalchemy_url(os.environ["DATABASE_URL"]), poolclass=sa.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("oppflow migrations run online only: set DATABASE_URL")
run_online()
