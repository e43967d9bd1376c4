"""Import checkpoints: one row per run of an export (file + mapping) and one per deal it
imported, so an interrupted `oppflow import` continues where it stopped.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE import_runs (
    id           text PRIMARY KEY,   -- file sha256 prefix + mapping digest prefix
    file_name    text NOT NULL,
    file_sha256  text NOT NULL,
    source       text NOT NULL,      -- salesforce, hubspot or the mapping file
    rows_total   integer NOT NULL,
    started_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    summary      jsonb
);

CREATE TABLE import_rows (
    run_id          text NOT NULL REFERENCES import_runs (id) ON DELETE CASCADE,
    opportunity_id  text NOT NULL,
    line            integer NOT NULL,
    outcome         text NOT NULL,   -- created | existing
    done_at         timestamptz NOT NULL,
    PRIMARY KEY (run_id, opportunity_id)
);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS import_rows")
    op.execute("DROP TABLE IF EXISTS import_runs")
