"""Bad input through a raw Temporal client (what any backend service can send): every
update and the ``record_activity`` signal, spoiled by hypothesis.

Each payload is either refused — an error naming the field or the rule, no history event,
state unchanged — or accepted and stored verbatim (``get_state`` and Postgres read back
byte-equal). Never a workflow-task failure; nothing over the documented limits reaches
history.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.auth import mint_token
from sales.messages import MAX_FIELDS_BYTES
from starter.client import CommandRejected, OpportunityClient, workflow_id
from tests.fuzz_commands import spoiled, valid_payloads
from tests.portal_app import portal_app
from tests.sales_team import SalesTeam

UPDATES = [
    "change_stage",
    "update_fields",
    "reopen",
    "reassign",
    "add_team_member",
    "remove_team_member",
    "acknowledge_escalation",
    "snooze_escalation",
    "pause_clock",
    "resume_clock",
    "migrate_process",
]
EXAMPLES = settings(
    max_examples=int(os.environ.get("OPPFLOW_FUZZ_EXAMPLES", "20")),
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
TEMPORAL_BLOB_LIMIT = 2 * 1024 * 1024
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,119}")
# HTTP routes fuzzed, each on a deal of its own: (method, path under the deal, the command).
HTTP_ROUTES = {
    "http_change_stage": ("POST", "/stage", "change_stage"),
    "http_update_fields": ("PATCH", "", "update_fields"),
    "http_record_activity": ("POST", "/activities", "record_activity"),
}
JWT_SECRET = "fuzz-secret-long-enough-for-hs256-signing"
# Refusals that need the org chart (I/O), so they happen after the update was accepted.
REFUSED_AFTER_ACCEPTANCE = {"unknown_user"}
# Event types that mean "a command reached the deal's history".
COMMAND_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
}


@dataclass
class FuzzApp:
    temporal: Client
    pool: asyncpg.Pool
    client: OpportunityClient
    team: SalesTeam
    deals: dict[str, str]
    seen: dict[str, tuple[int, int, list[str]]] = field(default_factory=dict)

    async def events_before(self, opp: str) -> tuple[int, int, list[str]]:
        """What ``command_events`` answered after the deal's last example (each deal has one writer)."""
        return self.seen.get(opp) or await self.command_events(opp)

    async def command_events(self, opp: str) -> tuple[int, int, list[str]]:
        """(command events, largest event in bytes, workflow-task failure messages), all runs."""
        commands = largest = 0
        failures: list[str] = []
        async for run in self.temporal.list_workflows(f"WorkflowId = '{workflow_id(opp)}'"):
            history = await self.temporal.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
            for event in history.events:
                commands += event.event_type in COMMAND_EVENTS
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    failures.append(event.workflow_task_failed_event_attributes.failure.message[:500])
                largest = max(largest, event.ByteSize())
        self.seen[opp] = (commands, largest, failures)
        return commands, largest, failures


@asynccontextmanager
async def fuzz_app(address: str, database_url: str) -> AsyncIterator[FuzzApp]:
    """One deal per command, so each command's fuzzing has a history of its own."""
    async with portal_app(address, database_url) as app:
        deals = {}
        for name in [*UPDATES, "record_activity", *HTTP_ROUTES]:
            opp = f"fuzz-{uuid.uuid4().hex[:10]}"
            await app.client.create(
                actor=app.team.actor("rep"),
                name=f"Fuzz {name}",
                account="Fuzz Inc",
                owner_id=app.team.id("rep"),
                opportunity_id=opp,
                amount="5000",
            )
            deals[name] = opp
        yield FuzzApp(app.temporal, app.pool, app.client, app.team, deals)


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as running:
        yield running


@pytest.fixture(scope="module")
def app(portal: BlockingPortal, temporal_env: WorkflowEnvironment, postgres_url: str) -> Iterator[FuzzApp]:
    address = temporal_env.client.service_client.config.target_host
    with portal.wrap_async_context_manager(fuzz_app(address, postgres_url)) as running:
        yield running


def keys_of(payload: Any, prefix: str = "") -> set[str]:
    if not isinstance(payload, dict):
        return set()
    found = set()
    for key, value in payload.items():
        found |= {str(key), f"{prefix}{key}"} | keys_of(value, f"{prefix}{key}.")
    return found


