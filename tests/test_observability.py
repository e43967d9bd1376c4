"""What an operator sees: a worker's /metrics (Temporal SDK metrics and oppflow's own
counters), JSON log lines carrying opportunity, workflow and request ids, and one trace
from an HTTP request through the workflow to its activities."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from api.auth import mint_token
from sales.process import PROCESS_FOLDER, parse_process_yaml
from starter import metrics, observability, processes
from starter.client import CommandRejected, OpportunityClient, workflow_id
from starter.org_chart import import_people
from tests.helpers import new_task_queue
from tests.log_probe_workflow import LogContextProbe, Probe
from tests.sales_team import SalesTeam, running_app
from tests.webhook_receiver import webhook_receiver
from tests.worker_process import clean_env, temporal_address, wait_for_pollers, worker_process

SECRET = "whsec_" + base64.b64encode(b"oppflow-observability-secret-01").decode()
JWT_SECRET = "observability-test-secret-long-enough-for-hs256"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


async def eventually_scraped(
    port: int, check: dict[str, tuple[str, dict[str, str]]], within: float = 30
) -> None:
    """Scrape until every named counter is at least 1; fail naming the ones still missing."""
    deadline = asyncio.get_running_loop().time() + within
    missing: list[str] = list(check)
    while asyncio.get_running_loop().time() < deadline:
        samples = await asyncio.to_thread(scrape, port)
        missing = [what for what, (name, labels) in check.items() if value(samples, name, **labels) < 1]
        if not missing:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"/metrics never showed: {missing}")


async def publish_fast_process(pool: asyncpg.Pool, tag: str) -> str:
    """The standard process, but a deal is stuck in Prospecting after 2 seconds."""
    text = (PROCESS_FOLDER / "new-business.yaml").read_text(encoding="utf-8")
    text = text.replace("name: new-business", f"name: fast-{tag}", 1).replace(
        "stuck_after: 14d", "stuck_after: 2s", 1
    )
    published = await processes.publish(pool, parse_process_yaml(text, "fast.yaml"))
    return published.name


async def test_a_worker_serves_sdk_and_sales_metrics_and_logs_json_lines(
    temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool, postgres_url: str, tmp_path: Path
) -> None:
    team = SalesTeam(uuid.uuid4().hex[:6])
    await import_people(db_pool, team.people)
    fast = await publish_fast_process(db_pool, team.tag)
    queue, port = new_task_queue(), free_port()
    rep = team.actor("rep")
    client = OpportunityClient(temporal_env.client, db_pool, queue)

    with webhook_receiver() as receiver:
        env = clean_env(
            DATABASE_URL=postgres_url,
            TEMPORAL_ADDRESS=temporal_address(temporal_env.client),
            OPPFLOW_TASK_QUEUE=queue,
            OPPFLOW_DATA_DIR=str(tmp_path / "data"),
            OPPFLOW_METRICS_PORT=str(port),
            OPPFLOW_LOG_LEVEL="DEBUG",
            OPPFLOW_WEBHOOK_URLS=f"{receiver.base_url}/fail",
            OPPFLOW_WEBHOOK_SECRET=SECRET,
        )
        with worker_process(env, tmp_path) as worker:
            await wait_for_pollers(temporal_env.client, queue, 1)
            moved = f"opp-{uuid.uuid4().hex[:10]}"
            await client.create(
                actor=rep,
                name="Metrics deal",
                account="Acme",
                owner_id=team.id("rep"),
                opportunity_id=moved,
                request_id=f"create-{moved}",
            )
            await client.change_stage(moved, actor=rep, stage="Qualification", request_id=f"qualify-{moved}")
            with pytest.raises(CommandRejected) as refused:
                await client.change_stage(moved, actor=rep, stage="Proposal/Price Quote")
            stuck = await client.create(
                actor=rep, name="Stuck deal", account="Acme", owner_id=team.id("rep"), process_name=fast
            )

            await eventually_scraped(
                port,
                {
                    "stage change Prospecting -> Qualification": (
                        "oppflow_stage_changes_total",
                        {"stage": "Qualification", "from_stage": "Prospecting"},
                    ),
                    "refusal by rule": (
                        "oppflow_commands_refused_total",
                        {"rule": refused.value.rule, "command": "change_stage"},
                    ),
                    "escalation to the owner": ("oppflow_escalations_total", {"notify": "owner"}),
                    "webhook failure": (
                        "oppflow_webhook_failures_total",
                        {"endpoint": f"{receiver.base_url}/fail"},
                    ),
                    "SDK workflow task metrics": ("temporal_workflow_task_execution_latency_count", {}),
                    "SDK request counter": ("temporal_request_total", {}),
                },
            )
            output = worker.output()

    lines = [line for line in output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(
        {"opportunity_id", "workflow_id", "request_id", "level", "message"} <= r.keys() for r in records
    )
    # Commands that arrive together are written in one batch: its line names all their request ids.
    qualified = next(r for r in records if f"qualify-{moved}" in (r["request_id"] or "").split(","))
    assert "persist_opportunity done" in qualified["message"]
    assert (qualified["opportunity_id"], qualified["workflow_id"]) == (moved, workflow_id(moved))
    assert any(
        r["opportunity_id"] == stuck.opportunity_id and "persist_escalation done" in r["message"]
        for r in records
    )


async def test_webhook_failure_labels_keep_no_credentials_and_the_api_app_serves_them() -> None:
    metrics.observe_webhook_failure("https://user:token@hooks.example.com:8443/in?sig=abc")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=metrics.metrics_app()), base_url="http://m"
    ) as http:
        text = (await http.get("/")).text
    assert 'oppflow_webhook_failures_total{endpoint="https://hooks.example.com:8443/in"}' in text
    assert "token" not in text and "sig=abc" not in text


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    handler = observability.configure_logging(
        observability.ObservabilitySettings(log_level="DEBUG", log_format="json"), stream
    )
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for old in saved[0]:
            root.addHandler(old)
        root.setLevel(saved[1])


async def test_one_trace_runs_from_the_http_request_through_the_workflow_to_its_activities(
    temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool, captured_logs: io.StringIO
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = await Client.connect(
        temporal_address(temporal_env.client),
        namespace=temporal_env.client.namespace,
        data_converter=pydantic_data_converter,
        interceptors=[observability.tracing_interceptor(provider)],
    )
    async with running_app(traced, db_pool) as app:
        api = observability.RequestContext(
            create_app(app.client, jwt_secret=JWT_SECRET, public_url="http://api.test"), provider=provider
        )
        token = mint_token(JWT_SECRET, app.team.id("rep"), ["rep"])
        key = f"key-{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://api.test"
        ) as http:
            response = await http.post(
                "/opportunities",
                json={"name": "Traced deal", "account": "Initech", "amount": "9000"},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
            )
            assert response.status_code == 201, response.text
            opp = response.json()["opportunity_id"]
            logging.getLogger("oppflow.api").info("logged after the request")  # outside any request
            await app.client.state(opp)

    spans = exporter.get_finished_spans()
    request = next(s for s in spans if s.name == "POST /opportunities")
    in_trace = {s.name for s in spans if s.context.trace_id == request.context.trace_id}
    assert {
        "StartWorkflow:OpportunityWorkflow",
        "RunWorkflow:OpportunityWorkflow",
        "StartActivity:persist_opportunity",
        "RunActivity:persist_opportunity",
    } <= in_trace, in_trace

    records = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line.strip()]
    persisted = next(
        r for r in records if "persist_opportunity done" in r["message"] and r["opportunity_id"] == opp
    )
    assert (persisted["workflow_id"], persisted["request_id"]) == (workflow_id(opp), key)
    outside = next(r for r in records if r["message"] == "logged after the request")
    assert outside["request_id"] is None and outside["opportunity_id"] is None


async def test_workflow_log_lines_carry_the_deal_and_the_command(
    temporal_env: WorkflowEnvironment, captured_logs: io.StringIO
) -> None:
    queue, opp = new_task_queue(), f"opp-{uuid.uuid4().hex[:10]}"
    async with Worker(
        temporal_env.client,
        task_queue=queue,
        workflows=[LogContextProbe],
        interceptors=observability.worker_interceptors(),
    ):
        handle = await temporal_env.client.start_workflow(
            LogContextProbe.run, id=workflow_id(opp), task_queue=queue
        )
        await handle.execute_update(LogContextProbe.finish, Probe(request_id="req-finish"))
        await handle.result()
    records = {
        r["message"].split(" (")[0]: r
        for r in map(json.loads, captured_logs.getvalue().splitlines())
        if r["logger"] == "temporalio.workflow"
    }
    ids = ("opportunity_id", "workflow_id", "request_id")
    assert tuple(records["probe started"][k] for k in ids) == (opp, workflow_id(opp), None)
    assert tuple(records["probe finishing"][k] for k in ids) == (opp, workflow_id(opp), "req-finish")


def test_tracing_is_off_unless_asked_for() -> None:
    assert observability.client_interceptors(observability.ObservabilitySettings(otel=False)) == []
