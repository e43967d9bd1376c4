"""`python -m bench` at tiny sizes: every scenario runs on its own dev server and Postgres,
the work really happens (rows in Postgres, answers from the workers), and the output ends
with one JSON line holding every figure and ratio. Not a timed test: no figure is judged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.scenarios import BARE_UPDATES
from bench.stack import bench_stack

# About 45 s on an idle 2-core machine (its own server and Postgres), 100 s on a busy one.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEALS, CHANGES, CREATIONS, STORM, OPEN, BUSY, BUSY_ACTIVITIES = 6, 2, 5, 8, 12, 2, 15
PRODUCTION_CACHE = 8


@pytest.fixture(scope="module")
def run() -> tuple[str, dict[str, Any]]:
    args = [sys.executable, "-m", "bench", "--opportunities", str(DEALS), "--changes", str(CHANGES)]
    args += ["--callers", "4", "--rounds", "1", "--creations", str(CREATIONS), "--storm", str(STORM)]
    args += ["--storm-min-stuck", "5", "--open-deals", str(OPEN)]
    args += ["--busy-deals", str(BUSY), "--busy-activities", str(BUSY_ACTIVITIES)]
    # A production cache smaller than the open deals, so that phase is measured too.
    env = {**os.environ, "OPPFLOW_MAX_CACHED_WORKFLOWS": str(PRODUCTION_CACHE)}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    return done.stdout, json.loads(lines[-1])


def test_prints_a_table_and_ends_with_one_json_line_of_every_scenario(
    run: tuple[str, dict[str, Any]],
) -> None:
    text, results = run
    assert "targets" in text and "bare update" in text
    assert set(results["scenarios"]) == {"stage-changes", "creation", "storm", "open-deals", "busy-deals"}
    assert results["machine"]["cpus"] >= 1
    for scenario in results["scenarios"].values():
        assert scenario["ratios"] and all(isinstance(v, float) for v in scenario["ratios"].values())
        assert all(isinstance(met, bool) for met in scenario["targets"].values())


def test_every_stage_change_was_answered_and_its_rows_are_in_postgres(
    run: tuple[str, dict[str, Any]],
) -> None:
    figures = run[1]["scenarios"]["stage-changes"]
    for variant in (*(name for name, _ in BARE_UPDATES), "oppflow"):
        assert figures["figures"][variant]["count"] == DEALS * CHANGES
        assert figures["figures"][variant]["errors"] == 0
    assert figures["all_rows_in_postgres_when_answered"] is True
    # Where each change's CPU went: the server and the worker did work; PostgreSQL is measured
    # too (its share can stay under the 10 ms accounting tick at these sizes; its rows are above).
    spent = figures["cpu_ms_per_change"]["oppflow"]
    assert {"temporal server", "worker (oppflow)", "postgres"} <= set(spent)
    assert spent["temporal server"] > 0 and spent["worker (oppflow)"] > 0
    assert spent["total"] >= spent["temporal server"] + spent["worker (oppflow)"]


def test_creation_measures_each_step_and_saves_every_deal(run: tuple[str, dict[str, Any]]) -> None:
    figures = run[1]["scenarios"]["creation"]
    for variant in ("bare start", "bare start + search attributes", "oppflow"):
        assert figures["figures"][variant]["count"] == CREATIONS
        assert figures["figures"][variant]["errors"] == 0
    assert set(figures["oppflow_step_mean_ms"]) == {
        "process version and owner chain (Postgres)",
        "start_workflow (Temporal)",
    }
    assert len(figures["oppflow_all_rows_saved_s"]) == 1
    assert len(figures["bare_all_first_tasks_done_s"]) == 1
    assert figures["cpu_ms_per_creation"]["oppflow"]["temporal server"] > 0


def test_every_storm_deal_escalated_once_not_before_it_was_due(run: tuple[str, dict[str, Any]]) -> None:
    figures = run[1]["scenarios"]["storm"]["figures"]
    assert set(figures) == {"timer + activity", "timer + activity + SA upsert", "oppflow"}
    for variant in figures.values():
        assert variant["rows"] == STORM
        assert variant["fired_lateness_p50_ms"] >= 0
        assert variant["all_rows_after_due_s"] > 0
        assert variant["cpu_ms_per_escalation"]["temporal server"] > 0
    for indexed in (figures["timer + activity + SA upsert"], figures["oppflow"]):
        # Settled: every deal of the round has EscalationLevel 1 indexed (the scenario waits for it).
        assert indexed["settled_per_s"] > 0
        assert indexed["cpu_ms_per_escalation_until_settled"]["temporal server"] > 0


def test_open_deals_are_served_again_by_a_restarted_worker(run: tuple[str, dict[str, Any]]) -> None:
    for variant in run[1]["scenarios"]["open-deals"]["figures"].values():
        assert variant["created"]["count"] == OPEN
        assert variant["cold_get_state"]["count"] == OPEN and variant["cold_get_state"]["errors"] == 0
        assert variant["warm_get_state"]["count"] == OPEN
        assert variant["rss_warm_mib"] > variant["rss_idle_mib"] > 0


def test_open_deals_beyond_the_production_cache_are_all_served(run: tuple[str, dict[str, Any]]) -> None:
    for variant in run[1]["scenarios"]["open-deals"]["figures"].values():
        production = variant["production_cache"]
        assert (production["max_cached_workflows"], production["measured"]) == (PRODUCTION_CACHE, True)
        assert production["warm_get_state"]["count"] == OPEN and production["warm_get_state"]["errors"] == 0
        assert production["warm_get_state_one_caller"]["errors"] == 0
        assert production["rss_mib"] > 0


def test_busy_deals_take_in_their_flood_and_answer_after_a_restart(run: tuple[str, dict[str, Any]]) -> None:
    for variant in run[1]["scenarios"]["busy-deals"]["figures"].values():
        assert variant["settled_after_flood"] == {
            **variant["settled_after_flood"],
            "answered": BUSY,
            "missing": 0,
        }
        assert variant["answered_after_restart"]["answered"] == BUSY
        assert variant["after_flood"]["runs"] >= BUSY
        assert variant["flood_signals_per_s"] > 0


async def test_a_stack_whose_scenario_failed_keeps_its_directory_for_the_logs() -> None:
    async with bench_stack() as stack:
        stack.keep_files = True  # what `python -m bench` sets when a scenario fails or stalls
    try:
        assert (stack.workdir / "temporal.log").is_file()
    finally:
        shutil.rmtree(stack.workdir)
