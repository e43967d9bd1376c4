"""Stage-change latency through the HTTP API against the same change sent straight to
Temporal (``execute_update``), in one run on one stack, calls interleaved.

    python -m bench.http_latency [--moves 300] [--deals 10]

One worker process (the real oppflow worker) and the API under uvicorn on a free port,
reached over TCP with keep-alive. Calls are sequential (latency, not throughput); each
move toggles a deal between Prospecting and Qualification. Prints a table, then one JSON
line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from api.app import create_app
from api.auth import mint_token
from api.server import serve
from bench.measure import percentile
from bench.stack import bench_stack, owner_id, rep
from sales.messages import ChangeStage, CommandResult
from starter.client import OpportunityClient
from starter.ports import free_port

SECRET = "bench-http-latency-secret-long-enough-for-hs256"
QUEUE = "bench-http-latency"
WARMUP = 10
VARIANTS = ("temporal execute_update", "http", "http + Idempotency-Key")


def other_stage(stage: str) -> str:
    return "Qualification" if stage == "Prospecting" else "Prospecting"


async def wait_until_up(http: httpx.AsyncClient, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await http.get("/health")).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def run(moves: int, deals: int, keep: bool) -> dict[str, Any]:
    async with bench_stack(keep) as stack:
        await stack.start_worker("oppflow", QUEUE)
        client = OpportunityClient(stack.client, stack.pool, QUEUE)
        port = free_port()
        server = asyncio.create_task(
            serve(create_app(client, jwt_secret=SECRET, public_url="http://x"), port)
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            await wait_until_up(http)
            ids = [f"bench-http-{uuid.uuid4().hex[:8]}" for _ in range(deals)]
            for i, opp in enumerate(ids):
                await client.create(
                    actor=rep(i), name=f"Deal {i}", account="Bench", owner_id=owner_id(i), opportunity_id=opp,
                    fields={"budget": 1000, "timeline": "Q3"},
                )  # fmt: skip
            stages = dict.fromkeys(ids, "Prospecting")
            tokens = {opp: mint_token(SECRET, owner_id(i), ["rep"]) for i, opp in enumerate(ids)}

            async def direct(opp: str, target: str) -> None:
                i = ids.index(opp)
                cmd = ChangeStage(request_id=uuid.uuid4().hex, actor=rep(i), stage=target)
                await client.handle(opp).execute_update(
                    "change_stage", cmd, id=cmd.request_id, result_type=CommandResult
                )

            async def over_http(opp: str, target: str, key: bool) -> None:
                headers = {"Authorization": f"Bearer {tokens[opp]}"}
                if key:
                    headers["Idempotency-Key"] = uuid.uuid4().hex
                response = await http.post(
                    f"/opportunities/{opp}/stage", json={"stage": target}, headers=headers
                )
                response.raise_for_status()

            calls: dict[str, Callable[[str, str], Awaitable[None]]] = {
                VARIANTS[0]: direct,
                VARIANTS[1]: lambda opp, target: over_http(opp, target, False),
                VARIANTS[2]: lambda opp, target: over_http(opp, target, True),
            }
            latencies: dict[str, list[float]] = {v: [] for v in VARIANTS}
            turn = 0
            for round_ in range(WARMUP + moves):
                order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
                for variant in order:
                    opp = ids[turn % deals]
                    turn += 1
                    target = other_stage(stages[opp])
                    began = time.perf_counter()
                    await calls[variant](opp, target)
                    if round_ >= WARMUP:
                        latencies[variant].append(time.perf_counter() - began)
                    stages[opp] = target
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
    return {
        variant: {
            "count": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
            "mean_ms": round(statistics.fmean(values) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2),
        }
        for variant, values in latencies.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_latency", description=__doc__)
    parser.add_argument("--moves", type=int, default=300, help="timed stage changes per variant")
    parser.add_argument("--deals", type=int, default=10, help="deals the moves rotate over")
    parser.add_argument("--keep", action="store_true", help="keep the stack's temporary directory")
    args = parser.parse_args()
    results = asyncio.run(run(args.moves, args.deals, args.keep))
    print(f"{'stage change via':<26}{'count':>7}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'max ms':>10}")
    for variant, r in results.items():
        print(
            f"{variant:<26}{r['count']:>7}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['mean_ms']:>10.2f}"
            f"{r['max_ms']:>10.2f}"
        )
    print(json.dumps({"bench": "http_latency", "moves": args.moves, "deals": args.deals, "results": results}))


if __name__ == "__main__":
    main()