def explains(message: str, payload: Any, expected: dict[str, Any]) -> bool:
    """A malformed-payload refusal names the field (``fields.budget: ...``, a missing
    ``stage: Field required``) or the payload as a whole."""
    where = message.split(":", 1)[0].strip()
    named = set(where.split("."))
    known = keys_of(payload) | keys_of(expected) | {"request_id", "actor", "id", "role"}
    return where == "payload" or bool(named & known)


def json_size(payload: Any) -> int:
    return len(json.dumps(payload, default=str).encode())


async def send_update(app: FuzzApp, name: str, payload: Any) -> tuple[str, Any]:
    handle = app.temporal.get_workflow_handle(workflow_id(app.deals[name]))
    try:
        result = await handle.execute_update(name, payload, id=f"fuzz-{uuid.uuid4().hex}", result_type=dict)
    except WorkflowUpdateFailedError as exc:
        return "refused", exc.cause
    except RPCError as exc:
        return "rpc_error", exc
    return "accepted", result


async def fuzz_update(app: FuzzApp, name: str, payload: Any) -> None:
    opp = app.deals[name]
    if isinstance(payload, dict):
        payload.setdefault("request_id", f"fz-{uuid.uuid4().hex}")
    before = await app.client.state(opp)
    events_before, _, failed_before = await app.events_before(opp)

    outcome, answer = await send_update(app, name, payload)

    events_after, _, failed = await app.command_events(opp)
    assert failed == failed_before, (
        f"{name} {payload!r:.300}: workflow task failed: {failed[len(failed_before) :]}"
    )
    if outcome == "accepted":
        assert events_after > events_before
        await stored_verbatim(app, name, opp, payload, answer)
        return
    assert await app.client.state(opp) == before, f"refused {name} changed the deal"
    assert outcome != "rpc_error", f"{name}: RPC error on a payload under Temporal's limit: {answer}"
    assert isinstance(answer, ApplicationError), f"{name}: refusal is not an application error: {answer!r}"
    assert answer.type and answer.message, f"{name}: refusal without rule or message: {answer!r}"
    if answer.type in REFUSED_AFTER_ACCEPTANCE:
        return  # see test_a_reassign_to_someone_outside_the_org_chart_is_refused_and_audited
    assert events_after == events_before, f"refused {name} left history: {payload!r:.300}"
    if answer.type == "malformed":
        assert explains(answer.message, payload, valid_payloads(app.team)[name]), (
            f"{name}: {answer.message!r} names no field of {payload!r:.200}"
        )
    request_id = payload.get("request_id") if isinstance(payload, dict) else None
    if isinstance(request_id, str) and IDENTIFIER.fullmatch(request_id):
        await eventually_fetch(
            app,
            "SELECT rule AS v FROM rejected_commands WHERE opportunity_id = $1 AND request_id = $2",
            opp,
            request_id,
        )


async def stored_verbatim(app: FuzzApp, name: str, opp: str, payload: dict[str, Any], result: dict) -> None:
    assert result["request_id"] == payload["request_id"]
    state = await app.client.state(opp)
    assert len(json.dumps(payload, default=str)) < 2 * MAX_FIELDS_BYTES + 200_000
    for key, value in (payload.get("fields") or {}).items():
        if value is None:
            assert key not in state["fields"]
            continue
        assert state["fields"][key] == value
        stored = await eventually_fetch(
            app,
            "SELECT fields -> $2 AS v FROM opportunities WHERE id = $1 AND updated_at >= $3",
            opp,
            key,
            datetime.fromisoformat(state["updated_at"]),
        )
        assert same_json(stored, value), f"{key}: {value!r} stored as {stored!r}"
    if name == "update_fields" and payload.get("amount") is not None:
        assert Decimal(state["amount"]) == Decimal(str(payload["amount"]))
    if name == "update_fields" and payload.get("name") is not None:
        assert state["name"] == payload["name"]
    if name == "change_stage":
        row = await eventually_fetch(
            app,
            "SELECT reason FROM stage_history WHERE opportunity_id = $1 AND request_id = $2",
            opp,
            payload["request_id"],
            want_row=True,
        )
        assert row["reason"] == payload.get("reason")


def same_json(stored: Any, sent: Any) -> bool:
    """Equal as JSON: PostgreSQL's jsonb keeps a number's value, not whether it was written
    as a float (7.205759403792783e+16 comes back as 72057594037927830)."""
    if isinstance(sent, float) and isinstance(stored, int | float) and not isinstance(stored, bool):
        return float(stored) == sent
    if isinstance(sent, dict) and isinstance(stored, dict):
        return sent.keys() == stored.keys() and all(same_json(stored[k], v) for k, v in sent.items())
    if isinstance(sent, list) and isinstance(stored, list):
        return len(sent) == len(stored) and all(same_json(a, b) for a, b in zip(stored, sent, strict=True))
    return bool(stored == sent) and type(stored) is type(sent)


