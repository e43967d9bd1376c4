"""The durable state of one opportunity: everything the workflow carries across
continue-as-new, and what ``get_state`` answers."""

from __future__ import annotations

import base64
import json
import zlib
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field, field_validator

from sales.messages import CommandResult, CreateOpportunity
from sales.process import HandoffDefinition, SalesProcess, pack, unpack

# How many request ids (and their answers) an opportunity remembers for de-duplication.
REMEMBERED_REQUESTS = 1_000
RECENT_EVENTS = 20

# A remembered answer: (message, stage, stage_entry_seq), all a repeat needs to answer the
# same. A tuple takes about a third of the memory of a CommandResult model, and a busy deal
# holds up to REMEMBERED_REQUESTS of them for as long as it is cached.
RememberedAnswer = tuple[str, str, int]


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
    process: SalesProcess = Field(description="the pinned definition (packed text in a packed state)")
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
    processed: dict[str, RememberedAnswer] = Field(
        default_factory=dict, description="request id -> (message, stage, stage_entry_seq), oldest first"
    )
    saved_version: int = Field(default=0, description="bumped on every write to Postgres")
    finished: bool = False

    @property
    def escalation_level(self) -> int:
        return self.clock.level

    @field_validator("process", mode="before")
    @classmethod
    def _unpack_process(cls, value: Any) -> Any:
        return unpack(value) if isinstance(value, str) else value

    @field_validator("processed", mode="before")
    @classmethod
    def _compact_answers(cls, value: Any) -> Any:
        """State carried by continue-as-new before answers were compacted holds whole
        CommandResult objects; keep what a repeat needs."""
        if not isinstance(value, dict):
            return value
        return {
            request_id: (answer["message"], answer["stage"], answer["stage_entry_seq"])
            if isinstance(answer, dict)
            else answer
            for request_id, answer in value.items()
        }

    def remember(self, result: CommandResult) -> CommandResult:
        self.processed[result.request_id] = (result.message, result.stage, result.stage_entry_seq)
        while len(self.processed) > REMEMBERED_REQUESTS:
            self.processed.pop(next(iter(self.processed)))
        return result

    def answer_to(self, request_id: str) -> CommandResult | None:
        """The answer a request id already got, or None if it is not remembered."""
        answer = self.processed.get(request_id)
        if answer is None:
            return None
        message, stage, stage_entry_seq = answer
        return CommandResult(
            request_id=request_id, message=message, stage=stage, stage_entry_seq=stage_entry_seq
        )

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
    state: OpportunityState | None = Field(
        default=None, description="the state carried by continue-as-new; packed by pack_state"
    )
    revision: int = Field(
        default=0,
        ge=0,
        description="the workflow revision the starter knew (workflows/revisions.py REVISION)",
    )

    @field_validator("state", mode="before")
    @classmethod
    def _unpack_state(cls, value: Any) -> Any:
        return unpack_state(value) if isinstance(value, str) else value


# A continued deal's start input is its whole state, remembered answers included (up to
# REMEMBERED_REQUESTS of them, about 200 bytes each in JSON). The worker keeps a start
# input for as long as the deal is cached, and the server stores it in every run's
# history, so it goes packed: the process by sales.process.pack, the whole compressed.
# Packed, it is a string where workers before packing expect an object: they fail to
# decode it, and the task waits for an upgraded worker instead of failing the deal.
PACKED_STATE_PREFIX = "s1:"


def pack_state(state: OpportunityState) -> str:
    data = state.model_dump(mode="json", exclude={"process"})
    data["process"] = pack(state.process)
    text = json.dumps(data, separators=(",", ":")).encode()
    return PACKED_STATE_PREFIX + base64.b64encode(zlib.compress(text, 6)).decode("ascii")


def unpack_state(packed: str) -> dict[str, Any]:
    """The state's fields (``OpportunityState`` validates them); an unknown format raises."""
    if not packed.startswith(PACKED_STATE_PREFIX):
        raise ValueError(f"state packed in an unknown format ({packed[:8]!r}...)")
    compressed = base64.b64decode(packed.removeprefix(PACKED_STATE_PREFIX))
    data: dict[str, Any] = json.loads(zlib.decompress(compressed))
    return data


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
