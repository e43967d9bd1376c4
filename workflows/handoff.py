"""HandoffWorkflow: a piece of cross-functional work on a deal (technical validation,
legal review, customer success kickoff) with its own assignee, due time and ladder.

Completed or declined by the assignee (or a manager or admin); the opportunity hears
of it through its ``handoff_finished`` signal, and a completed hand-off can satisfy a
stage's exit criteria.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.persistence import OpportunityStore
    from sales.durations import add_duration, parse_duration
    from sales.messages import HandoffDecision, HandoffDone
    from sales.records import Notification, RecordEscalation
    from sales.state import HandoffInput
    from workflows.notification import NotificationWorkflow, notify_once
    from workflows.retries import DB_WRITE


@workflow.defn(name="HandoffWorkflow")
class HandoffWorkflow:
    @workflow.init
    def __init__(self, input: HandoffInput) -> None:
        self.input = input
        self.handoff = input.handoff
        opened = input.handoff.opened_at
        self.handoff.due_at = self.handoff.due_at or add_duration(
            opened, parse_duration(input.spec.due_in), input.holidays
        )
        self._woken = False
        self._decided_by: str | None = None

    @workflow.run
    async def run(self, input: HandoffInput) -> dict[str, Any]:
        while self.handoff.status in ("open", "unassigned"):
            due = self._next_level_due()
            self._woken = False
            workflow.set_current_details(self._card())
            try:
                await workflow.wait_condition(
                    lambda: self._woken,
                    timeout=max(due - workflow.now(), timedelta(0)) if due else None,
                    timeout_summary=f"hand-off due: {self.handoff.title}",
                )
            except TimeoutError:
                await self._escalate()
        await workflow.wait_condition(workflow.all_handlers_finished)
        parent = workflow.info().parent
        opportunity = parent.workflow_id if parent else f"opportunity-{input.opportunity_id}"
        await workflow.get_external_workflow_handle(opportunity).signal(
            "handoff_finished",
            HandoffDone(
                request_id=f"{self.handoff.handoff_id}-{self.handoff.status}"[:120],
                actor={"id": self._decided_by or "automation", "role": "automation"},  # type: ignore[arg-type]
                handoff_id=self.handoff.handoff_id,
                outcome=self.handoff.status,
                note=self.handoff.note,
            ),
        )
        return self.handoff.model_dump(mode="json")

    def _next_level_due(self) -> datetime | None:
        steps = self.input.spec.escalation
        if self.input.level >= len(steps) or self.handoff.due_at is None:
            return None
        return add_duration(self.handoff.due_at, steps[self.input.level].offset, self.input.holidays)

    async def _escalate(self) -> None:
        step = self.input.spec.escalation[self.input.level]
        due = self._next_level_due() or workflow.now()
        self.input.level += 1
        recorded = await workflow.execute_activity_method(
            OpportunityStore.record_escalation,
            RecordEscalation(
                opportunity_id=self.input.opportunity_id,
                opportunity_name=self.input.opportunity_name,
                account=self.input.account,
                subject=self.handoff.handoff_id,
                stage=f"hand-off: {self.handoff.title}",
                stage_entry_seq=0,
                stage_entered_at=self.handoff.opened_at,
                level=self.input.level,
                notify=step.notify.value,
                owner_id=self.input.owner_id,
                assignee_id=self.handoff.assignee_id,
                due_at=due,
                fired_at=workflow.now(),
            ),
            summary=f"hand-off overdue: notify {step.notify.value} (level {self.input.level})",
            **DB_WRITE,  # type: ignore[arg-type]
        )
        await notify_once(
            Notification(
                webhook_id=recorded.webhook_id,
                event_type="handoff.overdue",
                payload={
                    "opportunity_id": self.input.opportunity_id,
                    "handoff_id": self.handoff.handoff_id,
                    "title": self.handoff.title,
                    "assignee_id": self.handoff.assignee_id,
                    "recipient_id": recorded.recipient_id,
                    "level": self.input.level,
                    "due_at": self.handoff.due_at.isoformat() if self.handoff.due_at else None,
                },
                endpoints=step.webhooks,
            ),
            NotificationWorkflow.run,
        )

    def _check_decider(self, cmd: HandoffDecision) -> None:
        if self.handoff.status not in ("open", "unassigned"):
            raise ApplicationError(f"hand-off is already {self.handoff.status}", type="handoff_finished")
        actor = cmd.actor
        allowed = (
            actor.id == self.handoff.assignee_id
            or actor.role == "admin"
            or (actor.role == "manager" and actor.id in self.input.managers)
        )
        if not allowed:
            raise ApplicationError(
                f"{actor.id} may not decide hand-off {self.handoff.title}: allowed for the assignee "
                f"({self.handoff.assignee_id or 'none yet'}), the deal owner's managers, admins",
                type="handoff_assignee",
            )

    def _decide(self, cmd: HandoffDecision, status: str) -> dict[str, Any]:
        self.handoff.status = status
        self.handoff.note = cmd.note
        self.handoff.finished_at = workflow.now()
        self._decided_by = cmd.actor.id
        self._woken = True
        return self.handoff.model_dump(mode="json")

    @workflow.update(name="complete_handoff", description="The assignee finished the hand-off.")
    def complete_handoff(self, cmd: HandoffDecision) -> dict[str, Any]:
        return self._decide(cmd, "completed")

    @complete_handoff.validator
    def _validate_complete(self, cmd: HandoffDecision) -> None:
        self._check_decider(cmd)

    @workflow.update(name="decline_handoff", description="The assignee declined the hand-off.")
    def decline_handoff(self, cmd: HandoffDecision) -> dict[str, Any]:
        return self._decide(cmd, "declined")

    @decline_handoff.validator
    def _validate_decline(self, cmd: HandoffDecision) -> None:
        self._check_decider(cmd)

    @workflow.signal(name="assign", description="The deal team now has someone with the hand-off's role.")
    def assign(self, assignee_id: str) -> None:
        if assignee_id and self.handoff.status in ("open", "unassigned"):
            self.handoff.assignee_id = assignee_id
            self.handoff.status = "open"
            self._woken = True

    @workflow.signal(name="cancel", description="The deal closed: this pre-sale work is no longer needed.")
    def cancel(self, reason: str) -> None:
        if self.handoff.status in ("open", "unassigned"):
            self.handoff.status = "cancelled"
            self.handoff.note = reason
            self.handoff.finished_at = workflow.now()
            self._woken = True

    @workflow.query(name="get_handoff", description="The hand-off as JSON.")
    def get_handoff(self) -> dict[str, Any]:
        return self.handoff.model_dump(mode="json")

    def _card(self) -> str:
        h = self.handoff
        due = f"{h.due_at:%Y-%m-%d %H:%M} UTC" if h.due_at else "none"
        return (
            f"## {h.title} — {self.input.opportunity_name} ({self.input.account})\n\n"
            f"**Assignee:** {h.assignee_id or 'unassigned'} ({h.team_role})  **Status:** {h.status}\n\n"
            f"**Due:** {due}  **Escalation level:** {self.input.level}"
        )