def test_same_json_allows_only_a_floats_integral_spelling() -> None:
    assert same_json(72057594037927830, 7.205759403792783e16)
    assert same_json({"a": [1, 2.0]}, {"a": [1, 2.0]})
    assert not same_json(72057594037927831, 7.205759403792783e16 + 64)
    assert not same_json(1, True)
    assert not same_json("1", 1)


async def eventually_fetch(app: FuzzApp, sql: str, *args: Any, want_row: bool = False) -> Any:
    for _ in range(100):
        row = await app.pool.fetchrow(sql, *args)
        if row is not None:
            return row if want_row else row["v"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"not written: {sql} {args!r:.200}")


@pytest.mark.parametrize("name", UPDATES)
@EXAMPLES
@given(data=st.data())
def test_a_spoiled_update_is_refused_cleanly_or_stored_verbatim(
    portal: BlockingPortal, app: FuzzApp, name: str, data: st.DataObject
) -> None:
    payload = data.draw(spoiled(valid_payloads(app.team)[name]), label="payload")
    portal.call(fuzz_update, app, name, payload)


async def fuzz_signal(app: FuzzApp, payload: Any) -> None:
    opp = app.deals["record_activity"]
    if isinstance(payload, dict):
        payload.setdefault("request_id", f"fz-{uuid.uuid4().hex}")
    before = await app.client.state(opp)
    events_before, _, failed_before = await app.events_before(opp)
    try:
        await app.temporal.get_workflow_handle(workflow_id(opp)).signal("record_activity", payload)
    except RPCError as exc:
        events_after, _, failed = await app.command_events(opp)
        assert events_after == events_before and failed == failed_before
        assert json_size(payload) > 2_000_000, f"RPC error on a small signal: {exc}"
        return

    request_id = payload.get("request_id") if isinstance(payload, dict) else None
    state = await wait_for_signal(app, opp, before)
    _, _, failed = await app.command_events(opp)
    assert failed == failed_before, (
        f"signal {payload!r:.300}: workflow task failed: {failed[len(failed_before) :]}"
    )
    recorded = next((a for a in state["recent_activities"] if a["request_id"] == request_id), None)
    if recorded is None:
        refusal = state["refusals"][-1]
        assert refusal["command"] == "record_activity" and refusal["rule"] == "malformed"
        assert explains(refusal["message"], payload, valid_payloads(app.team)["record_activity"]), (
            f"{refusal['message']!r} names no field of {payload!r:.200}"
        )
        if isinstance(request_id, str):
            assert not await app.pool.fetchval(
                "SELECT 1 FROM activities WHERE opportunity_id = $1 AND request_id = $2", opp, request_id
            )
        return
    assert recorded["subject"] == payload.get("subject") and recorded["outcome"] == payload.get("outcome")
    row = await eventually_fetch(
        app,
        "SELECT subject, outcome, data FROM activities WHERE opportunity_id = $1 AND request_id = $2",
        opp,
        request_id,
        want_row=True,
    )
    assert (row["subject"], row["outcome"]) == (payload.get("subject"), payload.get("outcome"))
    assert same_json(row["data"], payload.get("data", {})), f"{row['data']!r:.300}"


async def wait_for_signal(app: FuzzApp, opp: str, before: dict[str, Any]) -> dict[str, Any]:
    """Until the deal shows the signal: one more activity or one more refusal."""
    for _ in range(200):
        state = await app.client.state(opp)
        if (state["activity_count"], len(state["refusals"]), state["refusals"][-1:]) != (
            before["activity_count"],
            len(before["refusals"]),
            before["refusals"][-1:],
        ):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError("the signal never showed in the deal's state")


@EXAMPLES
@given(data=st.data())
def test_a_spoiled_activity_signal_is_refused_in_state_or_stored_verbatim(
    portal: BlockingPortal, app: FuzzApp, data: st.DataObject
) -> None:
    payload = data.draw(
        spoiled(valid_payloads(app.team)["record_activity"], objects_only=True), label="payload"
    )
    portal.call(fuzz_signal, app, payload)


