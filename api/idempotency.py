"""``Idempotency-Key``: the key is the command's ``request_id``; its answer is kept.

The same key with the same request (method, path, caller, body) answers what the first
one answered; the same key with anything else is refused with 409. Answers of 5xx are not
kept, so a retry after an outage runs the command again, which the workflow
de-duplicates on the same ``request_id``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from api.errors import ApiError

log = logging.getLogger("oppflow.api")

ACQUIRE_TIMEOUT = 5.0

# One round trip: register the key, or read what it holds.
CLAIM = """
WITH claimed AS (
    INSERT INTO api_idempotency (key, fingerprint, actor_id, method, path)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (key) DO NOTHING
    RETURNING fingerprint, status_code, response
)
SELECT fingerprint, status_code, response FROM claimed
UNION ALL
SELECT fingerprint, status_code, response FROM api_idempotency
WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM claimed)
"""

COMPLETE = """
UPDATE api_idempotency SET status_code = $3, response = $4, completed_at = now()
WHERE key = $1 AND fingerprint = $2 AND status_code IS NULL
"""


@dataclass(frozen=True)
class KeptAnswer:
    status_code: int
    body: Any


def fingerprint(method: str, path: str, actor_id: str, body: bytes) -> str:
    try:
        canonical = json.dumps(json.loads(body or b"null"), sort_keys=True, separators=(",", ":"))
    except (ValueError, UnicodeDecodeError):
        canonical = body.hex()
    text = "\n".join((method.upper(), path, actor_id, canonical))
    return hashlib.sha256(text.encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, key: str, print_: str, actor_id: str, method: str, path: str) -> KeptAnswer | None:
        """Register the key; answer the kept response of an earlier identical request."""
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            row = await conn.fetchrow(CLAIM, key, print_, actor_id, method, path)
        if row is None:
            # A concurrent first request holds the key but is not visible to this statement yet:
            # run it too; the workflow applies one request_id once.
            return None
        if row["fingerprint"] != print_:
            raise ApiError(
                409,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request; use a new key",
                field="Idempotency-Key",
            )
        if row["status_code"] is None:
            return None
        return KeptAnswer(row["status_code"], row["response"])

    async def keep(self, key: str, print_: str, status_code: int, body: Any) -> None:
        try:
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await conn.execute(COMPLETE, key, print_, status_code, body)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The command is done; a retry re-runs it and the workflow answers the same.
            log.warning("answer for Idempotency-Key %s not kept: %s", key, exc)
