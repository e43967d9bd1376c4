"""Payloads of every message a caller sends to an opportunity (contract names).

Each command carries ``request_id`` (the caller's idempotency key) and ``actor``. Unknown
keys are refused so a typo never passes silently. JSON Schemas of these models are
published under ``schemas/`` (``python -m sales.schemas``).
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

# Limits that keep payloads far below Temporal's 2 MB per payload (see README, "Limits").
MAX_TEXT = 2_000
MAX_FIELD_VALUE = 10_000
MAX_FIELDS_BYTES = 64_000
MAX_AMOUNT = Decimal("1e13")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_no_nul)]
Identifier = Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")]
Money = Annotated[Decimal, Field(ge=0, le=MAX_AMOUNT, decimal_places=2)]


def _check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    for key, value in fields.items():
        if not key or len(key) > 64 or not key.replace("_", "a").isalnum():
            raise ValueError(f"field name {key!r} must be 1-64 letters, digits or _")
        if isinstance(value, str):
            _no_nul(value)
            if len(value) > MAX_FIELD_VALUE:
                raise ValueError(f"field {key!r} is longer than {MAX_FIELD_VALUE} characters")
        elif value is not None and not isinstance(value, (int, float, bool)):
            raise ValueError(f"field {key!r} must be text, a number, true/false or null")
    if len(json.dumps(fields, default=str)) > MAX_FIELDS_BYTES:
        raise ValueError(f"fields are larger than {MAX_FIELDS_BYTES} bytes")
    return fields


Fields = Annotated[dict[str, Any], AfterValidator(_check_fields)]


class Actor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    role: Identifier


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Identifier
    actor: Actor


class CreateOpportunity(Command):
    opportunity_id: Identifier
    name: Annotated[Text, Field(min_length=1, max_length=255)]
    account: Annotated[Text, Field(min_length=1, max_length=255)]
    owner_id: Identifier
    amount: Money | None = None
    close_date: date | None = None
    stage: str | None = Field(default=None, description="initial stage; default the first one")
    stage_entered_at: datetime | None = Field(
        default=None, description="for imports: when the deal really entered its stage"
    )
    fields: Fields = Field(default_factory=dict)
    process_name: Identifier | None = None


class ChangeStage(Command):
    stage: Annotated[str, Field(min_length=1, max_length=80)]
    reason: Text | None = None
    fields: Fields = Field(default_factory=dict)
    amount: Money | None = None
    close_date: date | None = None


class UpdateFields(Command):
    fields: Fields = Field(default_factory=dict)
    amount: Money | None = None
    close_date: date | None = None
    name: Annotated[Text, Field(min_length=1, max_length=255)] | None = None


class Reopen(Command):
    stage: Annotated[str, Field(min_length=1, max_length=80)]
    reason: Annotated[Text, Field(min_length=1)]


class Reassign(Command):
    owner_id: Identifier
    reason: Text | None = None


class AddTeamMember(Command):
    user_id: Identifier
    team_role: Identifier


class RemoveTeamMember(Command):
    user_id: Identifier


class AcknowledgeEscalation(Command):
    note: Text | None = None


class SnoozeEscalation(Command):
    until: datetime

    @field_validator("until")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must include a time zone, e.g. 2026-12-01T09:00:00Z")
        return value


class PauseClock(Command):
    reason: Annotated[Text, Field(min_length=1)]
    until: datetime | None = None


class ResumeClock(Command):
    pass


class MigrateProcess(Command):
    """Admin-only: move the deal to another published version of its process."""

    process: dict[str, Any]
    reason: Annotated[Text, Field(min_length=1)]


class HandoffDone(Command):
    """Sent by a hand-off to its opportunity when the assignee completes or declines."""

    handoff_id: Identifier
    outcome: Identifier
    note: Text | None = None


class HandoffDecision(Command):
    """The assignee (or a manager or admin) completes or declines a hand-off."""

    note: Text | None = None


class RecordActivity(Command):
    kind: Identifier
    subject: Text | None = None
    outcome: Text | None = None
    occurred_at: datetime | None = None
    data: Fields = Field(default_factory=dict)


class CommandResult(BaseModel):
    """What an accepted command answers; a repeat of its request_id answers the same."""

    request_id: str
    accepted: bool = True
    message: str
    stage: str
    stage_entry_seq: int
