"""OpportunityClient: the typed facade over Temporal and Postgres that the CLI, the
HTTP API and backend services written in Python use.

Commands go to the workflow (the only writer); lists and history come from Postgres.
Every refusal comes back as ``CommandRejected`` with the rule, the message and, for
required fields, the missing ones.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from sales.messages import (
    AcknowledgeEscalation,
    Actor,
    AddTeamMember,
    ChangeStage,
    Command,
    CommandResult,
    CreateOpportunity,
    MigrateProcess,
    PauseClock,
    Reassign,
    RecordActivity,
    RemoveTeamMember,
    Reopen,
    ResumeClock,
    SnoozeEscalation,
    UpdateFields,
)
from sales.process import DEFAULT_PROCESS_NAME, SalesProcess, default_process, pack
from sales.state import OpportunityInput
from starter import org_chart, processes
from workflows import search_attributes
from workflows.revisions import REVISION
from workflows.run_length import WORKFLOW_TASK_TIMEOUT

C = TypeVar("C", bound=Command)


def workflow_id(opportunity_id: str) -> str:
    return f"opportunity-{opportunity_id}"


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class CommandRejected(Exception):
    """A command the rules refused (HTTP 409/403) or a malformed one (HTTP 422)."""

    rule: str
    message: str
    missing: list[str] = field(default_factory=list)
    field_name: str | None = None

    def __str__(self) -> str:
        return self.message


class OpportunityNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Created:
    opportunity_id: str
    workflow_id: str
    created: bool


def rejected_from_validation(exc: ValidationError) -> CommandRejected:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return CommandRejected("malformed", f"{where}: {first['msg']}", field_name=where)


def _build(model: type[C], **values: Any) -> C:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise rejected_from_validation(exc) from None


# What a create reads, in one round trip: the owner and their managers up the org chart
# (nearest first), and the current version of the deal's process.
_PROCESS_AND_CHAIN = org_chart.CHAIN_OF + (
    "SELECT (SELECT array_agg(id ORDER BY depth) FROM chain) AS chain, p.name, p.version, p.checksum"
    " FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT name, version, checksum FROM sales_processes"
    " WHERE name = $2 ORDER BY version DESC LIMIT 1) AS p ON true"
)


class OpportunityClient:
    def __init__(self, temporal: Client, pool: asyncpg.Pool, task_queue: str = "opportunities") -> None:
        self.temporal = temporal
        self.pool = pool
        self.task_queue = task_queue

    # -- people ------------------------------------------------------------------------------

    async def actor(self, user_id: str) -> Actor:
        """The actor for a person, with the role the org chart gives them."""
        roles = await org_chart.roles_of(self.pool, user_id)
        if roles is None:
            raise CommandRejected(
                "unknown_user", f"actor {user_id} is not in the org chart", field_name="actor"
            )
        return Actor(id=user_id, role=org_chart.primary_role(roles))

    # -- create ------------------------------------------------------------------------------

    async def process_for(self, name: str | None) -> SalesProcess:
        name = name or DEFAULT_PROCESS_NAME
        process = await processes.latest(self.pool, name)
        if process is None:
            if name != DEFAULT_PROCESS_NAME:
                raise CommandRejected(
                    "unknown_process", f"process {name!r} is not published", field_name="process_name"
                )
            await processes.ensure_default(self.pool)
            process = await processes.latest(self.pool, name) or default_process()
        return process

    async def _process_and_managers(
        self, process_name: str | None, owner_id: str
    ) -> tuple[SalesProcess, list[str] | None]:
        """The process's current version and the owner's managers, in one statement."""
        name = process_name or DEFAULT_PROCESS_NAME
        row = await self.pool.fetchrow(_PROCESS_AND_CHAIN, owner_id, name)
        process = await processes.load(self.pool, row if row["version"] is not None else None)
        if process is None:  # nothing published under that name yet
            process = await self.process_for(name)
        chain = row["chain"]
        return process, None if chain is None else list(chain[1:])

    async def create(
        self,
        *,
        actor: Actor,
        name: str,
        account: str,
        owner_id: str,
        opportunity_id: str | None = None,
        amount: Decimal | str | float | None = None,
        close_date: date | str | None = None,
        stage: str | None = None,
        stage_entered_at: datetime | None = None,
        fields: dict[str, Any] | None = None,
        process_name: str | None = None,
        request_id: str | None = None,
    ) -> Created:
        cmd = _build(
            CreateOpportunity,
            request_id=request_id or new_request_id(),
            actor=actor,
            opportunity_id=opportunity_id or uuid.uuid4().hex[:12],
            name=name,
            account=account,
            owner_id=owner_id,
            amount=amount,
            close_date=close_date,
            stage=stage,
            stage_entered_at=stage_entered_at,
            fields=fields or {},
            process_name=process_name,
        )
        process, managers = await self._process_and_managers(cmd.process_name, cmd.owner_id)
        if cmd.stage and not process.has_stage(cmd.stage):
            raise CommandRejected(
                "unknown_stage", f"stage {cmd.stage!r} is not in process {process.name}", field_name="stage"
            )
        if managers is None:
            raise CommandRejected(
                "unknown_user", f"owner {cmd.owner_id} is not in the org chart", field_name="owner_id"
            )
        return await self.start(cmd, process, managers)

    async def start(self, cmd: CreateOpportunity, process: SalesProcess, managers: list[str]) -> Created:
        """Start the deal's workflow; a second creator of the same id gets the existing one.

        The server admits one start per workflow id: concurrent creators race to it and the
        others are told it exists. A deal whose workflow has ended (closed and retired) is
        never started again under the same id.
        """
        wf_id = workflow_id(cmd.opportunity_id)
        stage = process.stage(cmd.stage) if cmd.stage else process.first_stage
        try:
            await self.temporal.start_workflow(
                "OpportunityWorkflow",
                OpportunityInput(
                    create=cmd, packed_process=pack(process), owner_managers=managers, revision=REVISION
                ),
                id=wf_id,
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=search_attributes.initial(cmd, stage.name, stage.forecast_category),
                static_summary=f"{cmd.name} — {cmd.account}",
                static_details=f"Opportunity {cmd.opportunity_id}, process {process.name} v{process.version}",
                task_timeout=WORKFLOW_TASK_TIMEOUT,
            )
        except WorkflowAlreadyStartedError:
            return Created(cmd.opportunity_id, wf_id, False)
        return Created(cmd.opportunity_id, wf_id, True)

    # -- commands ------------------------------------------------------------------------------

    def handle(self, opportunity_id: str) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle(workflow_id(opportunity_id))

    async def _update(self, opportunity_id: str, name: str, cmd: Command) -> CommandResult:
        handle = self.handle(opportunity_id)
        try:
            return await handle.execute_update(name, cmd, id=cmd.request_id, result_type=CommandResult)
        except WorkflowUpdateFailedError as exc:
            raise _rejection(exc) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise OpportunityNotFound(f"opportunity {opportunity_id} not found") from None
            raise

    async def send(
        self, opportunity_id: str, command: str, model: type[C], /, **values: Any
    ) -> CommandResult:
        values.setdefault("request_id", None)
        values["request_id"] = values["request_id"] or new_request_id()
        return await self._update(opportunity_id, command, _build(model, **values))

    async def change_stage(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "change_stage", ChangeStage, **values)

    async def update_fields(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "update_fields", UpdateFields, **values)

    async def reopen(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "reopen", Reopen, **values)

    async def reassign(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "reassign", Reassign, **values)

    async def add_team_member(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "add_team_member", AddTeamMember, **values)

    async def remove_team_member(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "remove_team_member", RemoveTeamMember, **values)

    async def acknowledge_escalation(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "acknowledge_escalation", AcknowledgeEscalation, **values)

    async def snooze_escalation(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "snooze_escalation", SnoozeEscalation, **values)

    async def pause_clock(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "pause_clock", PauseClock, **values)

    async def resume_clock(self, opportunity_id: str, **values: Any) -> CommandResult:
        return await self.send(opportunity_id, "resume_clock", ResumeClock, **values)

    async def migrate_process(
        self,
        opportunity_id: str,
        *,
        actor: Actor,
        name: str,
        version: int,
        reason: str,
        request_id: str | None = None,
    ) -> CommandResult:
        process = await processes.get_version(self.pool, name, version)
        if process is None:
            raise CommandRejected(
                "unknown_process", f"process {name} v{version} is not published", field_name="version"
            )
        return await self.send(
            opportunity_id,
            "migrate_process",
            MigrateProcess,
            actor=actor,
            process=process.model_dump(mode="json"),
            reason=reason,
            request_id=request_id,
        )

    async def record_activity(self, opportunity_id: str, **values: Any) -> str:
        values["request_id"] = values.get("request_id") or new_request_id()
        cmd = _build(RecordActivity, **values)
        try:
            await self.handle(opportunity_id).signal("record_activity", cmd)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise OpportunityNotFound(f"opportunity {opportunity_id} not found") from None
            raise
        return cmd.request_id

    # -- reads ---------------------------------------------------------------------------------

    async def state(self, opportunity_id: str) -> dict[str, Any]:
        try:
            return await self.handle(opportunity_id).query("get_state")
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise OpportunityNotFound(f"opportunity {opportunity_id} not found") from None
            raise

    async def is_running(self, opportunity_id: str) -> bool:
        description = await self.handle(opportunity_id).describe()
        return description.raw_description.workflow_execution_info.status == (
            WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
        )

    async def history(self, opportunity_id: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT from_stage, to_stage, actor_id, reason, changed_at, request_id, amount, probability "
            "FROM stage_history WHERE opportunity_id = $1 ORDER BY changed_at, id",
            opportunity_id,
        )
        if not rows and not await self.pool.fetchval(
            "SELECT 1 FROM opportunities WHERE id = $1", opportunity_id
        ):
            raise OpportunityNotFound(f"opportunity {opportunity_id} not found")
        return [dict(r) for r in rows]


def _rejection(exc: WorkflowUpdateFailedError) -> CommandRejected:
    cause = exc.cause
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details else {}
        missing = details.get("missing", []) if isinstance(details, dict) else []
        return CommandRejected(cause.type or "refused", cause.message, list(missing))
    message = str(cause) if cause else str(exc)
    return CommandRejected("malformed", message)
