"""Sales process definitions: the stages a deal moves through and the rules for moving.

A process is data (YAML edited by sales ops, published as immutable versions). Every
rule an admin can configure lives in this model; ``stage_rules`` and ``permissions``
apply it.
"""

from __future__ import annotations

import base64
import zlib
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sales.durations import ClockDuration, parse_duration

FORECAST_CATEGORIES = ("Pipeline", "Best Case", "Commit", "Closed", "Omitted")
DEFAULT_PROCESS_NAME = "new-business"
PROCESS_FOLDER = Path(__file__).parent / "processes"

# Roles known to oppflow; a process may name more cross-functional roles.
CORE_ROLES = ("rep", "manager", "admin", "automation")
CROSS_FUNCTIONAL_ROLES = ("sales_engineer", "customer_success", "support", "legal")


class Recipient(StrEnum):
    owner = "owner"
    manager = "manager"
    manager_of_manager = "manager_of_manager"
    sales_ops = "sales_ops"
    assignee = "assignee"
    assignee_manager = "assignee_manager"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


class EscalationStep(_Strict):
    after: str = Field(description="offset from the stage's stuck_after, e.g. 0s, 3d, 2bd")
    notify: Recipient
    webhooks: list[str] = Field(default_factory=list, description="extra endpoints for this level")

    _after_ok = field_validator("after")(_check_duration)

    @property
    def offset(self) -> ClockDuration:
        return parse_duration(self.after)


class FieldSpec(_Strict):
    type: Literal["text", "number", "money", "date", "bool", "choice"] = "text"
    label: str | None = None
    choices: list[str] = Field(default_factory=list)
    editable_by: list[str] = Field(
        default_factory=lambda: ["owner", "manager", "admin", "automation"],
        description="roles (or 'owner') allowed to set this field",
    )
    max_length: int = Field(default=10_000, ge=1, le=100_000)


