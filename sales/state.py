"""The durable state of one opportunity: everything the workflow carries across
continue-as-new, and what ``get_state`` answers."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from sales.messages import CommandResult, CreateOpportunity
from sales.process import HandoffDefinition, SalesProcess

# How many request ids (and their answers) an opportunity remembers for de-duplication.
REMEMBERED_REQUESTS = 1_000
RECENT_EVENTS = 20


class TeamMember(BaseModel):
    user_id: str
    team_role: str
    added_at: datetime


class Handoff(BaseModel):
    handoff_id: str
    kind: str
    title: str
    team_role: str
    assignee_id: str | None
    stage: str
    post_sale: bool = False
    status: str = "open"  # open, completed, declined, cancelled, unassigned
    opened_at: datetime
    due_at: datetime | None = None
    finished_at: datetime | None = None
    note: str | None = None


class StageClock(BaseModel):
    """The stuck-deal clock of the current stage entry and its escalation ladder."""

    level: int = 0  # highest level fired in this stage entry
    acknowledged_by: str | None = None
    acknowledged_note: str | None = None
    snoozed_until: datetime | None = None
    paused_since: datetime | None = None
    pause_reason: str | None = None
    pause_until: datetime | None = None
    paused_seconds: float = 0.0
    snoozed_seconds: float = 0.0
    next_level_due_at: datetime | None = None


class Refusal(BaseModel):
    at: datetime
    actor_id: str
    command: str
    rule: str
    message: str
    missing: list[str] = Field(default_factory=list)


class ActivityNote(BaseModel):
    request_id: str
    kind: str
    subject: str | None = None
    outcome: str | None = None
    occurred_at: datetime
    actor_id: str


class OpportunityState(BaseModel):
    opportunity_id: str
    name: str
    account: str
    owner_id: str
    owner_managers: list[str] = Field(
        default_factory=list, description="the owner's management chain, nearest first"
    )
    amount: Decimal | None = None
    close_date: date | None = None
    stage: str
    stage_entered_at: datetime
    stage_entry_seq: int = 1
    probability: int
    forecast_category: str
    is_closed: bool = False
    is_won: bool = False
    fields: dict[str, Any] = Field(default_factory=dict)
    team: list[TeamMember] = Field(default_factory=list)
    handoffs: list[Handoff] = Field(default_factory=list)
    clock: StageClock = Field(default_factory=StageClock)
    process: SalesProcess
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    last_activity_at: datetime | None = None
    activity_count: int = 0
    recent_activities: list[ActivityNote] = Field(default_factory=list)
    refusals: list[Refusal] = Field(default_factory=list)
    time_in_stage_seconds: dict[str, float] = Field(
        default_factory=dict, description="cumulative seconds spent in each stage, past entries"
    )
    processed: dict[str, CommandResult] = Field(default_factory=dict)
    saved_version: int = Field(default=0, description="bumped on every write to Postgres")
    finished: bool = False

    @property
    def escalation_level(self) -> int:
        return self.clock.level

    def remember(self, result: CommandResult) -> CommandResult:
        self.processed[result.request_id] = result
        while len(self.processed) > REMEMBERED_REQUESTS:
            self.processed.pop(next(iter(self.processed)))
        return result

    def team_roles_of(self, user_id: str) -> list[str]:
        return [m.team_role for m in self.team if m.user_id == user_id]

    def open_handoffs(self) -> list[Handoff]:
        return [h for h in self.handoffs if h.status in ("open", "unassigned")]


class OpportunityInput(BaseModel):
    """The workflow's single argument: a new deal, or the state carried by continue-as-new.

    For a new deal the starter passes the pinned process version (packed, see
    ``sales.process.pack``) and the owner's management chain, so the workflow starts
    without any I/O. Deals started before packing carry ``process`` instead, and deals
    started before ``revision`` existed carry 0.
    """

    create: CreateOpportunity | None = None
    process: SalesProcess | None = None
    packed_process: str | None = Field(
        default=None, description="the pinned process definition, packed by sales.process.pack"
    )
    owner_managers: list[str] = Field(default_factory=list)
    state: OpportunityState | None = None
    revision: int = Field(
        default=0,
        ge=0,
        description="the workflow revision the starter knew (workflows/revisions.py REVISION)",
    )


class HandoffInput(BaseModel):
    """A hand-off workflow's single argument."""

    handoff: Handoff
    spec: HandoffDefinition
    opportunity_id: str
    opportunity_name: str
    account: str
    owner_id: str
    holidays: list[date] = Field(default_factory=list)
    level: int = 0
    managers: list[str] = Field(
        default_factory=list, description="managers who may decide in the assignee's place"
    )
