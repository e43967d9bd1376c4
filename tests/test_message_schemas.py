"""The published JSON Schemas (``schemas/*.json``): current with the models, and agreeing
with them on the contract's payloads, good and bad."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from sales import messages
from sales.process import SalesProcess
from sales.schemas import MESSAGES, stale

REPO = Path(__file__).parent.parent
SCHEMAS = REPO / "schemas"
ACTOR = {"id": "rep-1", "role": "rep"}


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_the_committed_schemas_are_current() -> None:
    assert stale(SCHEMAS) == [], "run: python -m sales.schemas"
    assert sorted(p.stem for p in SCHEMAS.glob("*.json")) == sorted(MESSAGES)
    check = subprocess.run(
        [sys.executable, "-m", "sales.schemas", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


def test_every_message_model_has_a_schema() -> None:
    models = {
        cls
        for _, cls in inspect.getmembers(messages, inspect.isclass)
        if issubclass(cls, BaseModel) and cls.__module__ == messages.__name__
    }
    # in every command's schema, never sent alone
    embedded: set[type[BaseModel]] = {messages.Actor, messages.Command}
    assert models - embedded == {m.model for m in MESSAGES.values()}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_each_schema_carries_an_example_the_models_accept(name: str) -> None:
    message = MESSAGES[name]
    [example] = validator(name).schema["examples"]
    validator(name).validate(example)
    message.model.model_validate(example)
    if name == "migrate_process":
        SalesProcess.model_validate(example["process"])


# Payloads as the contract (docs and the `temporal` CLI examples) shows them.
CONTRACT_PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("change_stage", {"request_id": "cli-1", "actor": ACTOR, "stage": "Qualification"}),
    (
        "change_stage",
        {
            "request_id": "r-2",
            "actor": ACTOR,
            "stage": "Closed Lost",
            "reason": "went dark",
            "fields": {"loss_reason": "No decision"},
        },
    ),
    ("update_fields", {"request_id": "r-3", "actor": ACTOR, "fields": {"budget": 50000, "timeline": None}}),
    (
        "reopen",
        {
            "request_id": "r-4",
            "actor": {"id": "mgr-1", "role": "manager"},
            "stage": "Qualification",
            "reason": "budget back",
        },
    ),
    ("reassign", {"request_id": "r-5", "actor": {"id": "mgr-1", "role": "manager"}, "owner_id": "rep-2"}),
    (
        "add_team_member",
        {"request_id": "r-6", "actor": ACTOR, "user_id": "se-1", "team_role": "sales_engineer"},
    ),
    ("remove_team_member", {"request_id": "r-7", "actor": ACTOR, "user_id": "se-1"}),
    ("acknowledge_escalation", {"request_id": "r-8", "actor": {"id": "mgr-1", "role": "manager"}}),
    (
        "snooze_escalation",
        {
            "request_id": "r-9",
            "actor": {"id": "mgr-1", "role": "manager"},
            "until": "2026-12-01T09:00:00+01:00",
        },
    ),
    ("pause_clock", {"request_id": "r-10", "actor": ACTOR, "reason": "customer on holiday"}),
    ("resume_clock", {"request_id": "r-11", "actor": ACTOR}),
    (
        "record_activity",
        {
            "request_id": "cli-2",
            "actor": {"id": "crm-sync", "role": "automation"},
            "kind": "call",
            "subject": "intro call",
            "outcome": "completed",
        },
    ),
    (
        "record_activity",
        {
            "request_id": "evt-9",
            "actor": {"id": "docusign", "role": "automation"},
            "kind": "contract_signed",
            "data": {"envelope": "E-123", "pages": 12, "final": True},
        },
    ),
]


@pytest.mark.parametrize(
    ("name", "payload"), CONTRACT_PAYLOADS, ids=[f"{n}-{p['request_id']}" for n, p in CONTRACT_PAYLOADS]
)
def test_the_contract_payloads_validate(name: str, payload: dict[str, Any]) -> None:
    validator(name).validate(payload)
    MESSAGES[name].model.model_validate(payload)


# Payloads the workflow refuses as malformed: the schema says no as well.
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    (
        "change_stage",
        {"request_id": "x", "actor": ACTOR, "stage": "Qualification", "colour": "red"},
        "colour",
    ),
    ("change_stage", {"request_id": "x", "stage": "Qualification"}, "actor"),
    ("change_stage", {"request_id": "x", "actor": {"id": "rep-1"}, "stage": "Qualification"}, "role"),
    ("change_stage", {"request_id": "has space", "actor": ACTOR, "stage": "Qualification"}, "request_id"),
    ("change_stage", {"request_id": "x", "actor": ACTOR, "stage": "Qualification", "amount": -5}, "amount"),
    ("reopen", {"request_id": "x", "actor": ACTOR, "stage": "Qualification", "reason": ""}, "reason"),
    ("reassign", {"request_id": "x", "actor": ACTOR}, "owner_id"),
    ("record_activity", {"request_id": "x", "actor": ACTOR, "subject": "no kind"}, "kind"),
    ("record_activity", {"request_id": "x", "actor": ACTOR, "kind": "call", "data": "not an object"}, "data"),
    ("pause_clock", {"request_id": "x", "actor": ACTOR, "reason": "r", "until": "next week"}, "until"),
]


@pytest.mark.parametrize(("name", "payload", "field"), MALFORMED, ids=[f"{n}-{f}" for n, _, f in MALFORMED])
def test_malformed_payloads_are_refused_by_schema_and_model_alike(
    name: str, payload: dict[str, Any], field: str
) -> None:
    errors = list(validator(name).iter_errors(payload))
    assert errors, f"the schema accepted {payload}"
    assert any(field in e.message or field in e.json_path for e in errors), [e.message for e in errors]
    with pytest.raises(ValidationError) as refused:
        MESSAGES[name].model.model_validate(payload)
    assert field in str(refused.value)