class StageDefinition(_Strict):
    name: str = Field(min_length=1, max_length=80)
    probability: int = Field(ge=0, le=100)
    forecast_category: str
    closed: bool = False
    won: bool = False
    stuck_after: str | None = None
    requires: list[str] = Field(default_factory=list, description="fields needed to leave")
    requires_to_enter: list[str] = Field(default_factory=list, description="fields needed to enter")
    requires_handoffs: list[str] = Field(
        default_factory=list, description="hand-offs that must be completed to leave"
    )
    starts_handoffs: list[str] = Field(default_factory=list, description="hand-offs opened on entry")
    guidance: str = ""
    key_fields: list[str] = Field(default_factory=list)
    skippable: bool | None = Field(
        default=None, description="may be skipped over; default follows the process's skip rule"
    )
    move_roles: list[str] | None = Field(
        default=None, description="roles (or 'owner') that may move a deal out of this stage"
    )
    escalation: list[EscalationStep] = Field(default_factory=list)

    _stuck_ok = field_validator("stuck_after")(lambda v: v if v is None else _check_duration(v))

    @field_validator("forecast_category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in FORECAST_CATEGORIES:
            raise ValueError(f"must be one of {', '.join(FORECAST_CATEGORIES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StageDefinition:
        if self.won and not self.closed:
            raise ValueError("a won stage must also be closed")
        if self.closed and (self.stuck_after or self.escalation):
            raise ValueError("a closed stage has no stuck clock or escalation")
        if self.escalation and not self.stuck_after:
            raise ValueError("escalation needs stuck_after")
        return self

    @property
    def stuck_clock(self) -> ClockDuration | None:
        return parse_duration(self.stuck_after) if self.stuck_after else None


class HandoffDefinition(_Strict):
    team_role: str
    title: str
    due_in: str = "5bd"
    post_sale: bool = False
    escalation: list[EscalationStep] = Field(
        default_factory=lambda: [EscalationStep(after="0s", notify=Recipient.assignee_manager)]
    )

    _due_ok = field_validator("due_in")(_check_duration)


class ActivityCondition(_Strict):
    kind: str
    stage: str | None = None
    where: dict[str, Any] = Field(
        default_factory=dict,
        description="equality tests on the activity (subject, outcome, data.<key>) "
        "or the deal (fields.<key>, amount)",
    )


class AutomationAction(_Strict):
    advance_to: str | None = None
    close: Literal["won", "lost"] | None = None
    set_fields: dict[str, Any] = Field(default_factory=dict)
    notify: Recipient | None = None

    @model_validator(mode="after")
    def _one_move(self) -> AutomationAction:
        if self.advance_to and self.close:
            raise ValueError("an automation either advances or closes, not both")
        if not (self.advance_to or self.close or self.set_fields or self.notify):
            raise ValueError("an automation needs at least one action")
        return self


class AutomationRule(_Strict):
    name: str
    when: ActivityCondition
    then: AutomationAction


class StageRules(_Strict):
    """Process-wide rules for moving between stages."""

    skip: Literal["never", "when_requirements_met", "always"] = "when_requirements_met"
    max_backward_steps: int | None = Field(
        default=1, ge=0, description="how far back a deal may move without an override"
    )
    override_roles: list[str] = Field(default_factory=lambda: ["manager", "admin"])
    reopen_roles: list[str] = Field(default_factory=lambda: ["manager", "admin"])
    reassign_roles: list[str] = Field(default_factory=lambda: ["manager", "admin"])
    clock_roles: list[str] = Field(default_factory=lambda: ["owner", "manager", "admin"])
    escalation_roles: list[str] = Field(default_factory=lambda: ["manager", "admin"])
    team_roles: list[str] = Field(default_factory=lambda: ["owner", "manager", "admin"])
    default_move_roles: list[str] = Field(default_factory=lambda: ["owner", "manager", "admin", "automation"])
    reassign_resets_clock: bool = False
    max_automation_chain: int = Field(default=3, ge=1, le=20)


class SalesProcess(_Strict):
    name: str = Field(min_length=1, max_length=80, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: int = Field(default=0, ge=0, description="assigned on publish")
    description: str = ""
    holidays: list[date] = Field(default_factory=list)
    rules: StageRules = Field(default_factory=StageRules)
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    stages: list[StageDefinition] = Field(min_length=2)
    handoffs: dict[str, HandoffDefinition] = Field(default_factory=dict)
    automations: list[AutomationRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> SalesProcess:
        names = [s.name for s in self.stages]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"stage names must be unique: {', '.join(sorted(duplicates))}")
        if not any(not s.closed for s in self.stages):
            raise ValueError("a process needs at least one open stage")
        if not any(s.closed and s.won for s in self.stages):
            raise ValueError("a process needs a won closed stage")
        if not any(s.closed and not s.won for s in self.stages):
            raise ValueError("a process needs a lost closed stage")
        for stage in self.stages:
            for handoff in [*stage.requires_handoffs, *stage.starts_handoffs]:
                if handoff not in self.handoffs:
                    raise ValueError(f"stage {stage.name!r} names unknown hand-off {handoff!r}")
        for rule in self.automations:
            for stage_name in (rule.when.stage, rule.then.advance_to):
                if stage_name and stage_name not in names:
                    raise ValueError(f"automation {rule.name!r} names unknown stage {stage_name!r}")
        return self

    # -- lookups -------------------------------------------------------------------------

    def stage(self, name: str) -> StageDefinition:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def has_stage(self, name: str) -> bool:
        return any(s.name == name for s in self.stages)

    def index(self, name: str) -> int:
        return [s.name for s in self.stages].index(name)

    @property
    def open_stages(self) -> list[StageDefinition]:
        return [s for s in self.stages if not s.closed]

    @property
    def first_stage(self) -> StageDefinition:
        return self.open_stages[0]

    @property
    def won_stage(self) -> StageDefinition:
        return next(s for s in self.stages if s.closed and s.won)

    @property
    def lost_stage(self) -> StageDefinition:
        return next(s for s in self.stages if s.closed and not s.won)

    def field_spec(self, name: str) -> FieldSpec:
        return self.fields.get(name) or FieldSpec()


class ProcessFileError(ValueError):
    """A process file that does not validate; the message names line and field."""


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Line (1-based) of the YAML node at a pydantic error location, as deep as it exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def parse_process_yaml(text: str, source: str = "<process>") -> SalesProcess:
    try:
        data = yaml.safe_load(text)
        tree = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ProcessFileError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProcessFileError(f"{source}: line 1: a process file is a mapping with name and stages")
    try:
        return SalesProcess.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(p for p in error["loc"] if isinstance(p, (int, str)))
            where = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(tree, loc)
            problems.append(f"{source}: line {line}: {where}: {error['msg']}")
        raise ProcessFileError("\n".join(problems)) from None


def default_process() -> SalesProcess:
    """Salesforce's standard stage list, shipped as ``sales/processes/new-business.yaml``."""
    text = (PROCESS_FOLDER / "new-business.yaml").read_text(encoding="utf-8")
    return parse_process_yaml(text, "new-business.yaml")


_shared: dict[tuple[str, int, str], SalesProcess] = {}


def shared(process: SalesProcess) -> SalesProcess:
    """The one object for this definition in this Python process.

    Every deal pinned to a version holds the same (frozen) object instead of its own copy,
    which is most of a deal's memory in a worker. The key includes the whole definition,
    so two different definitions under one version number are never confused.
    """
    key = (process.name, process.version, process.model_dump_json())
    return _shared.setdefault(key, process)


# A packed definition is what a new deal's start request carries. The worker keeps every
# start request's payload for as long as the deal is cached, so its size is memory per
# open deal, and bytes the server stores for every deal created. It is compressed against
# a preset dictionary (the shipped processes' JSON): a definition close to a shipped one
# packs to about a hundred characters instead of two thousand.
PACKING_FOLDER = Path(__file__).parent / "packing"
# Frozen: running deals' start requests name their dictionary and replay unpacks them with
# it. A new dictionary gets the next number; the old files stay.
PACKING_DICTIONARY = 1
# Read when the module is imported (a worker imports it before any workflow runs), so
# workflow code never reads a file.
PACKING_DICTIONARIES: dict[int, bytes] = {
    number: (PACKING_FOLDER / f"dictionary-{number}.jsonl").read_bytes() for number in (1,)
}

_unpacked: dict[str, SalesProcess] = {}
_packed: dict[int, tuple[SalesProcess, str]] = {}


def pack(process: SalesProcess) -> str:
    """``d<dictionary>:`` and the definition's JSON, zlib-compressed against that preset
    dictionary, in base64 (``unpack`` reverses it).

    Each (frozen) process object is compressed once: a client packs the same published
    version into every deal it creates.
    """
    found = _packed.get(id(process))
    if found is not None and found[0] is process:  # the object is kept, so its id is not reused
        return found[1]
    compressor = zlib.compressobj(9, zdict=PACKING_DICTIONARIES[PACKING_DICTIONARY])
    data = compressor.compress(process.model_dump_json().encode()) + compressor.flush()
    packed = f"d{PACKING_DICTIONARY}:{base64.b64encode(data).decode('ascii')}"
    if len(_packed) >= 256:
        _packed.clear()
    _packed[id(process)] = (process, packed)
    return packed


def _unpacked_json(packed: str) -> bytes:
    prefix, separator, text = packed.partition(":")
    if not separator:  # packed before dictionaries: plain zlib (base64 has no colon)
        return zlib.decompress(base64.b64decode(packed))
    # A dictionary this worker does not know fails the task until a newer worker takes it.
    decompressor = zlib.decompressobj(zdict=PACKING_DICTIONARIES[int(prefix.removeprefix("d"))])
    return decompressor.decompress(base64.b64decode(text)) + decompressor.flush()


def unpack(packed: str) -> SalesProcess:
    """The shared object for a packed definition; each distinct one is parsed once."""
    found = _unpacked.get(packed)
    if found is None:
        found = shared(SalesProcess.model_validate_json(_unpacked_json(packed)))
        _unpacked[packed] = found
    return found
