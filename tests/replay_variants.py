"""Changed versions of OpportunityWorkflow for the replay gate.

``ReorderedOpportunityWorkflow`` writes its search attributes before saving rows: an
unguarded change of command order, which old histories must catch. The patched variant
makes the same change behind ``workflow.patched``, the way a real change ships.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from sales.records import EscalationRecorded, RecordEscalation
    from sales.state import OpportunityInput
    from workflows import deal_card, search_attributes
    from workflows.opportunity import OpportunityWorkflow


@workflow.defn(name="OpportunityWorkflow")
class ReorderedOpportunityWorkflow(OpportunityWorkflow):
    @workflow.run
    async def run(self, input: OpportunityInput) -> dict[str, Any]:
        return await super().run(input)

    async def _flush(
        self, escalation: tuple[RecordEscalation, str] | None = None
    ) -> EscalationRecorded | None:
        workflow.upsert_search_attributes(search_attributes.updates_for(self.state))
        return await super()._flush(escalation)


@workflow.defn(name="OpportunityWorkflow")
class PatchedOpportunityWorkflow(OpportunityWorkflow):
    @workflow.run
    async def run(self, input: OpportunityInput) -> dict[str, Any]:
        return await super().run(input)

    async def _flush(
        self, escalation: tuple[RecordEscalation, str] | None = None
    ) -> EscalationRecorded | None:
        if workflow.patched("search-attributes-before-save") and self._outbox:
            workflow.upsert_search_attributes(search_attributes.updates_for(self.state))
            workflow.set_current_details(deal_card.render(self.state, workflow.now()))
        return await super()._flush(escalation)
