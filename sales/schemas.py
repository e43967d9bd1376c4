"""JSON Schemas of every message callers exchange with an opportunity, for integrators
that do not use Python: one file per message under ``schemas/``, generated from the
pydantic models in ``sales.messages``, each with a valid example payload.

    python -m sales.schemas            # write schemas/*.json
    python -m sales.schemas --check    # exit 1 when the committed files are out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sales import messages as m

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_ACTOR = {"id": "rep-1", "role": "rep"}
_SERVICE = {"id": "crm-sync", "role": "automation"}
_SMALLEST_PROCESS = {
    "name": "inbound",
    "version": 2,
    "stages": [
        {"name": "Working", "probability": 30, "forecast_category": "Pipeline", "requires": ["budget"]},
        {"name": "Won", "probability": 100, "forecast_category": "Closed", "closed": True, "won": True},
        {"name": "Lost", "probability": 0, "forecast_category": "Omitted", "closed": True},
    ],
}


@dataclass(frozen=True)
class Message:
    model: type[BaseModel]
    usage: str
    example: dict[str, Any]
    mode: str = "validation"  # "serialization" for what oppflow answers


MESSAGES: dict[str, Message] = {
    "create_opportunity": Message(
        m.CreateOpportunity,
        "Input of a new OpportunityWorkflow (workflow id opportunity-<opportunity_id>), "
        "as `oppflow opp create` and POST /opportunities send it.",
        {
            "request_id": "create-7f3a",
            "actor": _ACTOR,
            "opportunity_id": "acme-2026",
            "name": "Acme rollout",
            "account": "Acme",
            "owner_id": "rep-1",
            "amount": "50000.00",
            "close_date": "2026-12-31",
            "fields": {"pain_points": "manual quoting"},
        },
    ),
    "change_stage": Message(
        m.ChangeStage,
        "Temporal update change_stage on OpportunityWorkflow; closing is a change to a closed stage.",
        {
            "request_id": "move-1",
            "actor": _ACTOR,
            "stage": "Qualification",
            "reason": "budget confirmed",
            "fields": {"budget": 80000, "timeline": "Q1"},
        },
    ),
    "update_fields": Message(
        m.UpdateFields,
        "Temporal update update_fields on OpportunityWorkflow.",
        {"request_id": "edit-1", "actor": _ACTOR, "fields": {"competitors": "Globex"}, "amount": "64000"},
    ),
    "reopen": Message(
        m.Reopen,
        "Temporal update reopen on OpportunityWorkflow (managers and admins by default).",
        {
            "request_id": "reopen-1",
            "actor": {"id": "mgr-1", "role": "manager"},
            "stage": "Qualification",
            "reason": "budget is back",
        },
    ),
    "reassign": Message(
        m.Reassign,
        "Temporal update reassign on OpportunityWorkflow (managers and admins by default).",
        {
            "request_id": "reassign-1",
            "actor": {"id": "mgr-1", "role": "manager"},
            "owner_id": "rep-2",
            "reason": "territory change",
        },
    ),
    "add_team_member": Message(
        m.AddTeamMember,
        "Temporal update add_team_member on OpportunityWorkflow.",
        {"request_id": "team-1", "actor": _ACTOR, "user_id": "se-1", "team_role": "sales_engineer"},
    ),
    "remove_team_member": Message(
        m.RemoveTeamMember,
        "Temporal update remove_team_member on OpportunityWorkflow.",
        {"request_id": "team-2", "actor": _ACTOR, "user_id": "se-1"},
    ),
    "acknowledge_escalation": Message(
        m.AcknowledgeEscalation,
        "Temporal update acknowledge_escalation on OpportunityWorkflow.",
        {"request_id": "ack-1", "actor": {"id": "mgr-1", "role": "manager"}, "note": "calling them today"},
    ),
    "snooze_escalation": Message(
        m.SnoozeEscalation,
        "Temporal update snooze_escalation on OpportunityWorkflow; until needs a time zone.",
        {
            "request_id": "snooze-1",
            "actor": {"id": "mgr-1", "role": "manager"},
            "until": "2026-12-01T09:00:00Z",
        },
    ),
    "pause_clock": Message(
        m.PauseClock,
        "Temporal update pause_clock on OpportunityWorkflow.",
        {
            "request_id": "pause-1",
            "actor": _ACTOR,
            "reason": "customer in a procurement freeze",
            "until": "2027-01-10T09:00:00Z",
        },
    ),
    "resume_clock": Message(
        m.ResumeClock,
        "Temporal update resume_clock on OpportunityWorkflow.",
        {"request_id": "resume-1", "actor": _ACTOR},
    ),
    "migrate_process": Message(
        m.MigrateProcess,
        "Temporal update migrate_process on OpportunityWorkflow (admins): process is a whole published "
        "version, as stored in sales_processes.definition.",
        {
            "request_id": "migrate-1",
            "actor": {"id": "ops-1", "role": "admin"},
            "process": _SMALLEST_PROCESS,
            "reason": "new required field",
        },
    ),
    "handoff_decision": Message(
        m.HandoffDecision,
        "Temporal updates complete_handoff and decline_handoff on HandoffWorkflow "
        "(workflow id handoff-<opportunity id>-<hand-off kind>-<stage entry>), from the assignee, "
        "a manager or an admin.",
        {
            "request_id": "tv-done-1",
            "actor": {"id": "se-1", "role": "sales_engineer"},
            "note": "SSO confirmed",
        },
    ),
    "record_activity": Message(
        m.RecordActivity,
        "Temporal signal record_activity on OpportunityWorkflow, sent by people and backend services "
        "(`temporal workflow signal --name record_activity --input '{...}'`).",
        {
            "request_id": "mtg-88",
            "actor": _SERVICE,
            "kind": "meeting",
            "subject": "Discovery with Acme IT",
            "outcome": "completed",
            "occurred_at": "2026-03-02T15:30:00Z",
            "data": {"type": "discovery"},
        },
    ),
    "handoff_finished": Message(
        m.HandoffDone,
        "Temporal signal handoff_finished on OpportunityWorkflow, sent by its HandoffWorkflow children.",
        {
            "request_id": "acme-2026-technical_validation-6-completed",
            "actor": {"id": "se-1", "role": "automation"},
            "handoff_id": "acme-2026-technical_validation-6",
            "outcome": "completed",
            "note": "SSO confirmed",
        },
    ),
    "command_result": Message(
        m.CommandResult,
        "What every accepted update answers; a repeat of its request_id answers the same.",
        {
            "request_id": "move-1",
            "accepted": True,
            "message": "moved from Prospecting to Qualification",
            "stage": "Qualification",
            "stage_entry_seq": 2,
        },
        mode="serialization",
    ),
}


def schema_of(name: str) -> dict[str, Any]:
    message = MESSAGES[name]
    schema = message.model.model_json_schema(mode=message.mode)  # type: ignore[arg-type]
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$comment": message.usage,
        **schema,
        "examples": [message.example],
    }


def rendered(name: str) -> str:
    return json.dumps(schema_of(name), indent=2, ensure_ascii=False) + "\n"


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in MESSAGES:
        path = folder / f"{name}.json"
        path.write_text(rendered(name), encoding="utf-8")
        written.append(path)
    return written


def stale(folder: Path) -> list[str]:
    """Message names whose file under ``folder`` is missing or differs from the models."""
    out_of_date = []
    for name in MESSAGES:
        path = folder / f"{name}.json"
        if not path.exists() or path.read_text(encoding="utf-8") != rendered(name):
            out_of_date.append(name)
    return out_of_date


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sales.schemas", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default="schemas", type=Path)
    parser.add_argument("--check", action="store_true", help="fail when the files are out of date")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.folder)
        for name in problems:
            print(f"{args.folder / name}.json is out of date: run python -m sales.schemas", file=sys.stderr)
        return 1 if problems else 0
    for path in write(args.folder):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
