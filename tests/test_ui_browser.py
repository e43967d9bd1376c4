"""Ops read deals in the Temporal Web UI, checked in a real browser (Debian chromium driven by
Playwright) against a dev server that serves the UI: list filters on the contract's search
attributes, and a deal's page (summary, current details, labelled timers and activities,
the handlers' descriptions). Screenshots land in artifacts/ui/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
import pytest_asyncio
from playwright.async_api import Browser, FrameLocator, Page, ViewportSize, async_playwright, expect
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from starter.client import workflow_id
from starter.ports import free_port
from starter.settings import Settings
from starter.temporal_server import DevServer, DevServerOptions, start_dev_server
from tests.helpers import assert_eq_eventually
from tests.sales_team import App, running_app
from tests.test_search_attributes import entered_at_first_level, workflow_ids
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NEGOTIATION = "Negotiation/Review"
UI_TIMEOUT_MS = 30_000
VIEWPORT: ViewportSize = {"width": 1400, "height": 1000}
WORKFLOW_ID = re.compile(r"opportunity-[\w-]+")


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("Debian chromium is missing on this CI machine: run scripts/install-browser.sh first")
    pytest.skip("Debian chromium is not installed (scripts/install-browser.sh installs it)")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ui_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServer]:
    """The session's dev server runs headless, so this module starts one that serves the UI."""
    chromium()
    log = tmp_path_factory.mktemp("temporal-ui") / "temporal.log"
    server = await start_dev_server(DevServerOptions(port=free_port(), ui_port=free_port(), log_file=log))
    try:
        yield server
    finally:
        await server.astop()


@dataclass
class Deals:
    app: App
    ids: dict[str, str]
    ui_url: str

    def wf(self, name: str) -> str:
        return workflow_id(self.ids[name])


