"""OpportunityWorkflow: one long-lived workflow per sales opportunity.

The workflow is the only writer of a deal. Commands arrive as updates (validated before
they are accepted, so a refused command leaves no history), events from backend
services as the ``record_activity`` signal. Every accepted change is applied to the
state at once and queued as rows; the main loop writes queued rows to Postgres in
order, keeps search attributes and the deal card current, fires due escalation levels,
and continues as new when the history grows.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities import rejection_log
    from activities.persistence import OpportunityStore
    from sales import automations, escalation_ladder, permissions, stage_rules
    from sales.messages import (
        AcknowledgeEscalation,
        AddTeamMember,
        ChangeStage,
        Command,
        CommandResult,
        CreateOpportunity,
        HandoffDone,
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
    from sales.process import SalesProcess, default_process
    from sales.process import shared as shared_process
    from sales.process import unpack as unpack_process
    from sales.records import (
        ActivityRow,
        Change,
        EscalatedBatch,
        EscalationRecorded,
        EscalationStatusChange,
        FieldChangeRow,
        Notification,
        OpportunityRow,
        OrgChain,
        OrgChainRequest,
        PersistBatch,
        RecordEscalation,
        RejectedCommand,
        StageChangeRow,
    )
    from sales.refusals import CommandRefused
    from sales.state import (
        RECENT_EVENTS,
        ActivityNote,
        Handoff,
        HandoffInput,
        OpportunityInput,
        OpportunityState,
        Refusal,
        TeamMember,
        pack_state,
    )
    from workflows import deal_card, search_attributes
    from workflows.handoff import HandoffWorkflow
    from workflows.notification import NotificationWorkflow, notify_once
    from workflows.retries import DB_WRITE
    from workflows.revisions import (
        ESCALATION_ROW_IN_WORKER,
        ONLY_CHANGED_SEARCH_ATTRIBUTES,
        REVISION,
        REVISION_1,
        REVISION_2,
        RUN_LENGTH_LIMIT,
    )
    from workflows.run_length import RUN_EVENTS_LIMIT, WORKFLOW_TASK_TIMEOUT

CLOSED_LOST_REOPEN_WINDOW = timedelta(days=30)
CommandT = TypeVar("CommandT", bound=Command)


def malformed(exc: ValidationError) -> CommandRefused:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        problems.append(f"{where}: {error['msg']}")
    return CommandRefused("malformed", "; ".join(problems))


def refusal_error(refusal: CommandRefused) -> ApplicationError:
    return ApplicationError(
        refusal.message,
        {"rule": refusal.rule, "missing": refusal.missing},
        type=refusal.rule,
        non_retryable=True,
    )


class NewerRevisionError(RuntimeError):
    """Not a workflow failure: it fails the workflow task, which Temporal retries."""


@workflow.defn(name="OpportunityWorkflow")
class OpportunityWorkflow:
    @workflow.init
    def __init__(self, input: OpportunityInput) -> None:
        if input.revision > REVISION:
            # Started or continued by newer code: what this code would record, the newer code
            # might not replay. The task fails and is retried until an upgraded worker takes it.
            raise NewerRevisionError(
                f"deal at workflow revision {input.revision}, this worker knows up to {REVISION}: "
                "upgrade the worker"
            )
        self._is_new = input.state is None
        self.state = input.state or self._new_state(input)
        if input.state is not None:  # carried by continue-as-new: its own parsed copy
            self.state.process = shared_process(self.state.process)
        self._outbox: list[Change] = []
        self._pending_activities: list[tuple[RecordActivity, int, frozenset[str]]] = []
        self._handoffs_to_start: list[Handoff] = []
        self._handoffs_to_notify: list[Handoff] = []
        self._woken = False
        self._recheck_due = False
        self._automation_chain: tuple[int, frozenset[str]] | None = None
        self._handoffs_to_cancel: list[Handoff] = []
        self._lock = asyncio.Lock()
        # Every patch is decided here, before the first command. Decided later (after a
        # local activity), the marker can land in another workflow task than the one
        # replay decides it in, and replay fails.
        current = input.revision >= REVISION_1
        self._escalation_row_in_worker = current or workflow.patched(ESCALATION_ROW_IN_WORKER)
        self._only_changed_search_attributes = current or workflow.patched(ONLY_CHANGED_SEARCH_ATTRIBUTES)
        self._run_length_limit = input.revision >= REVISION_2 or workflow.patched(RUN_LENGTH_LIMIT)
        if self._is_new and input.create is not None:
            # Recorded here, not in run(): updates may be handled before run() starts.
            self._record_creation(input.create)

    @staticmethod
    def _new_state(input: OpportunityInput) -> OpportunityState:
        create = input.create
        if create is None:
            raise ApplicationError("OpportunityInput needs create or state", non_retryable=True)
        if input.packed_process is not None:
            process: SalesProcess = unpack_process(input.packed_process)  # already shared
        else:  # started before packing, or without a process
            process = shared_process(input.process or default_process())
        stage = process.stage(create.stage) if create.stage else process.first_stage
        now = workflow.now()
        entered = create.stage_entered_at or now
        if create.stage_entered_at is None and input.revision >= REVISION_1:
            # The starter indexed the deal with its own clock; keep that value (capped at
            # now below) so the first task has no StageEnteredAt to upsert.
            entered = workflow.info().typed_search_attributes.get(search_attributes.STAGE_ENTERED_AT) or now
        return OpportunityState(
            opportunity_id=create.opportunity_id,
            name=create.name,
            account=create.account,
            owner_id=create.owner_id,
            owner_managers=input.owner_managers,
            amount=create.amount,
            close_date=create.close_date,
            stage=stage.name,
            stage_entered_at=min(entered, now),
            probability=stage.probability,
            forecast_category=stage.forecast_category,
            is_closed=stage.closed,
            is_won=stage.won,
            closed_at=now if stage.closed else None,
            fields=dict(create.fields),
            process=process,
            created_at=now,
            updated_at=now,
        )

    # -- main loop ---------------------------------------------------------------------

    @workflow.run
    async def run(self, input: OpportunityInput) -> dict[str, Any]:
        # The SDK keeps the decoded input for as long as the deal is cached; the state holds
        # what the deal needs of it (the shared process, the creation's fields).
        input.process = input.packed_process = input.create = None
        escalation_ladder.refresh_next_due(self.state)
        while True:
            await self._flush()
            if self._finished():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._finished() and not self._has_work():
                    self.state.finished = True
                    return {"opportunity_id": self.state.opportunity_id, "stage": self.state.stage}
            if self._run_is_long():
                await workflow.wait_condition(workflow.all_handlers_finished)
                while self._has_work():
                    await self._flush()
                # The next run is started by this code, at its revision: no patch markers.
                # Its input is the state packed (sales/state.py pack_state): the fields of
                # an OpportunityInput, the state in them a string. Replay compares only the
                # command's kind, so a deal started with Temporal's 10 s task timeout
                # takes oppflow's at its next run.
                workflow.continue_as_new(
                    {"state": pack_state(self.state), "revision": REVISION},
                    task_timeout=WORKFLOW_TASK_TIMEOUT,
                )
            await self._wait_for_work()

    def _run_is_long(self) -> bool:
        """Time to continue as new: Temporal suggests it, or the run reached oppflow's limit
        (workflows/run_length.py), which keeps a full replay of the run short."""
        info = workflow.info()
        if info.is_continue_as_new_suggested():
            return True
        return self._run_length_limit and info.get_current_history_length() >= RUN_EVENTS_LIMIT

    async def _wait_for_work(self) -> None:
        self._woken = False
        wake_at, summary = self._next_wake()
        timeout = max(wake_at - workflow.now(), timedelta(0)) if wake_at else None
        try:
            await workflow.wait_condition(
                lambda: self._woken or self._run_is_long(),
                timeout=timeout,
                timeout_summary=summary,
            )
        except TimeoutError:
            await self._on_clock()
            return
        if self._recheck_due:
            self._recheck_due = False
            await self._on_clock()

    def _next_wake(self) -> tuple[datetime | None, str]:
        clock = self.state.clock
        if clock.paused_since and clock.pause_until:
            return clock.pause_until, f"stage clock paused: {self.state.stage}"
        due = escalation_ladder.next_level(self.state)
        if due:
            label = escalation_ladder.recipient_label(due.step)
            return due.due_at, f"stage clock: {self.state.stage} — level {due.level}, {label}"
        if self.state.is_closed and self.state.closed_at and not self.state.is_won:
            return self.state.closed_at + CLOSED_LOST_REOPEN_WINDOW, "reopen window"
        return None, ""

    def _has_work(self) -> bool:
        return bool(
            self._outbox
            or self._pending_activities
            or self._handoffs_to_start
            or self._handoffs_to_notify
            or self._handoffs_to_cancel
        )

    def _finished(self) -> bool:
        s = self.state
        if not s.is_closed or s.open_handoffs() or self._pending_activities:
            return False
        if s.is_won:
            return True
        return s.closed_at is not None and workflow.now() >= s.closed_at + CLOSED_LOST_REOPEN_WINDOW

    async def _on_clock(self) -> None:
        now = workflow.now()
        clock = self.state.clock
        if clock.paused_since and clock.pause_until and clock.pause_until <= now:
            escalation_ladder.apply_resume(self.state, now)
            self._changed(
                "resume_clock",
                f"auto-resume-{self.state.stage_entry_seq}-{now.isoformat()}",
                "automation",
                detail={"auto": True},
            )
            return
        chosen, superseded = escalation_ladder.levels_to_fire(self.state, now)
        if chosen is None:
            return
        await self._fire_escalation(chosen, superseded, now)

    async def _fire_escalation(
        self, chosen: escalation_ladder.DueLevel, superseded: list[int], now: datetime
    ) -> None:
        s = self.state
        record = RecordEscalation(
            opportunity_id=s.opportunity_id,
            opportunity_name=s.name,
            account=s.account,
            stage=s.stage,
            stage_entry_seq=s.stage_entry_seq,
            stage_entered_at=s.stage_entered_at,
            level=chosen.level,
            notify=chosen.step.notify.value,
            owner_id=s.owner_id,
            due_at=chosen.due_at,
            fired_at=now,
            superseded=superseded,
            amount=s.amount,
            extra_webhooks=chosen.step.webhooks,
        )
        escalation_ladder.mark_fired(s, chosen.level)
        self._changed(
            "escalation",
            f"escalation-{s.stage_entry_seq}-{chosen.level}",
            "automation",
            detail={"level": chosen.level, "notify": chosen.step.notify.value},
        )
        summary = f"{escalation_ladder.recipient_label(chosen.step)} ({s.stage}, level {chosen.level})"
        recorded: EscalationRecorded
        if self._escalation_row_in_worker:
            # The deal's rows and the escalation row in one local activity, inside the
            # workflow task: a storm of due deals costs one task and one transaction each.
            written = await self._flush(escalation=(record, summary))
            if written is None:
                raise ApplicationError("the escalation row was not written")  # unreachable
            recorded = written
            if not recorded.deliver:
                return  # no endpoint would receive the webhook: no delivery workflow
        else:
            await self._flush()
            recorded = await workflow.execute_activity_method(
                OpportunityStore.record_escalation,
                record,
                summary=summary,
                **DB_WRITE,  # type: ignore[arg-type]
            )
        await self._notify(
            Notification(
                webhook_id=recorded.webhook_id,
                event_type="opportunity.escalated",
                payload={
                    "opportunity_id": s.opportunity_id,
                    "name": s.name,
                    "account": s.account,
                    "stage": record.stage,
                    "level": chosen.level,
                    "notify": chosen.step.notify.value,
                    "recipient_id": recorded.recipient_id,
                    "owner_id": s.owner_id,
                    "amount": str(s.amount) if s.amount is not None else None,
                    "stage_entered_at": record.stage_entered_at.isoformat(),
                    "days_in_stage": round((now - record.stage_entered_at).total_seconds() / 86400, 1),
                    "due_at": chosen.due_at.isoformat(),
                    "links": recorded.links,
                    "actions": [
                        "acknowledge_escalation",
                        "snooze_escalation",
                        "reassign",
                        "change_stage",
                        "pause_clock",
                    ],
                },
                endpoints=chosen.step.webhooks,
            )
        )

    async def _notify(self, notification: Notification) -> None:
        await notify_once(notification, NotificationWorkflow.run)

    # -- writing -------------------------------------------------------------------------

    def _changed(
        self,
        kind: str,
        request_id: str,
        actor_id: str,
        *,
        stage_change: StageChangeRow | None = None,
        field_changes: list[FieldChangeRow] | None = None,
        activity: ActivityRow | None = None,
        escalation_status: EscalationStatusChange | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        now = workflow.now()
        self.state.updated_at = now
        self._outbox.append(
            Change(
                request_id=request_id,
                actor_id=actor_id,
                at=now,
                kind=kind,
                stage_change=stage_change,
                field_changes=field_changes or [],
                activity=activity,
                escalation_status=escalation_status,
                detail=detail or {},
            )
        )
        self._woken = True

    async def _flush(
        self, escalation: tuple[RecordEscalation, str] | None = None
    ) -> EscalationRecorded | None:
        """Write queued rows in order (with a fired escalation's row, when given), then show
        the new state to ops."""
        while self._handoffs_to_start:
            await self._start_handoff(self._handoffs_to_start.pop(0))
        while self._handoffs_to_notify:
            handoff = self._handoffs_to_notify.pop(0)
            await workflow.get_external_workflow_handle(f"handoff-{handoff.handoff_id}").signal(
                HandoffWorkflow.assign, handoff.assignee_id or ""
            )
        while self._handoffs_to_cancel:
            handoff = self._handoffs_to_cancel.pop(0)
            await workflow.get_external_workflow_handle(f"handoff-{handoff.handoff_id}").signal(
                HandoffWorkflow.cancel, handoff.note or "deal closed"
            )
        while self._pending_activities:
            activity, depth, fired = self._pending_activities.pop(0)
            self._apply_automations(activity, depth, fired)
        if not self._outbox:
            return None
        recorded = None
        async with self._lock:
            batch, self._outbox = self._outbox, []
            self.state.saved_version += 1
            # A write retried after a crash carries the same saved_version but may hold more
            # changes; the history length (under Temporal's 51,200-event cap) breaks the tie.
            version = self.state.saved_version * 1_000_000 + workflow.info().get_current_history_length()
            row = OpportunityRow.of(self.state, version)
            rows = PersistBatch(opportunity=row, changes=batch, handoffs=list(self.state.handoffs))
            if escalation is not None:
                record, summary = escalation
                recorded = await workflow.execute_local_activity_method(
                    OpportunityStore.persist_escalation,
                    EscalatedBatch(batch=rows, escalation=record),
                    summary=summary,
                    **DB_WRITE,
                )
            else:
                await workflow.execute_local_activity_method(
                    OpportunityStore.persist,
                    rows,
                    summary=f"save {len(batch)} change(s): {', '.join(c.kind for c in batch)}"[:200],
                    **DB_WRITE,  # type: ignore[arg-type]
                )
        updates = search_attributes.updates_for(self.state)
        if self._only_changed_search_attributes:
            updates = search_attributes.changed(updates, workflow.info().typed_search_attributes)
        if updates:
            workflow.upsert_search_attributes(updates)
        workflow.set_current_details(deal_card.render(self.state, workflow.now()))
        return recorded

    def _record_creation(self, create: CreateOpportunity) -> None:
        s = self.state
        self._changed(
            "create",
            create.request_id,
            create.actor.id,
            stage_change=self._stage_row(None, "created" if create.stage_entered_at is None else "imported"),
            detail={"stage_entered_at": s.stage_entered_at.isoformat()},
        )
        if not s.is_closed:  # a deal created already closed is history brought in: no new work
            self._open_stage_handoffs()
        s.remember(self._result(create.request_id, f"created in {s.stage}"))

    def _stage_row(self, from_stage: str | None, reason: str | None) -> StageChangeRow:
        s = self.state
        return StageChangeRow(
            from_stage=from_stage,
            to_stage=s.stage,
            reason=reason,
            stage_entry_seq=s.stage_entry_seq,
            amount=s.amount,
            probability=s.probability,
            forecast_category=s.forecast_category,
            close_date=s.close_date,
        )

    def _result(self, request_id: str, message: str) -> CommandResult:
        return CommandResult(
            request_id=request_id,
            message=message,
            stage=self.state.stage,
            stage_entry_seq=self.state.stage_entry_seq,
        )

    # -- validation ------------------------------------------------------------------------

    def _refuse(
        self, name: str, cmd: Command, refusal: CommandRefused, source: str = "validator"
    ) -> ApplicationError:
        # Validators never run on replay; a handler does, and must not note the refusal twice.
        if workflow.unsafe.is_replaying():
            return refusal_error(refusal)
        rejection_log.push(
            RejectedCommand(
                opportunity_id=self.state.opportunity_id,
                request_id=cmd.request_id,
                command=name,
                actor_id=cmd.actor.id,
                actor_role=cmd.actor.role,
                rule=refusal.rule,
                message=refusal.message,
                missing=refusal.missing,
                rejected_at=workflow.now(),
                source=source,
            )
        )
        return refusal_error(refusal)

    def _parse(self, name: str, model: type[CommandT], raw: Any) -> CommandT:
        """Read a payload; a malformed one is refused naming the field and the rule."""
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            refusal = malformed(exc)
            rejection_log.push(
                RejectedCommand(
                    opportunity_id=self.state.opportunity_id,
                    request_id=str(raw.get("request_id", ""))[:120] if isinstance(raw, dict) else "",
                    command=name,
                    actor_id=None,
                    actor_role=None,
                    rule=refusal.rule,
                    message=refusal.message[:2000],
                    rejected_at=workflow.now(),
                    source="validator",
                )
            )
            raise refusal_error(refusal) from None

    def _validate(self, name: str, cmd: Command, check: Any) -> None:
        if cmd.request_id in self.state.processed:
            return  # a repeat: accepted, answers what the first one answered
        if self.state.finished:
            raise ApplicationError("opportunity workflow has finished", type="finished")
        try:
            check()
        except CommandRefused as refusal:
            raise self._refuse(name, cmd, refusal) from None

    def _recheck(self, check: Any) -> None:
        """State may have moved between validation and execution: check again."""
        try:
            check()
        except CommandRefused as refusal:
            raise refusal_error(refusal) from None

    # -- stage and fields --------------------------------------------------------------------

    @workflow.update(name="change_stage", description="Move the deal to another stage (closing included).")
    async def change_stage(self, raw: Any) -> CommandResult:
        cmd = ChangeStage.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: stage_rules.check_change_stage(self.state, cmd))
        return self._move(
            cmd.request_id,
            cmd.actor.id,
            cmd.stage,
            cmd.reason,
            cmd.fields,
            cmd.amount,
            cmd.close_date,
            "change_stage",
        )

    @change_stage.validator
    def _validate_change_stage(self, raw: Any) -> None:
        cmd = self._parse("change_stage", ChangeStage, raw)
        self._validate("change_stage", cmd, lambda: stage_rules.check_change_stage(self.state, cmd))

    def _move(
        self,
        request_id: str,
        actor_id: str,
        stage: str,
        reason: str | None,
        fields: dict[str, Any],
        amount: Any,
        close_date: Any,
        kind: str,
    ) -> CommandResult:
        s = self.state
        field_changes = self._apply_fields(fields, amount, close_date)
        previous_seq, from_stage = s.stage_entry_seq, s.stage
        stage_rules.apply_stage(s, stage, workflow.now())
        escalation_ladder.refresh_next_due(s)
        self._changed(
            kind,
            request_id,
            actor_id,
            stage_change=self._stage_row(from_stage, reason),
            field_changes=field_changes,
            escalation_status=EscalationStatusChange(stage_entry_seq=previous_seq, status="resolved"),
            detail={"reason": reason} if reason else {},
        )
        if s.is_closed:
            self._cancel_presale_handoffs()
        self._open_stage_handoffs()
        self._queue_stage_event(from_stage, actor_id)
        return s.remember(self._result(request_id, f"moved from {from_stage} to {s.stage}"))

    def _apply_fields(
        self, fields: dict[str, Any], amount: Any, close_date: Any, name: Any = None
    ) -> list[FieldChangeRow]:
        s = self.state
        before = {**stage_rules.current_values(s), "name": s.name}
        stage_rules.apply_fields(s, fields, amount, close_date, name)
        after = {**stage_rules.current_values(s), "name": s.name}
        changed = [k for k in after.keys() | before.keys() if before.get(k) != after.get(k)]
        return [
            FieldChangeRow(field=k, old_value=_jsonable(before.get(k)), new_value=_jsonable(after.get(k)))
            for k in sorted(changed)
        ]

    @workflow.update(name="update_fields", description="Set deal fields, amount, close date or name.")
    async def update_fields(self, raw: Any) -> CommandResult:
        cmd = UpdateFields.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: stage_rules.check_update_fields(self.state, cmd))
        changes = self._apply_fields(cmd.fields, cmd.amount, cmd.close_date, cmd.name)
        self._changed("update_fields", cmd.request_id, cmd.actor.id, field_changes=changes)
        names = ", ".join(c.field for c in changes) or "nothing changed"
        return self.state.remember(self._result(cmd.request_id, f"updated {names}"))

    @update_fields.validator
    def _validate_update_fields(self, raw: Any) -> None:
        cmd = self._parse("update_fields", UpdateFields, raw)
        self._validate("update_fields", cmd, lambda: stage_rules.check_update_fields(self.state, cmd))

    @workflow.update(name="reopen", description="Reopen a closed deal into an open stage (managers, admins).")
    async def reopen(self, raw: Any) -> CommandResult:
        cmd = Reopen.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: stage_rules.check_reopen(self.state, cmd))
        return self._move(cmd.request_id, cmd.actor.id, cmd.stage, cmd.reason, {}, None, None, "reopen")

    @reopen.validator
    def _validate_reopen(self, raw: Any) -> None:
        cmd = self._parse("reopen", Reopen, raw)
        self._validate("reopen", cmd, lambda: stage_rules.check_reopen(self.state, cmd))

    @workflow.update(name="migrate_process", description="Admin: pin the deal to another process version.")
    async def migrate_process(self, raw: Any) -> CommandResult:
        cmd = MigrateProcess.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: self._check_migration(cmd))
        old = self.state.process
        new = shared_process(SalesProcess.model_validate(cmd.process))
        self.state.process = new
        escalation_ladder.refresh_next_due(self.state)
        self._changed(
            "migrate_process",
            cmd.request_id,
            cmd.actor.id,
            detail={
                "from": f"{old.name} v{old.version}",
                "to": f"{new.name} v{new.version}",
                "reason": cmd.reason,
            },
        )
        return self.state.remember(
            self._result(
                cmd.request_id, f"migrated from {old.name} v{old.version} to {new.name} v{new.version}"
            )
        )

    def _check_migration(self, cmd: MigrateProcess) -> None:
        permissions.require(self.state, cmd.actor, ["admin"], "migrate the process", "admin_only")
        try:
            new = SalesProcess.model_validate(cmd.process)
        except ValueError as exc:
            raise CommandRefused("invalid_process", f"process does not validate: {exc}") from None
        if not new.has_stage(self.state.stage):
            raise CommandRefused(
                "stage_not_in_process",
                f"stage {self.state.stage} does not exist in {new.name} v{new.version}",
            )

    @migrate_process.validator
    def _validate_migrate_process(self, raw: Any) -> None:
        cmd = self._parse("migrate_process", MigrateProcess, raw)
        self._validate("migrate_process", cmd, lambda: self._check_migration(cmd))

    # -- ownership and team -------------------------------------------------------------------

    def _check_reassign(self, cmd: Reassign) -> None:
        permissions.require(
            self.state,
            cmd.actor,
            self.state.process.rules.reassign_roles,
            "reassign the deal",
            "reassign_roles",
        )
        if cmd.owner_id == self.state.owner_id:
            raise CommandRefused("same_owner", f"{cmd.owner_id} already owns the deal")

    @workflow.update(name="reassign", description="Give the deal to a new owner (managers, admins).")
    async def reassign(self, raw: Any) -> CommandResult:
        cmd = Reassign.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        async with self._lock:
            self._recheck(lambda: self._check_reassign(cmd))
            chain = await self._org_chain(cmd.owner_id)
            if earlier := self.state.answer_to(cmd.request_id):
                return earlier
            if not chain.exists:
                raise self._refuse(
                    "reassign",
                    cmd,
                    CommandRefused("unknown_user", f"{cmd.owner_id} is not in the org chart"),
                    "handler",
                )
            s = self.state
            previous = s.owner_id
            s.owner_id, s.owner_managers = cmd.owner_id, chain.managers
            if s.process.rules.reassign_resets_clock:
                s.stage_entered_at = workflow.now()
                s.clock.paused_seconds = 0
            escalation_ladder.refresh_next_due(s)
            self._changed(
                "reassign",
                cmd.request_id,
                cmd.actor.id,
                field_changes=[FieldChangeRow(field="owner_id", old_value=previous, new_value=cmd.owner_id)],
                detail={"reason": cmd.reason} if cmd.reason else {},
            )
            return s.remember(self._result(cmd.request_id, f"reassigned from {previous} to {cmd.owner_id}"))

    @reassign.validator
    def _validate_reassign(self, raw: Any) -> None:
        cmd = self._parse("reassign", Reassign, raw)
        self._validate("reassign", cmd, lambda: self._check_reassign(cmd))

    async def _org_chain(self, user_id: str) -> OrgChain:
        return await workflow.execute_local_activity_method(
            OpportunityStore.org_chain,
            OrgChainRequest(user_id=user_id),
            summary=f"look up {user_id} in the org chart",
            **DB_WRITE,  # type: ignore[arg-type]
        )

    def _check_add_member(self, cmd: AddTeamMember) -> None:
        permissions.require(
            self.state, cmd.actor, self.state.process.rules.team_roles, "change the deal team", "team_roles"
        )
        if cmd.team_role in self.state.team_roles_of(cmd.user_id):
            raise CommandRefused(
                "already_on_team", f"{cmd.user_id} is already on the team as {cmd.team_role}"
            )

    @workflow.update(name="add_team_member", description="Add a person to the deal team with a role.")
    async def add_team_member(self, raw: Any) -> CommandResult:
        cmd = AddTeamMember.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        async with self._lock:
            self._recheck(lambda: self._check_add_member(cmd))
            chain = await self._org_chain(cmd.user_id)
            if earlier := self.state.answer_to(cmd.request_id):
                return earlier
            if not chain.exists:
                raise self._refuse(
                    "add_team_member",
                    cmd,
                    CommandRefused("unknown_user", f"{cmd.user_id} is not in the org chart"),
                    "handler",
                )
            s = self.state
            s.team.append(TeamMember(user_id=cmd.user_id, team_role=cmd.team_role, added_at=workflow.now()))
            for handoff in s.open_handoffs():
                if handoff.assignee_id is None and handoff.team_role == cmd.team_role:
                    handoff.assignee_id, handoff.status = cmd.user_id, "open"
                    self._handoffs_to_notify.append(handoff)
            self._changed(
                "add_team_member",
                cmd.request_id,
                cmd.actor.id,
                detail={"user_id": cmd.user_id, "team_role": cmd.team_role},
            )
            return s.remember(self._result(cmd.request_id, f"{cmd.user_id} joined as {cmd.team_role}"))

    @add_team_member.validator
    def _validate_add_member(self, raw: Any) -> None:
        cmd = self._parse("add_team_member", AddTeamMember, raw)
        self._validate("add_team_member", cmd, lambda: self._check_add_member(cmd))

    def _check_remove_member(self, cmd: RemoveTeamMember) -> None:
        permissions.require(
            self.state, cmd.actor, self.state.process.rules.team_roles, "change the deal team", "team_roles"
        )
        if not self.state.team_roles_of(cmd.user_id):
            raise CommandRefused("not_on_team", f"{cmd.user_id} is not on the deal team")

    @workflow.update(name="remove_team_member", description="Remove a person from the deal team.")
    async def remove_team_member(self, raw: Any) -> CommandResult:
        cmd = RemoveTeamMember.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: self._check_remove_member(cmd))
        self.state.team = [m for m in self.state.team if m.user_id != cmd.user_id]
        self._changed("remove_team_member", cmd.request_id, cmd.actor.id, detail={"user_id": cmd.user_id})
        return self.state.remember(self._result(cmd.request_id, f"{cmd.user_id} left the team"))

    @remove_team_member.validator
    def _validate_remove_member(self, raw: Any) -> None:
        cmd = self._parse("remove_team_member", RemoveTeamMember, raw)
        self._validate("remove_team_member", cmd, lambda: self._check_remove_member(cmd))

    # -- escalation ladder ---------------------------------------------------------------------

    @workflow.update(
        name="acknowledge_escalation", description="Stop the ladder climbing until the next stage change."
    )
    async def acknowledge_escalation(self, raw: Any) -> CommandResult:
        cmd = AcknowledgeEscalation.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: escalation_ladder.check_acknowledge(self.state, cmd))
        s = self.state
        s.clock.acknowledged_by, s.clock.acknowledged_note = cmd.actor.id, cmd.note
        escalation_ladder.refresh_next_due(s)
        self._changed(
            "acknowledge_escalation",
            cmd.request_id,
            cmd.actor.id,
            escalation_status=EscalationStatusChange(
                stage_entry_seq=s.stage_entry_seq, status="acknowledged", note=cmd.note
            ),
            detail={"note": cmd.note} if cmd.note else {},
        )
        return s.remember(self._result(cmd.request_id, f"escalation level {s.clock.level} acknowledged"))

    @acknowledge_escalation.validator
    def _validate_acknowledge(self, raw: Any) -> None:
        cmd = self._parse("acknowledge_escalation", AcknowledgeEscalation, raw)
        self._validate(
            "acknowledge_escalation", cmd, lambda: escalation_ladder.check_acknowledge(self.state, cmd)
        )

    @workflow.update(name="snooze_escalation", description="Push the next escalation level to a date.")
    async def snooze_escalation(self, raw: Any) -> CommandResult:
        cmd = SnoozeEscalation.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: escalation_ladder.check_snooze(self.state, cmd, workflow.now()))
        s = self.state
        escalation_ladder.apply_snooze(s, cmd.until)
        self._changed(
            "snooze_escalation",
            cmd.request_id,
            cmd.actor.id,
            escalation_status=EscalationStatusChange(
                stage_entry_seq=s.stage_entry_seq, status="snoozed", note=f"until {cmd.until.isoformat()}"
            ),
            detail={"until": cmd.until.isoformat()},
        )
        return s.remember(
            self._result(cmd.request_id, f"next escalation snoozed until {cmd.until.isoformat()}")
        )

    @snooze_escalation.validator
    def _validate_snooze(self, raw: Any) -> None:
        cmd = self._parse("snooze_escalation", SnoozeEscalation, raw)
        self._validate(
            "snooze_escalation", cmd, lambda: escalation_ladder.check_snooze(self.state, cmd, workflow.now())
        )

    @workflow.update(name="pause_clock", description="Pause the stuck clock while the deal waits on others.")
    async def pause_clock(self, raw: Any) -> CommandResult:
        cmd = PauseClock.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: escalation_ladder.check_pause(self.state, cmd, workflow.now()))
        escalation_ladder.apply_pause(self.state, cmd.reason, cmd.until, workflow.now())
        self._changed(
            "pause_clock",
            cmd.request_id,
            cmd.actor.id,
            detail={"reason": cmd.reason, "until": cmd.until.isoformat() if cmd.until else None},
        )
        return self.state.remember(self._result(cmd.request_id, f"stage clock paused: {cmd.reason}"))

    @pause_clock.validator
    def _validate_pause(self, raw: Any) -> None:
        cmd = self._parse("pause_clock", PauseClock, raw)
        self._validate(
            "pause_clock", cmd, lambda: escalation_ladder.check_pause(self.state, cmd, workflow.now())
        )

    @workflow.update(name="resume_clock", description="Resume the stuck clock; paused time does not count.")
    async def resume_clock(self, raw: Any) -> CommandResult:
        cmd = ResumeClock.model_validate(raw)
        if earlier := self.state.answer_to(cmd.request_id):
            return earlier
        self._recheck(lambda: escalation_ladder.check_resume(self.state, cmd))
        escalation_ladder.apply_resume(self.state, workflow.now())
        self._changed("resume_clock", cmd.request_id, cmd.actor.id)
        return self.state.remember(self._result(cmd.request_id, "stage clock running again"))

    @resume_clock.validator
    def _validate_resume(self, raw: Any) -> None:
        cmd = self._parse("resume_clock", ResumeClock, raw)
        self._validate("resume_clock", cmd, lambda: escalation_ladder.check_resume(self.state, cmd))

    # -- activities and automations ------------------------------------------------------------

    @workflow.signal(
        name="record_activity",
        description="A task, meeting, call, email, note or business event around the deal.",
    )
    def record_activity(self, raw: Any) -> None:
        try:
            cmd = RecordActivity.model_validate(raw)
        except ValidationError as exc:
            # A signal cannot be refused to its sender: the refusal shows in state and audit.
            self._note_refusal("record_activity", raw, malformed(exc))
            return
        s = self.state
        if cmd.request_id in s.processed:
            return
        occurred = cmd.occurred_at or workflow.now()
        s.last_activity_at = max(s.last_activity_at or occurred, occurred)
        s.activity_count += 1
        s.recent_activities = [
            *s.recent_activities[-(RECENT_EVENTS - 1) :],
            ActivityNote(
                request_id=cmd.request_id,
                kind=cmd.kind,
                subject=cmd.subject,
                outcome=cmd.outcome,
                occurred_at=occurred,
                actor_id=cmd.actor.id,
            ),
        ]
        self._changed(
            "record_activity",
            cmd.request_id,
            cmd.actor.id,
            activity=ActivityRow(
                kind=cmd.kind, subject=cmd.subject, outcome=cmd.outcome, occurred_at=occurred, data=cmd.data
            ),
        )
        s.remember(self._result(cmd.request_id, f"recorded {cmd.kind}"))
        self._pending_activities.append((cmd, 0, frozenset()))

    def _apply_automations(self, activity: RecordActivity, depth: int, fired: frozenset[str]) -> None:
        s = self.state
        if automations.matching_rules(activity, s) and not permissions.standing(s, activity.actor):
            refusal = CommandRefused(
                "automation_sender",
                f"{permissions.describe(activity.actor, set())} may not trigger automations on this deal",
            )
            for rule in automations.matching_rules(activity, s):
                self._automation_refused(activity, rule.name, refusal)
            return
        for rule in s.process.automations:
            # Checked rule by rule: an earlier rule may have moved the deal.
            if s.is_closed or not automations.matches(rule, activity, s):
                continue
            if rule.name in fired:
                continue  # a rule never re-triggers itself through its own change
            if depth >= s.process.rules.max_automation_chain:
                self._automation_refused(
                    activity,
                    rule.name,
                    CommandRefused(
                        "automation_chain_limit",
                        f"automation chain stopped after {depth} steps at rule {rule.name!r}",
                    ),
                )
                return
            self._run_rule(activity, rule, depth, fired | {rule.name})

    def _run_rule(self, activity: RecordActivity, rule: Any, depth: int, fired: frozenset[str]) -> None:
        s = self.state
        actor = {"id": "automation", "role": "automation"}
        request_id = f"{activity.request_id}:{rule.name}"[:120]
        action = rule.then
        target = action.advance_to or (
            s.process.won_stage.name
            if action.close == "won"
            else s.process.lost_stage.name
            if action.close == "lost"
            else None
        )
        try:
            if target and target != s.stage:
                cmd = ChangeStage(
                    request_id=_safe_id(request_id),
                    actor=actor,
                    stage=target,
                    reason=f"automation: {rule.name}",
                    fields=action.set_fields,
                )
                stage_rules.check_change_stage(s, cmd)
                self._automation_chain = (depth + 1, fired)
                try:
                    self._move(
                        cmd.request_id,
                        "automation",
                        target,
                        cmd.reason,
                        action.set_fields,
                        None,
                        None,
                        "automation",
                    )
                finally:
                    self._automation_chain = None
            elif action.set_fields:
                upd = UpdateFields(request_id=_safe_id(request_id), actor=actor, fields=action.set_fields)
                stage_rules.check_update_fields(s, upd)
                changes = self._apply_fields(action.set_fields, None, None)
                self._changed(
                    "automation",
                    upd.request_id,
                    "automation",
                    field_changes=changes,
                    detail={"rule": rule.name},
                )
        except CommandRefused as refusal:
            self._automation_refused(activity, rule.name, refusal)
            return
        if action.notify:
            self._changed(
                "automation_notify",
                _safe_id(f"{request_id}:notify"),
                "automation",
                detail={"rule": rule.name, "notify": action.notify.value},
            )

    def _queue_stage_event(self, from_stage: str, actor_id: str) -> None:
        """A stage change is itself an event automations may react to (``stage_changed``)."""
        if not any(r.when.kind == "stage_changed" for r in self.state.process.automations):
            return
        # A change made by a rule carries its chain: depth so far and the rules that fired.
        depth, fired = self._automation_chain or (0, frozenset())
        event = RecordActivity(
            request_id=_safe_id(f"stage-{self.state.stage_entry_seq}"),
            actor={"id": actor_id, "role": "automation"},  # type: ignore[arg-type]
            kind="stage_changed",
            data={"from_stage": from_stage, "to_stage": self.state.stage},
        )
        self._pending_activities.append((event, depth, fired))

    def _note_refusal(self, name: str, raw: Any, refusal: CommandRefused) -> None:
        actor = raw.get("actor") if isinstance(raw, dict) else None
        actor_id = str(actor.get("id"))[:120] if isinstance(actor, dict) else "unknown"
        self.state.refusals = [
            *self.state.refusals[-(RECENT_EVENTS - 1) :],
            Refusal(
                at=workflow.now(),
                actor_id=actor_id,
                command=name,
                rule=refusal.rule,
                message=refusal.message[:2000],
            ),
        ]
        self._changed(
            "signal_refused",
            f"refused-{workflow.uuid4().hex}",
            actor_id,
            detail={"command": name, "rule": refusal.rule, "message": refusal.message[:2000]},
        )

    def _automation_refused(self, activity: RecordActivity, rule: str, refusal: CommandRefused) -> None:
        s = self.state
        now = workflow.now()
        s.refusals = [
            *s.refusals[-(RECENT_EVENTS - 1) :],
            Refusal(
                at=now,
                actor_id="automation",
                command=f"automation {rule!r} on {activity.kind}",
                rule=refusal.rule,
                message=refusal.message,
                missing=refusal.missing,
            ),
        ]
        self._changed(
            "automation_refused",
            _safe_id(f"{activity.request_id}:{rule}:refused"),
            "automation",
            detail={
                "rule": rule,
                "refusal_rule": refusal.rule,
                "message": refusal.message,
                "missing": refusal.missing,
                "activity": activity.kind,
            },
        )

    # -- hand-offs --------------------------------------------------------------------------------

    def _cancel_presale_handoffs(self) -> None:
        """A closed deal needs no more pre-sale work: its open hand-offs stop escalating."""
        for handoff in self.state.open_handoffs():
            if not handoff.post_sale:
                handoff.status, handoff.finished_at = "cancelled", workflow.now()
                handoff.note = f"deal closed: {self.state.stage}"
                self._handoffs_to_cancel.append(handoff)

    def _open_stage_handoffs(self) -> None:
        s = self.state
        stage = s.process.stage(s.stage)
        for kind in stage.starts_handoffs:
            spec = s.process.handoffs[kind]
            if any(h.kind == kind and h.status in ("open", "unassigned", "completed") for h in s.handoffs):
                continue
            assignee = next((m.user_id for m in s.team if m.team_role == spec.team_role), None)
            handoff = Handoff(
                handoff_id=f"{s.opportunity_id}-{kind}-{s.stage_entry_seq}",
                kind=kind,
                title=spec.title,
                team_role=spec.team_role,
                assignee_id=assignee,
                stage=s.stage,
                post_sale=spec.post_sale,
                status="open" if assignee else "unassigned",
                opened_at=workflow.now(),
            )
            s.handoffs.append(handoff)
            self._handoffs_to_start.append(handoff)

    async def _start_handoff(self, handoff: Handoff) -> None:
        s = self.state
        spec = s.process.handoffs[handoff.kind]
        try:
            await workflow.start_child_workflow(
                HandoffWorkflow.run,
                HandoffInput(
                    handoff=handoff,
                    spec=spec,
                    opportunity_id=s.opportunity_id,
                    opportunity_name=s.name,
                    account=s.account,
                    owner_id=s.owner_id,
                    holidays=s.process.holidays,
                    managers=s.owner_managers,
                ),
                id=f"handoff-{handoff.handoff_id}",
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                static_summary=f"{handoff.title} for {s.name} ({s.account})",
            )
        except Exception as exc:
            if "already" not in str(exc).lower():
                raise

    @workflow.signal(name="handoff_finished", description="A hand-off was completed or declined.")
    def handoff_finished(self, raw: Any) -> None:
        try:
            cmd = HandoffDone.model_validate(raw)
        except ValidationError as exc:
            self._note_refusal("handoff_finished", raw, malformed(exc))
            return
        s = self.state
        if cmd.request_id in s.processed:
            return
        handoff = next((h for h in s.handoffs if h.handoff_id == cmd.handoff_id), None)
        if handoff is None or handoff.status not in ("open", "unassigned"):
            return
        handoff.status = "completed" if cmd.outcome == "completed" else "declined"
        handoff.finished_at = workflow.now()
        handoff.note = cmd.note
        self._changed(
            "handoff_" + handoff.status,
            cmd.request_id,
            cmd.actor.id,
            detail={"handoff_id": handoff.handoff_id, "kind": handoff.kind, "note": cmd.note},
        )
        s.remember(self._result(cmd.request_id, f"hand-off {handoff.title} {handoff.status}"))

    @workflow.signal(name="check_clock", description="Re-arm the stage clock: fire any level now due.")
    def check_clock(self) -> None:
        self._woken = True
        self._recheck_due = True

    # -- reads ------------------------------------------------------------------------------------

    @workflow.query(name="get_state", description="The whole current state of the deal as JSON.")
    def get_state(self) -> dict[str, Any]:
        s = self.state
        data = s.model_dump(mode="json", exclude={"processed", "process"})
        data["process"] = {"name": s.process.name, "version": s.process.version}
        data["escalation_level"] = s.clock.level
        data["next_escalation_due_at"] = (
            s.clock.next_level_due_at.isoformat() if s.clock.next_level_due_at else None
        )
        data["requirements"] = stage_rules.requirements_view(s)
        data["pending_writes"] = len(self._outbox)
        return data


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _safe_id(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "_.:@-" else "-" for ch in text)
    return cleaned.lstrip("-_.:@")[:120] or "automation"
