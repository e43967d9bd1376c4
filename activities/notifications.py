"""Signed webhooks (Standard Webhooks): ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``.

The id comes from the business key, so every retry re-sends the same id and receivers
de-duplicate. During a secret rotation ``OPPFLOW_WEBHOOK_SECRET`` holds the new and
old secrets, comma-separated, and each message carries one signature per secret.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from standardwebhooks import Webhook
from temporalio import activity
from temporalio.exceptions import ApplicationError

from sales.records import Notification
from starter import metrics

ACQUIRE_TIMEOUT = 5.0


def sign_headers(secrets: list[str], webhook_id: str, body: str, at: datetime) -> dict[str, str]:
    signatures = " ".join(Webhook(secret).sign(webhook_id, at, body) for secret in secrets)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }


class Notifier:
    def __init__(self, pool: asyncpg.Pool, endpoints: list[str], secrets: list[str]) -> None:
        self.pool = pool
        self.endpoints = endpoints
        self.secrets = secrets

    @activity.defn(name="deliver_webhook")
    async def deliver(self, notification: Notification) -> dict[str, Any]:
        endpoints = list(dict.fromkeys([*self.endpoints, *notification.endpoints]))
        if not endpoints:
            return {"delivered": [], "failed": []}
        if not self.secrets:
            raise ApplicationError("OPPFLOW_WEBHOOK_SECRET is not set", non_retryable=True)
        body = json.dumps(
            {
                "type": notification.event_type,
                "timestamp": datetime.now(UTC).isoformat(),
                "data": notification.payload,
            },
            default=str,
        )
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            done = {
                r["endpoint"]
                for r in await conn.fetch(
                    "SELECT endpoint FROM webhook_deliveries WHERE webhook_id = $1 AND status = 'delivered'",
                    notification.webhook_id,
                )
            }
        delivered: list[str] = []
        failed: list[str] = []
        async with httpx.AsyncClient(timeout=10.0) as http:
            for endpoint in endpoints:
                if endpoint in done:
                    continue
                headers = sign_headers(self.secrets, notification.webhook_id, body, datetime.now(UTC))
                status, error = None, None
                try:
                    response = await http.post(endpoint, content=body, headers=headers)
                    status = response.status_code
                    if not 200 <= status < 300:
                        error = f"HTTP {status}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                await self._record(notification.webhook_id, endpoint, status, error)
                (failed if error else delivered).append(endpoint)
        metrics.observe_webhook_failures(failed)
        if failed:
            # Retried with backoff by the activity's policy; delivered endpoints are skipped.
            raise ApplicationError(f"webhook {notification.webhook_id} failed for {', '.join(failed)}")
        return {"delivered": delivered, "failed": failed}

    async def _record(self, webhook_id: str, endpoint: str, status: int | None, error: str | None) -> None:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            await conn.execute(
                "INSERT INTO webhook_deliveries (webhook_id, endpoint, status, attempts, last_status, "
                "last_error, delivered_at) VALUES ($1, $2, $3, 1, $4, $5, CASE WHEN $5::text IS NULL "
                "THEN now() END) ON CONFLICT (webhook_id, endpoint) DO UPDATE SET status = EXCLUDED.status, "
                "attempts = webhook_deliveries.attempts + 1, last_status = EXCLUDED.last_status, "
                "last_error = EXCLUDED.last_error, delivered_at = EXCLUDED.delivered_at",
                webhook_id,
                endpoint,
                "failed" if error else "delivered",
                status,
                error,
            )
