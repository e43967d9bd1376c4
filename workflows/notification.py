"""NotificationWorkflow: delivers one signed webhook to every endpoint, retrying with
backoff, on its own so a failing endpoint never blocks the deal or other notifications.

Its workflow id is the webhook id, so the same notification is never delivered twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.notifications import Notifier
    from sales.records import Notification
    from workflows.retries import WEBHOOK_DELIVERY


@workflow.defn(name="NotificationWorkflow")
class NotificationWorkflow:
    @workflow.run
    async def run(self, notification: Notification) -> dict[str, Any]:
        return await workflow.execute_activity_method(
            Notifier.deliver,
            notification,
            summary=f"send webhook {notification.event_type}",
            **WEBHOOK_DELIVERY,
        )


def _deal_of(notification: Notification) -> str:
    return str(notification.payload.get("name") or notification.payload.get("opportunity_id") or "")


async def notify_once(notification: Notification, run: Callable[..., Any]) -> None:
    """Start the delivery workflow unless one with this webhook id already exists."""
    try:
        await workflow.start_child_workflow(
            run,
            notification,
            id=f"notify-{notification.webhook_id}",
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            static_summary=f"webhook {notification.event_type}: {_deal_of(notification)}",
        )
    except Exception as exc:
        if "already" not in str(exc).lower():
            raise
