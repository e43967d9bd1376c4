"""``python -m bench [scenario ...] [sizes]``: oppflow against a bare Temporal baseline on
one fresh dev server and Postgres, in alternating rounds; a table, then one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any

from bench.experiments import EXPERIMENTS
from bench.measure import Stalled
from bench.report import json_line, machine, print_report
from bench.scenarios import SCENARIOS, Sizes, start_shared_workers
from bench.stack import bench_stack

SHARED_WORKER_SCENARIOS = ("stage-changes", "creation", "storm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Sizes()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--opportunities", type=int, default=defaults.opportunities, help="stage changes: deals (N)"
    )
    parser.add_argument(
        "--changes", type=int, default=defaults.changes, help="stage changes: changes per deal (M)"
    )
    parser.add_argument("--callers", type=int, default=defaults.callers, help="concurrent callers (C)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="alternating rounds for stage changes and creation",
    )
    parser.add_argument("--creations", type=int, default=defaults.creations, help="creation: deals per round")
    parser.add_argument(
        "--storm", type=int, default=defaults.storm, help="escalation storm: deals due in the same second"
    )
    parser.add_argument("--storm-rounds", type=int, default=defaults.storm_rounds)
    parser.add_argument(
        "--storm-min-stuck",
        type=int,
        default=defaults.storm_min_stuck,
        help="escalation storm: shortest stuck_after in seconds",
    )
    parser.add_argument(
        "--open-deals",
        type=int,
        default=defaults.open_deals,
        help="open deals held by one worker (e.g. 10000)",
    )
    parser.add_argument(
        "--busy-deals",
        type=int,
        default=defaults.busy_deals,
        help="busy deals: deals flooded with activities",
    )
    parser.add_argument(
        "--busy-activities",
        type=int,
        default=defaults.busy_activities,
        help="busy deals: activities sent to each deal back to back",
    )
    parser.add_argument(
        "--experiment",
        default=None,
        help=f"comma-separated measured variants of the oppflow worker: {', '.join(EXPERIMENTS)}",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    args = parser.parse_args(argv)
    for name in (args.experiment or "").split(","):
        if name and name not in EXPERIMENTS:
            parser.error(f"unknown experiment {name!r}: choose from {', '.join(EXPERIMENTS)}")
    unknown = [s for s in args.scenarios if s not in (*SCENARIOS, "all")]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)} or all")
    if not args.scenarios or "all" in args.scenarios:
        args.scenarios = list(SCENARIOS)
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    return Sizes(
        opportunities=args.opportunities,
        changes=args.changes,
        callers=args.callers,
        rounds=args.rounds,
        creations=args.creations,
        storm=args.storm,
        storm_rounds=args.storm_rounds,
        storm_min_stuck=args.storm_min_stuck,
        open_deals=args.open_deals,
        busy_deals=args.busy_deals,
        busy_activities=args.busy_activities,
        experiment=args.experiment,
    )


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run(scenarios: list[str], sizes: Sizes, keep: bool = False) -> dict[str, Any]:
    # SIGTERM cancels the run, so the stack (workers, server, Postgres) is stopped.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results: dict[str, Any] = {"sizes": vars(sizes), "load_avg_1m_at_start": os.getloadavg()[0]}
    results["scenarios"] = {}
    async with bench_stack(keep=keep) as stack:
        progress(f"stack up: Temporal {stack.address}, data in {stack.workdir}")
        if any(s in SHARED_WORKER_SCENARIOS for s in scenarios):
            await start_shared_workers(stack, sizes)
        for name in scenarios:
            progress(f"{name} ...")
            began = time.perf_counter()
            try:
                results["scenarios"][name] = await SCENARIOS[name](stack, sizes)
            except Stalled as stalled:
                stack.keep_files = True
                progress(f"{name} stopped: {stalled}; logs kept in {stack.workdir}")
                results["stalled"] = {"scenario": name, "error": str(stalled)}
                break
            except Exception as exc:  # the other scenarios' figures are still worth having
                stack.keep_files = True
                progress(f"{name} failed: {exc!r}; logs kept in {stack.workdir}")
                results.setdefault("failed", {})[name] = repr(exc)
                continue
            results["scenarios"][name]["scenario_seconds"] = round(time.perf_counter() - began, 1)
            figures = json_line(results["scenarios"][name])
            progress(f"{name} done in {time.perf_counter() - began:.0f}s: {figures}")
    results["machine"] = machine()
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = asyncio.run(run(args.scenarios, sizes_from(args), keep=args.keep))
    print_report(results)
    print(json_line(results), flush=True)


if __name__ == "__main__":
    main()
