"""Payload encryption: with OPPFLOW_ENCRYPTION_KEYS set, Temporal's history holds no deal
data in plaintext, oppflow's own clients and workers read it as before, keys rotate, and
`oppflow codec-server` lets the Temporal UI decode it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from starter.client import CommandRejected, OpportunityClient, workflow_id
from starter.codec import (
    ENCODING,
    KEY_ID,
    CodecSettings,
    EncryptionCodec,
    EncryptionKeyError,
    data_converter,
    encrypted_converter,
    parse_keys,
    plain_data_converter,
)
from starter.connect import connect_temporal
from starter.settings import Settings
from starter.temporal_server import DevServerOptions, start_dev_server, temporal_binary
from tests.sales_team import App, running_app
from tests.worker_process import clean_env, oppflow_binary, temporal_address
from worker import build_worker

KEY_1 = base64.b64encode(os.urandom(32)).decode()
KEY_2 = base64.b64encode(os.urandom(32)).decode()
UI_ORIGIN = "http://localhost:8233"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sentinel() -> str:
    return f"Zyxwv-{uuid.uuid4().hex}"


async def encrypted_client(temporal: Client, keys: str) -> Client:
    codec = EncryptionCodec(parse_keys(keys))
    return await Client.connect(
        temporal_address(temporal), namespace=temporal.namespace, data_converter=encrypted_converter(codec)
    )


async def history_bytes(temporal: Client, opportunity_id: str) -> bytes:
    history = await temporal.get_workflow_handle(workflow_id(opportunity_id)).fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def stored_payloads(temporal: Client, opportunity_id: str) -> list[Payload]:
    """The workflow input and every update argument, as Temporal stores them."""
    history = await temporal.get_workflow_handle(workflow_id(opportunity_id)).fetch_history()
    found: list[Payload] = []
    for event in history.events:
        if event.HasField("workflow_execution_started_event_attributes"):
            found += event.workflow_execution_started_event_attributes.input.payloads
        if event.HasField("workflow_execution_update_accepted_event_attributes"):
            found += (
                event.workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads
            )
    return found


@pytest.fixture
async def encrypted_app(temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool) -> AsyncIterator[App]:
    client = await encrypted_client(temporal_env.client, f"k1:{KEY_1}")
    async with running_app(client, db_pool) as app:
        yield app


async def new_secret_deal(app: App, secret: str) -> str:
    opp = app.opp_id()
    await app.client.create(
        actor=app.team.actor("rep"),
        name=f"Project {secret}",
        account="Initech",
        owner_id=app.team.id("rep"),
        opportunity_id=opp,
        amount="75000",
        fields={"pain_points": f"{secret} outage"},
    )
    await app.client.change_stage(
        opp, actor=app.team.actor("rep"), stage="Qualification", reason=f"call about {secret}"
    )
    return opp


async def test_history_holds_no_deal_data_in_plaintext(
    encrypted_app: App, temporal_env: WorkflowEnvironment
) -> None:
    secret = sentinel()
    opp = await new_secret_deal(encrypted_app, secret)

    state = await encrypted_app.client.state(opp)
    assert state["name"] == f"Project {secret}" and state["fields"]["pain_points"] == f"{secret} outage"
    plain_history = await history_bytes(temporal_env.client, opp)  # a client without the codec
    assert secret.encode() not in plain_history
    assert b"Initech" not in plain_history
    assert b"change(s)" not in plain_history  # activity summaries ("save 1 change(s): ...") too
    # Search attributes (stage, owner, amount, dates) are indexed by Temporal, so never encrypted.
    assert b"OpportunityAmount" in plain_history
    payloads = await stored_payloads(temporal_env.client, opp)
    assert len(payloads) >= 2
    assert all(p.metadata["encoding"] == ENCODING and p.metadata[KEY_ID] == b"k1" for p in payloads)

    with pytest.raises(Exception, match="binary/encrypted"):  # no key, no data
        await temporal_env.client.get_workflow_handle(workflow_id(opp)).query("get_state")


async def test_refusals_still_name_their_rule_with_encryption_on(encrypted_app: App) -> None:
    opp = await new_secret_deal(encrypted_app, sentinel())
    with pytest.raises(CommandRejected) as refused:
        await encrypted_app.client.change_stage(
            opp, actor=encrypted_app.team.actor("rep"), stage="Proposal/Price Quote"
        )
    assert refused.value.rule and refused.value.rule != "malformed"
    assert refused.value.missing


async def test_a_rotated_key_encrypts_new_payloads_and_the_old_one_still_decrypts(
    temporal_env: WorkflowEnvironment, db_pool: asyncpg.Pool
) -> None:
    secret = sentinel()
    old = await encrypted_client(temporal_env.client, f"k1:{KEY_1}")
    async with running_app(old, db_pool) as app:
        opp = await new_secret_deal(app, secret)
    rotated = await encrypted_client(temporal_env.client, f"k2:{KEY_2},k1:{KEY_1}")
    # A new worker on the deal's queue replays the k1 history and writes new payloads with k2.
    async with build_worker(rotated, db_pool, Settings(task_queue=app.task_queue), task_queue=app.task_queue):
        client = OpportunityClient(rotated, db_pool, app.task_queue)
        await client.update_fields(opp, actor=app.team.actor("rep"), fields={"timeline": f"{secret} Q3"})
        assert (await client.state(opp))["fields"]["timeline"] == f"{secret} Q3"
    key_ids = [p.metadata[KEY_ID] for p in await stored_payloads(temporal_env.client, opp)]
    assert key_ids[0] == b"k1" and key_ids[-1] == b"k2"

    only_new = EncryptionCodec(parse_keys(f"k2:{KEY_2}"))
    first = (await stored_payloads(temporal_env.client, opp))[0]
    with pytest.raises(EncryptionKeyError, match="'k1'"):
        await only_new.decode([first])


async def test_connect_applies_the_codec_when_keys_are_set(
    temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_address(temporal_env.client))
    monkeypatch.delenv("OPPFLOW_ENCRYPTION_KEYS", raising=False)
    assert (await connect_temporal(Settings())).data_converter is plain_data_converter
    monkeypatch.setenv("OPPFLOW_ENCRYPTION_KEYS", f"k1:{KEY_1}")
    codec = (await connect_temporal(Settings())).data_converter.payload_codec
    assert isinstance(codec, EncryptionCodec) and codec.key_id == "k1"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("k1", "not kid:base64key"),
        ("k1:not base64!", "'k1' is not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "'k1' is 5 bytes"),
        (f"k1:{KEY_1},k1:{KEY_2}", "'k1' appears twice"),
        (" , ", "holds no key"),
    ],
    ids=["no-colon", "not-base64", "too-short", "same-id-twice", "empty"],  # the keys are random
)
def test_bad_keys_are_refused_naming_the_variable_and_the_key(spec: str, message: str) -> None:
    with pytest.raises(EncryptionKeyError, match="OPPFLOW_ENCRYPTION_KEYS") as refused:
        parse_keys(spec)
    assert message in str(refused.value)
    assert KEY_1 not in str(refused.value)


async def test_altered_payloads_do_not_decrypt_and_plain_ones_pass_through() -> None:
    codec = EncryptionCodec(parse_keys(f"k1:{KEY_1}"))
    plain = (await pydantic_data_converter.encode([{"name": "Acme"}]))[0]
    sealed = (await codec.encode([plain]))[0]
    assert await codec.decode([sealed]) == [plain]
    assert await codec.decode([plain]) == [plain]
    altered = Payload()
    altered.CopyFrom(sealed)
    altered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(EncryptionKeyError, match="does not authenticate"):
        await codec.decode([altered])
    assert data_converter(CodecSettings(encryption_keys=None)) is plain_data_converter


async def wait_until_listening(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(400):  # the CLI needs a few seconds to import on a busy machine
        if process.returncode is not None:
            raise AssertionError(f"codec server exited: {(await process.stdout.read()).decode()}")  # type: ignore[union-attr]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError("codec server did not listen")


async def test_the_codec_server_decodes_history_for_the_ui(
    encrypted_app: App, temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    secret = sentinel()
    opp = await new_secret_deal(encrypted_app, secret)
    port = free_port()
    env = clean_env(
        OPPFLOW_ENCRYPTION_KEYS=f"k1:{KEY_1}",
        OPPFLOW_CODEC_CORS_ORIGINS=UI_ORIGIN,
        OPPFLOW_CODEC_AUTH_TOKEN="codec-token",
    )
    server = await asyncio.create_subprocess_exec(
        oppflow_binary(),
        "codec-server",
        "--port",
        str(port),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await wait_until_listening(port, server)
        body = {
            "payloads": [
                json_format.MessageToDict(p) for p in await stored_payloads(temporal_env.client, opp)
            ]
        }
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            preflight = await http.options(
                "/decode",
                headers={
                    "Origin": UI_ORIGIN,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
            other_site = await http.options(
                "/decode", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
            )
            assert "access-control-allow-origin" not in other_site.headers

            assert (await http.post("/decode", json=body)).status_code == 401
            headers = {"Authorization": "Bearer codec-token", "X-Namespace": "default", "Origin": UI_ORIGIN}
            decoded = await http.post("/decode", json=body, headers=headers)
            assert decoded.status_code == 200, decoded.text
            texts = [base64.b64decode(p["data"]).decode() for p in decoded.json()["payloads"]]
            assert f"Project {secret}" in json.loads(texts[0])["create"]["name"]
            assert all(
                base64.b64decode(p["metadata"]["encoding"]) == b"json/plain"
                for p in decoded.json()["payloads"]
            )

            round_trip = await http.post("/encode", json=decoded.json(), headers=headers)
            again = await http.post("/decode", json=round_trip.json(), headers=headers)
            assert again.json() == decoded.json()
            assert (await http.post("/decode", content=b"{not json", headers=headers)).status_code == 400

        # Temporal's own CLI, as an operator would use it, speaks the same protocol.
        shown = await asyncio.create_subprocess_exec(
            temporal_binary(),
            "workflow",
            "show",
            "--workflow-id",
            workflow_id(opp),
            "--output",
            "json",
            "--address",
            temporal_address(temporal_env.client),
            "--codec-endpoint",
            f"http://127.0.0.1:{port}",
            "--codec-auth",
            "Bearer codec-token",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await shown.communicate())[0].decode()
        assert shown.returncode == 0, output[-2000:]
        started = json.loads(output)["events"][0]["workflowExecutionStartedEventAttributes"]
        shown_input = base64.b64decode(started["input"]["payloads"][0]["data"]).decode()
        assert json.loads(shown_input)["create"]["name"] == f"Project {secret}"
    finally:
        server.terminate()
        await server.wait()


async def test_the_dev_server_ui_is_pointed_at_the_codec_server() -> None:
    port, ui_port = free_port(), free_port()
    server = await start_dev_server(
        DevServerOptions(
            port=port, ui_port=ui_port, extra_args=["--ui-codec-endpoint", "http://localhost:8081"]
        )
    )
    try:
        async with httpx.AsyncClient() as http:
            settings = (await http.get(f"http://localhost:{ui_port}/api/v1/settings")).json()
    finally:
        await server.astop()
    assert settings["Codec"]["Endpoint"] == "http://localhost:8081"


def test_the_codec_server_refuses_to_start_without_keys(tmp_path: Path) -> None:
    import subprocess

    done = subprocess.run(
        [oppflow_binary(), "codec-server"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "OPPFLOW_ENCRYPTION_KEYS is not set" in done.stderr


@pytest.mark.browser
async def test_the_temporal_ui_shows_decrypted_deals_through_the_codec_server(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    from tests.test_ui_browser import CHROMIUM_FLAGS, chromium

    executable = chromium()
    port, ui_port, codec_port = free_port(), free_port(), free_port()
    ui_origin = f"http://localhost:{ui_port}"
    codec = await asyncio.create_subprocess_exec(
        oppflow_binary(),
        "codec-server",
        "--port",
        str(codec_port),
        env=clean_env(OPPFLOW_ENCRYPTION_KEYS=f"k1:{KEY_1}", OPPFLOW_CODEC_CORS_ORIGINS=ui_origin),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    server = await start_dev_server(
        DevServerOptions(
            port=port,
            ui_port=ui_port,
            extra_args=["--ui-codec-endpoint", f"http://localhost:{codec_port}"],
        )
    )
    try:
        await wait_until_listening(codec_port, codec)
        client = await encrypted_client(await Client.connect(server.address), f"k1:{KEY_1}")
        secret = sentinel()
        async with running_app(client, db_pool) as app:
            opp = await new_secret_deal(app, secret)
            run_id = (await client.get_workflow_handle(workflow_id(opp)).describe()).run_id
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                await page.goto(
                    f"{ui_origin}/namespaces/default/workflows/{workflow_id(opp)}/{run_id}/history"
                )
                await expect(page.get_by_text(f"Project {secret}").first).to_be_visible(timeout=30_000)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "codec-decoded-history.png"), full_page=True)
            finally:
                await browser.close()
    finally:
        await server.astop()
        codec.terminate()
        await codec.wait()
