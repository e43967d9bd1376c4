"""Contract tables: users, opportunities, stage_history, escalations; plus the audit
tables behind them (field history, activities, rejected commands, hand-offs, webhooks).

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE users (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    manager_id  text,
    roles       text[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_manager_idx ON users (manager_id);

CREATE TABLE sales_processes (
    name          text NOT NULL,
    version       integer NOT NULL,
    definition    jsonb NOT NULL,
    checksum      text NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    published_by  text,
    PRIMARY KEY (name, version),
    UNIQUE (name, checksum)
);

CREATE TABLE opportunities (
    id                 text PRIMARY KEY,
    name               text NOT NULL,
    account            text NOT NULL,
    owner_id           text NOT NULL,
    stage              text NOT NULL,
    amount             numeric(16, 2),
    close_date         date,
    probability        integer NOT NULL,
    forecast_category  text NOT NULL,
    is_closed          boolean NOT NULL,
    is_won             boolean NOT NULL,
    stage_entered_at   timestamptz NOT NULL,
    stage_entry_seq    integer NOT NULL,
    escalation_level   integer NOT NULL DEFAULT 0,
    clock_paused       boolean NOT NULL DEFAULT false,
    next_escalation_at timestamptz,
    process_name       text NOT NULL,
    process_version    integer NOT NULL,
    fields             jsonb NOT NULL DEFAULT '{}',
    team               jsonb NOT NULL DEFAULT '[]',
    last_activity_at   timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    state_version      bigint NOT NULL DEFAULT 0
);
CREATE INDEX opportunities_stage_idx ON opportunities (stage);
CREATE INDEX opportunities_owner_idx ON opportunities (owner_id);

CREATE TABLE stage_history (
    id                 bigserial PRIMARY KEY,
    opportunity_id     text NOT NULL,
    request_id         text NOT NULL,
    from_stage         text,
    to_stage           text NOT NULL,
    actor_id           text NOT NULL,
    reason             text,
    changed_at         timestamptz NOT NULL,
    stage_entry_seq    integer NOT NULL,
    amount             numeric(16, 2),
    probability        integer,
    forecast_category  text,
    close_date         date,
    UNIQUE (opportunity_id, request_id)
);
CREATE INDEX stage_history_opp_idx ON stage_history (opportunity_id, changed_at);

CREATE TABLE field_history (
    id              bigserial PRIMARY KEY,
    opportunity_id  text NOT NULL,
    request_id      text NOT NULL,
    field           text NOT NULL,
    old_value       jsonb,
    new_value       jsonb,
    actor_id        text NOT NULL,
    changed_at      timestamptz NOT NULL,
    UNIQUE (opportunity_id, request_id, field)
);

CREATE TABLE opportunity_events (
    id              bigserial PRIMARY KEY,
    opportunity_id  text NOT NULL,
    request_id      text NOT NULL,
    kind            text NOT NULL,
    actor_id        text NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}',
    happened_at     timestamptz NOT NULL,
    UNIQUE (opportunity_id, request_id)
);

CREATE TABLE escalations (
    id               bigserial PRIMARY KEY,
    opportunity_id   text NOT NULL,
    subject          text NOT NULL DEFAULT 'stage',
    stage            text NOT NULL,
    stage_entry_seq  integer NOT NULL,
    level            integer NOT NULL,
    notify           text NOT NULL,
    recipient_id     text,
    due_at           timestamptz NOT NULL,
    fired_at         timestamptz NOT NULL,
    status           text NOT NULL,
    webhook_id       text NOT NULL,
    note             text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- subject is 'stage' for the deal's ladder, or a hand-off id for a hand-off's ladder
    UNIQUE (opportunity_id, subject, stage_entry_seq, level)
);
CREATE INDEX escalations_recipient_idx ON escalations (recipient_id, status);

CREATE TABLE activities (
    id              bigserial PRIMARY KEY,
    opportunity_id  text NOT NULL,
    request_id      text NOT NULL,
    kind            text NOT NULL,
    subject         text,
    outcome         text,
    occurred_at     timestamptz NOT NULL,
    actor_id        text NOT NULL,
    data            jsonb NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL,
    UNIQUE (opportunity_id, request_id)
);

CREATE TABLE rejected_commands (
    id              bigserial PRIMARY KEY,
    opportunity_id  text NOT NULL,
    request_id      text NOT NULL,
    command         text NOT NULL,
    actor_id        text,
    actor_role      text,
    rule            text NOT NULL,
    message         text NOT NULL,
    missing         text[] NOT NULL DEFAULT '{}',
    rejected_at     timestamptz NOT NULL,
    source          text NOT NULL,
    UNIQUE (opportunity_id, request_id, command, rule)
);

CREATE TABLE handoffs (
    id              text PRIMARY KEY,
    opportunity_id  text NOT NULL,
    kind            text NOT NULL,
    title           text NOT NULL,
    team_role       text NOT NULL,
    assignee_id     text,
    stage           text NOT NULL,
    status          text NOT NULL,
    opened_at       timestamptz NOT NULL,
    due_at          timestamptz,
    finished_at     timestamptz,
    note            text
);

CREATE TABLE webhook_deliveries (
    webhook_id    text NOT NULL,
    endpoint      text NOT NULL,
    status        text NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    last_status   integer,
    last_error    text,
    delivered_at  timestamptz,
    PRIMARY KEY (webhook_id, endpoint)
);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    for table in (
        "webhook_deliveries",
        "handoffs",
        "rejected_commands",
        "activities",
        "escalations",
        "opportunity_events",
        "field_history",
        "stage_history",
        "opportunities",
        "sales_processes",
        "users",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