async def refusal_of_non_object(app: FuzzApp, name: str, payload: Any) -> tuple[str, str]:
    opp = app.deals[name]
    if name == "record_activity":
        before = await app.client.state(opp)
        await app.temporal.get_workflow_handle(workflow_id(opp)).signal(name, payload)
        refusal = (await wait_for_signal(app, opp, before))["refusals"][-1]
        return refusal["rule"], refusal["message"]
    outcome, answer = await send_update(app, name, payload)
    assert outcome == "refused", answer
    return getattr(answer, "type", None) or type(answer).__name__, getattr(answer, "message", str(answer))


@pytest.mark.parametrize("name", ["change_stage", "record_activity"])
@pytest.mark.parametrize("payload", [[], "Closed Won", 42, None])
def test_a_payload_that_is_not_an_object_is_refused_as_malformed(
    portal: BlockingPortal, app: FuzzApp, name: str, payload: Any
) -> None:
    rule, message = portal.call(refusal_of_non_object, app, name, payload)
    assert rule == "malformed" and message.startswith("payload"), (rule, message)


def test_no_fuzzed_update_made_history_grow_past_the_limits(portal: BlockingPortal, app: FuzzApp) -> None:
    """Runs after the fuzzing above: the largest event in the fuzzed deals' histories.

    Updates are validated before they reach history, so their events stay within the
    documented limits. A raw signal cannot be refused before Temporal stores it: one of up
    to Temporal's 2 MB blob limit lands in history and is refused in the deal's state.
    """
    largest = {name: portal.call(app.command_events, opp)[1] for name, opp in app.deals.items()}
    print(f"FUZZ largest history event per command: {largest}")
    assert max(v for k, v in largest.items() if k != "record_activity") < 2 * MAX_FIELDS_BYTES + 10_000
    assert largest["record_activity"] <= TEMPORAL_BLOB_LIMIT


async def over_the_blob_limit(app: FuzzApp, name: str, size: int) -> tuple[list[str], float]:
    """Send one payload over Temporal's limit; answer the workflow-task failures it caused and
    how long the deal could not be queried."""
    opp = app.deals[name]
    payload = {**valid_payloads(app.team)[name], "request_id": f"fz-{uuid.uuid4().hex}"}
    payload["subject" if name == "record_activity" else "reason"] = "x" * size
    before = await app.client.state(opp)
    events_before, _, failed_before = await app.command_events(opp)
    if name == "record_activity":
        with pytest.raises(RPCError, match="size exceeds"):
            await app.temporal.get_workflow_handle(workflow_id(opp)).signal(name, payload)
    else:
        outcome, answer = await send_update(app, name, payload)
        assert outcome in ("rpc_error", "refused"), answer
    began = time.monotonic()
    while True:  # queries fail while the worker's task is in its failed state
        try:
            after = await app.client.state(opp)
            break
        except RPCError:
            assert time.monotonic() - began < 60, "the deal stays unqueryable"
            await asyncio.sleep(0.2)
    unavailable = time.monotonic() - began
    events_after, largest, failed = await app.command_events(opp)
    assert events_after == events_before and largest < TEMPORAL_BLOB_LIMIT
    assert after == before
    probe = await app.client.update_fields(
        opp, actor=app.team.actor("rep"), fields={"next_step": "still here"}
    )
    assert probe.accepted, "the deal answers the next command"
    app.seen.pop(opp, None)
    return failed[len(failed_before) :], unavailable


@pytest.mark.parametrize("name", ["change_stage", "record_activity"])
@pytest.mark.parametrize("size", [2_100_000, 3_000_000])
def test_a_payload_over_temporals_limit_never_reaches_history(
    portal: BlockingPortal, app: FuzzApp, name: str, size: int
) -> None:
    """Temporal refuses a signal over 2 MB at the API. An update that big reaches the worker,
    whose refusal echoes the request and trips the SDK's own payload limit (TMPRL1103): the
    task fails, the caller gets an error, nothing is stored and the deal carries on."""
    failures, unavailable = portal.call(over_the_blob_limit, app, name, size)
    print(
        f"FUZZ {name} {size} bytes: {len(failures)} workflow task failure(s) {failures[:1]}, "
        f"queries refused for {unavailable:.1f}s"
    )
    assert all("TMPRL1103" in f for f in failures), failures


