"""Request and response bodies of the HTTP API.

Command bodies are the contract payloads of ``sales.messages`` without ``request_id``
(the ``Idempotency-Key`` header) and ``actor`` (the bearer token): same fields, same
limits, unknown keys refused.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from sales import messages
from sales.messages import Identifier

FROM_HEADER_AND_TOKEN = ("request_id", "actor")


def body_of(command: type[BaseModel], name: str, **overrides: tuple[Any, Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        field_name: (info.annotation, info)
        for field_name, info in command.model_fields.items()
        if field_name not in FROM_HEADER_AND_TOKEN
    }
    fields.update(overrides)
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        name, __config__=ConfigDict(extra="forbid"), __doc__=command.__doc__, **fields
    )
    return model


CreateBody = body_of(
    messages.CreateOpportunity,
    "CreateOpportunityBody",
    opportunity_id=(
        Identifier | None,
        Field(default=None, description="default: derived from the Idempotency-Key, else random"),
    ),
    owner_id=(Identifier | None, Field(default=None, description="default: the caller")),
)
ChangeStageBody = body_of(messages.ChangeStage, "ChangeStageBody")
UpdateFieldsBody = body_of(messages.UpdateFields, "UpdateFieldsBody")
ReopenBody = body_of(messages.Reopen, "ReopenBody")
ReassignBody = body_of(messages.Reassign, "ReassignBody")
AddTeamMemberBody = body_of(messages.AddTeamMember, "AddTeamMemberBody")
AcknowledgeBody = body_of(messages.AcknowledgeEscalation, "AcknowledgeEscalationBody")
SnoozeBody = body_of(messages.SnoozeEscalation, "SnoozeEscalationBody")
PauseClockBody = body_of(messages.PauseClock, "PauseClockBody")
ResumeClockBody = body_of(messages.ResumeClock, "ResumeClockBody")
RecordActivityBody = body_of(messages.RecordActivity, "RecordActivityBody")


class MigrateProcessBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="a published version")
    reason: str = Field(min_length=1, max_length=2_000)
    process_name: Identifier | None = Field(default=None, description="default: the deal's own process")


class Created(BaseModel):
    opportunity_id: str
    workflow_id: str
    created: bool = Field(description="false when an opportunity with this id already existed")
    request_id: str


class ActivityAccepted(BaseModel):
    request_id: str
    accepted: bool = True
    message: str


class OpportunitySummary(BaseModel):
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
    escalation_level: int
    next_escalation_at: datetime | None
    clock_paused: bool
    updated_at: datetime


class HistoryEntry(BaseModel):
    from_stage: str | None
    to_stage: str
    actor_id: str
    reason: str | None
    changed_at: datetime
    request_id: str
    amount: Decimal | None
    probability: int | None


class Escalation(BaseModel):
    id: int
    opportunity_id: str
    opportunity_name: str | None
    account: str | None
    owner_id: str | None
    amount: Decimal | None
    subject: str = Field(description="'stage' for the deal's ladder, else the hand-off id")
    stage: str
    stage_entry_seq: int
    level: int
    notify: str
    recipient_id: str | None
    status: str
    due_at: datetime
    fired_at: datetime
    note: str | None


class Health(BaseModel):
    postgres: str
    temporal: str
