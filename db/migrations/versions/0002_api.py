"""HTTP API bookkeeping: answers kept per Idempotency-Key, and escalation action links
already used (each link works once).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE api_idempotency (
    key           text PRIMARY KEY,
    fingerprint   text NOT NULL,
    actor_id      text NOT NULL,
    method        text NOT NULL,
    path          text NOT NULL,
    status_code   integer,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);
CREATE INDEX api_idempotency_created_idx ON api_idempotency (created_at);

CREATE TABLE action_link_uses (
    nonce            text PRIMARY KEY,
    action           text NOT NULL,
    opportunity_id   text NOT NULL,
    stage_entry_seq  integer NOT NULL,
    level            integer NOT NULL,
    recipient_id     text NOT NULL,
    used_at          timestamptz NOT NULL DEFAULT now(),
    result           jsonb NOT NULL DEFAULT '{}'
);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS action_link_uses")
    op.execute("DROP TABLE IF EXISTS api_idempotency")