async def reassign_outside_org_chart(app: FuzzApp) -> tuple[str, list[str]]:
    opp = app.deals["reassign"]
    request_id = f"fz-{uuid.uuid4().hex}"
    before = await app.client.state(opp)
    try:
        await app.client.reassign(
            opp, actor=app.team.actor("mgr"), owner_id="nobody-at-all", request_id=request_id
        )
    except CommandRejected as refused:
        rule = refused.rule
    else:
        raise AssertionError("a reassignment to someone outside the org chart was accepted")
    assert await app.client.state(opp) == before
    await asyncio.sleep(1)
    audited = await app.pool.fetch(
        "SELECT rule FROM rejected_commands WHERE opportunity_id = $1 AND request_id = $2", opp, request_id
    )
    return rule, [r["rule"] for r in audited]


def test_a_reassign_to_someone_outside_the_org_chart_is_refused_and_audited(
    portal: BlockingPortal, app: FuzzApp
) -> None:
    """The org chart lookup is I/O, so this refusal comes after the update was accepted: it
    must still change nothing and land in ``rejected_commands`` like any other refusal."""
    rule, audited = portal.call(reassign_outside_org_chart, app)
    assert rule == "unknown_user"
    assert audited == ["unknown_user"], "the refusal is recorded as rejected"


async def fuzz_http(app: FuzzApp, route: str, body: Any) -> None:
    """One spoiled body through the HTTP API: a 4xx naming the rule (and for 422 the field)
    with the deal unchanged, or a 2xx whose values are stored verbatim. Never a 5xx."""
    method, path, command = HTTP_ROUTES[route]
    opp = app.deals[route]
    api = create_app(app.client, jwt_secret=JWT_SECRET, public_url="http://oppflow.test")
    token = mint_token(JWT_SECRET, app.team.id("rep"), ["rep"])
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"fz-{uuid.uuid4().hex}"}
    before = await app.client.state(opp)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), base_url="http://oppflow.test"
    ) as http:
        # Python's encoder writes Infinity/NaN as JS literals; other clients send them too.
        content = json.dumps(body, allow_nan=True)
        headers["Content-Type"] = "application/json"
        response = await http.request(method, f"/opportunities/{opp}{path}", content=content, headers=headers)
    assert response.status_code < 500, f"{route}: {response.status_code} {response.text[:300]}"
    answer = response.json()
    if response.status_code >= 400:
        assert answer.get("rule") and answer.get("message"), f"{route}: {answer}"
        if response.status_code == 422:
            assert answer.get("field") or answer["message"].startswith("payload"), f"{route}: {answer}"
        if command != "record_activity":
            assert await app.client.state(opp) == before, f"{route}: a refused command changed the deal"
        return
    payload = {**body, "request_id": answer["request_id"]}
    if command == "record_activity":
        row = await eventually_fetch(
            app,
            "SELECT subject, outcome, data FROM activities WHERE opportunity_id = $1 AND request_id = $2",
            opp,
            answer["request_id"],
            want_row=True,
        )
        assert (row["subject"], row["outcome"]) == (body.get("subject"), body.get("outcome"))
        assert same_json(row["data"], body.get("data", {})), f"{row['data']!r:.300}"
        return
    await stored_verbatim(app, command, opp, payload, answer)


@pytest.mark.parametrize(
    "route",
    sorted(HTTP_ROUTES),
)
@EXAMPLES
@given(data=st.data())
def test_a_spoiled_http_body_gets_a_4xx_naming_the_problem_or_is_stored_verbatim(
    portal: BlockingPortal, app: FuzzApp, route: str, data: st.DataObject
) -> None:
    command = HTTP_ROUTES[route][2]
    body = {k: v for k, v in valid_payloads(app.team)[command].items() if k != "actor"}
    payload = data.draw(spoiled(body, objects_only=False), label="body")
    portal.call(fuzz_http, app, route, payload)


async def rename_over_http(app: FuzzApp) -> tuple[int, str]:
    opp = app.deals["http_update_fields"]
    api = create_app(app.client, jwt_secret=JWT_SECRET, public_url="http://oppflow.test")
    token = mint_token(JWT_SECRET, app.team.id("rep"), ["rep"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), base_url="http://oppflow.test"
    ) as http:
        response = await http.patch(
            f"/opportunities/{opp}",
            json={"name": "Acme renewal 2027"},
            headers={"Authorization": f"Bearer {token}"},
        )
    return response.status_code, (await app.client.state(opp))["name"]


def test_a_rep_renames_a_deal_over_http(portal: BlockingPortal, app: FuzzApp) -> None:
    status, name = portal.call(rename_over_http, app)
    assert (status, name) == (200, "Acme renewal 2027")