# name -> (deal name, account)
DEALS = {
    "escalated": ("Acme rollout", "Acme Corp"),
    "moved": ("Globex renewal", "Globex"),
    "qualifying": ("Initech pilot", "Initech"),
    "validating": ("Umbrella security suite", "Umbrella"),
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deals(ui_server: DevServer, db_pool: asyncpg.Pool) -> AsyncIterator[Deals]:
    temporal = await Client.connect(ui_server.address, data_converter=pydantic_data_converter)
    # With an endpoint configured, each escalation starts its webhook delivery workflow.
    with webhook_receiver() as receiver:
        settings = Settings(webhook_urls=[f"{receiver.base_url}/hooks"])
        async with running_app(temporal, db_pool, settings) as app:
            yield await seed_deals(app, temporal, ui_server)


async def seed_deals(app: App, temporal: Client, ui_server: DevServer) -> Deals:
    seeded = Deals(app, {name: app.opp_id() for name in DEALS}, str(ui_server.ui_url))
    team, client = app.team, app.client
    process = await client.process_for(None)

    async def create(name: str, stage: str, **extra: Any) -> None:
        deal_name, account = DEALS[name]
        await client.create(
            actor=team.actor("rep"),
            name=deal_name,
            account=account,
            owner_id=team.id("rep"),
            opportunity_id=seeded.ids[name],
            stage=stage,
            **extra,
        )

    await create(
        "escalated",
        NEGOTIATION,
        amount="125000",
        close_date="2026-12-15",
        stage_entered_at=entered_at_first_level(process, NEGOTIATION, datetime.now(UTC)),
    )
    await client.record_activity(
        seeded.ids["escalated"],
        actor=team.actor("rep"),
        kind="call",
        subject="pricing call with procurement",
    )
    await create("moved", "Proposal/Price Quote", amount="40000", fields={"decision_maker": "CFO"})
    await client.change_stage(seeded.ids["moved"], actor=team.actor("rep"), stage=NEGOTIATION)
    await create("qualifying", "Qualification")
    await create("validating", "Perception Analysis")

    everyone = f'OpportunityOwner = "{team.id("rep")}"'
    await assert_eq_eventually(
        {seeded.wf(n) for n in DEALS},
        lambda: workflow_ids(temporal, everyone),
        timeout=20,
        interval=0.3,
    )
    for name, line in [("escalated", "Last activity:"), ("moved", "Stage:** Negotiation/Review")]:
        await assert_eq_eventually(
            True, partial(card_shows, temporal, seeded.wf(name), line), timeout=20, interval=0.3
        )
    return seeded


async def card_shows(temporal: Client, wf_id: str, text: str) -> bool:
    metadata = await temporal.get_workflow_handle(wf_id).query("__temporal_workflow_metadata")
    return text in metadata.current_details


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser(ui_server: DevServer) -> AsyncIterator[Browser]:
    expect.set_options(timeout=UI_TIMEOUT_MS)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """One tab for the module: the UI's scripts load once and stay cached between pages."""
    context = await browser.new_context(viewport=VIEWPORT, timezone_id="UTC")
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def listed_workflows(page: Page, deals: Deals, query: str, expected_count: int) -> set[str]:
    await page.goto(f"{deals.ui_url}/namespaces/default/workflows?query={quote(query)}")
    rows = page.get_by_test_id("workflows-summary-configurable-table-row")
    await expect(rows).to_have_count(expected_count)
    found = set()
    for text in await rows.all_inner_texts():
        match = WORKFLOW_ID.search(text)
        assert match, f"no workflow id in the row {text!r}"
        found.add(match.group(0))
    return found


async def test_a_stage_filter_lists_exactly_the_deals_in_that_stage(page: Page, deals: Deals) -> None:
    owner = f'OpportunityOwner = "{deals.app.team.id("rep")}"'

    in_negotiation = await listed_workflows(page, deals, f'OpportunityStage = "{NEGOTIATION}" AND {owner}', 2)
    await expect(page.get_by_text(f'"{NEGOTIATION}"').first).to_be_visible()
    await screenshot(page, "list-negotiation")
    assert in_negotiation == {deals.wf("escalated"), deals.wf("moved")}

    escalated = await listed_workflows(
        page, deals, f'OpportunityStage = "{NEGOTIATION}" AND EscalationLevel > 0 AND {owner}', 1
    )
    await screenshot(page, "list-negotiation-escalated")
    assert escalated == {deals.wf("escalated")}


async def open_deal(page: Page, deals: Deals, name: str, tab: str) -> None:
    described = await deals.app.temporal.get_workflow_handle(deals.wf(name)).describe()
    await page.goto(
        f"{deals.ui_url}/namespaces/default/workflows/{quote(deals.wf(name))}/{described.run_id}/{tab}"
    )


def rendered(page: Page, section: str) -> FrameLocator:
    """The UI renders summary, details and current details as Markdown in sandboxed frames."""
    return page.frame_locator(f"#user-metadata-{section}")


async def test_a_deals_page_reads_like_a_deal_card(page: Page, deals: Deals) -> None:
    rep = deals.app.team.id("rep")
    state = await deals.app.client.state(deals.ids["escalated"])
    next_due = datetime.fromisoformat(state["next_escalation_due_at"])

    await open_deal(page, deals, "escalated", "user-metadata")
    await expect(rendered(page, "summary").locator("body")).to_contain_text("Acme rollout — Acme Corp")
    await expect(rendered(page, "details").locator("body")).to_contain_text(
        f"Opportunity {deals.ids['escalated']}, process new-business v1"
    )
    card = rendered(page, "current-details").locator("body")
    for line in [
        "Stage: Negotiation/Review (90%, Pipeline)",
        f"Owner: {rep}",
        "Amount: 125,000.00",
        "Close date: 2026-12-15",
        "In stage since:",
        "Guidance: Work through legal and security review",
        f"Escalation level: 1 Next escalation due: {next_due:%Y-%m-%d %H:%M} UTC",
        "call: pricing call with procurement",
    ]:
        await expect(card).to_contain_text(line)
    await screenshot(page, "deal-card-escalated")

    # Compact history: one row per timer, activity and child workflow, with its summary.
    await page.set_viewport_size({"width": 1900, "height": 1200})
    await open_deal(page, deals, "escalated", "history")
    await page.get_by_role("button", name="Compact").click()
    labels: list[str | re.Pattern[str]] = [
        re.compile(r"^save \d+ change\(s\): create"),  # the activity may share the batch
        "remind the owner (Negotiation/Review, level 1)",
        "webhook opportunity.escalated: Acme rollout",
        "stage clock: Negotiation/Review — level 2, escalate to manager",
    ]
    for label in labels:
        await expect(page.get_by_text(label, exact=True).first).to_be_visible()
    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    await page.screenshot(path=str(ARTIFACTS / "history-escalated.png"))
    await page.set_viewport_size(VIEWPORT)


async def test_missing_fields_and_open_handoffs_show_on_the_card(page: Page, deals: Deals) -> None:
    await open_deal(page, deals, "qualifying", "user-metadata")
    card = rendered(page, "current-details").locator("body")
    await expect(card).to_contain_text("Missing to leave Qualification: budget, timeline")
    await expect(card).to_contain_text("Guidance: Qualify budget, authority, need and timeline")
    await screenshot(page, "deal-card-missing-fields")

    await open_deal(page, deals, "validating", "user-metadata")
    card = rendered(page, "current-details").locator("body")
    await expect(card).to_contain_text("Open hand-offs: Technical validation (unassigned)")
    await screenshot(page, "deal-card-open-handoff")


async def test_every_handler_is_described_and_updates_show_it(page: Page, deals: Deals) -> None:
    handle = deals.app.temporal.get_workflow_handle(deals.wf("moved"))
    definition = (await handle.query("__temporal_workflow_metadata")).definition
    handlers = [*definition.update_definitions, *definition.signal_definitions, *definition.query_definitions]
    ours = [h for h in handlers if not h.name.startswith("__")]
    assert [h.name for h in ours if not h.description] == []

    await open_deal(page, deals, "moved", "user-metadata")
    await page.get_by_role("button", name="More Actions").click()
    await page.get_by_role("menuitem", name="Send an Update").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_role("button", name="Select an Update").click()
    for update in definition.update_definitions:
        await expect(dialog.get_by_text(update.name, exact=True)).to_be_visible()
        await expect(dialog.get_by_text(update.description, exact=True)).to_be_visible()
    await screenshot(page, "update-descriptions")
