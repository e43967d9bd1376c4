"""What the workflow hands to activities to write: rows keyed on business keys.

Every row carries the key that makes its write idempotent: ``(opportunity_id,
request_id)`` for history, ``(opportunity_id, subject, stage_entry_seq, level)`` for
escalations, ``state_version`` for the opportunity snapshot (an older snapshot never
overwrites a newer one).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from sales.state import Handoff, OpportunityState


class OpportunityRow(BaseModel):
    id: str
    name: str
    account: str
    owner_id: str
    stage: str
    amount: Decimal | None
    close_date: date | None
    probability: int
    forecast_category: str
    is_closed: bool
    is_won: bool
    stage_entered_at: datetime
    stage_entry_seq: int
    escalation_level: int
    clock_paused: bool
    next_escalation_at: datetime | None
    process_name: str
    process_version: int
    fields: dict[str, Any]
    team: list[dict[str, Any]]
    last_activity_at: datetime | None
    created_at: datetime
    updated_at: datetime
    state_version: int

    @classmethod
    def of(cls, state: OpportunityState, version: int) -> OpportunityRow:
        return cls(
            id=state.opportunity_id,
            name=state.name,
            account=state.account,
            owner_id=state.owner_id,
            stage=state.stage,
            amount=state.amount,
            close_date=state.close_date,
            probability=state.probability,
            forecast_category=state.forecast_category,
            is_closed=state.is_closed,
            is_won=state.is_won,
            stage_entered_at=state.stage_entered_at,
            stage_entry_seq=state.stage_entry_seq,
            escalation_level=state.clock.level,
            clock_paused=state.clock.paused_since is not None,
            next_escalation_at=state.clock.next_level_due_at,
            process_name=state.process.name,
            process_version=state.process.version,
            fields=state.fields,
            team=[m.model_dump(mode="json") for m in state.team],
            last_activity_at=state.last_activity_at,
            created_at=state.created_at,
            updated_at=state.updated_at,
            state_version=version,
        )


class StageChangeRow(BaseModel):
    from_stage: str | None
    to_stage: str
    reason: str | None
    stage_entry_seq: int
    amount: Decimal | None
    probability: int
    forecast_category: str
    close_date: date | None


class FieldChangeRow(BaseModel):
    field: str
    old_value: Any
    new_value: Any


class ActivityRow(BaseModel):
    kind: str
    subject: str | None
    outcome: str | None
    occurred_at: datetime
    data: dict[str, Any]


class EscalationStatusChange(BaseModel):
    """Moves this stage entry's escalation rows to a new status (acknowledged, snoozed...)."""

    stage_entry_seq: int
    status: str
    note: str | None = None


class Change(BaseModel):
    """One applied command, as rows; written in one transaction with its batch."""

    request_id: str
    actor_id: str
    at: datetime
    kind: str
    stage_change: StageChangeRow | None = None
    field_changes: list[FieldChangeRow] = Field(default_factory=list)
    activity: ActivityRow | None = None
    escalation_status: EscalationStatusChange | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class PersistBatch(BaseModel):
    opportunity: OpportunityRow
    changes: list[Change]
    handoffs: list[Handoff] = Field(default_factory=list)


class RecordEscalation(BaseModel):
    opportunity_id: str
    opportunity_name: str
    account: str
    subject: str = "stage"
    stage: str
    stage_entry_seq: int
    stage_entered_at: datetime
    level: int
    notify: str
    owner_id: str
    assignee_id: str | None = None
    due_at: datetime
    fired_at: datetime
    superseded: list[int] = Field(default_factory=list)
    amount: Decimal | None = None
    extra_webhooks: list[str] = Field(default_factory=list)


class EscalatedBatch(BaseModel):
    """A fired escalation level: the deal's queued rows and the escalation row, written together."""

    batch: PersistBatch
    escalation: RecordEscalation


class EscalationRecorded(BaseModel):
    recipient_id: str | None
    webhook_id: str
    newly_recorded: bool
    links: dict[str, str] = Field(default_factory=dict, description="signed one-use action links")
    deliver: bool = Field(True, description="some webhook endpoint would receive the notification")


class Notification(BaseModel):
    """A signed webhook to deliver: same id on every retry, derived from the business key."""

    webhook_id: str
    event_type: str
    payload: dict[str, Any]
    endpoints: list[str]


class RejectedCommand(BaseModel):
    opportunity_id: str
    request_id: str
    command: str
    actor_id: str | None
    actor_role: str | None
    rule: str
    message: str
    missing: list[str] = Field(default_factory=list)
    rejected_at: datetime
    source: str


class OrgChainRequest(BaseModel):
    user_id: str


class OrgChain(BaseModel):
    user_id: str
    exists: bool
    managers: list[str] = Field(default_factory=list)
