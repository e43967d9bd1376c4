"""Prepare any Temporal cluster for oppflow: the namespace and the contract's search attributes."""

import asyncio
import time
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType as SAType
from temporalio.service import RPCError, RPCStatusCode

SEARCH_ATTRIBUTES: dict[str, SAType] = {
    "OpportunityStage": SAType.KEYWORD,
    "OpportunityOwner": SAType.KEYWORD,
    "OpportunityAmount": SAType.DOUBLE,
    "OpportunityCloseDate": SAType.DATETIME,
    "StageEnteredAt": SAType.DATETIME,
    "EscalationLevel": SAType.INT,
    "ForecastCategory": SAType.KEYWORD,
}

# Spelling used by Temporal's CLI (`--search-attribute Name=Keyword`) and in messages.
TYPE_NAMES: dict[SAType, str] = {
    SAType.TEXT: "Text",
    SAType.KEYWORD: "Keyword",
    SAType.INT: "Int",
    SAType.DOUBLE: "Double",
    SAType.BOOL: "Bool",
    SAType.DATETIME: "Datetime",
    SAType.KEYWORD_LIST: "KeywordList",
}

DEFAULT_RETENTION = timedelta(days=30)


class TemporalSetupError(RuntimeError):
    pass


def _type_name(value: int) -> str:
    try:
        return TYPE_NAMES[SAType(value)]
    except ValueError:
        return f"unknown type {value}"


async def register_search_attributes(
    client: Client, namespace: str, attributes: dict[str, SAType] | None = None
) -> list[str]:
    """Register the missing attributes; answer the names added. Idempotent: an attribute that
    exists with the same type is left alone, one with another type is an error."""
    wanted = SEARCH_ATTRIBUTES if attributes is None else attributes
    listing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    existing = {**listing.system_attributes, **listing.custom_attributes}
    for name, sa_type in wanted.items():
        if name in existing and existing[name] != sa_type.value:
            raise TemporalSetupError(
                f"search attribute {name} exists as {_type_name(existing[name])}, "
                f"oppflow needs {TYPE_NAMES[sa_type]}"
            )
    missing = {name: sa_type for name, sa_type in wanted.items() if name not in existing}
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={name: IndexedValueType.ValueType(t.value) for name, t in missing.items()},
            )
        )
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
        # Someone registered them concurrently: re-check the types and report nothing added.
        await register_search_attributes(client, namespace, wanted)
        return []
    return sorted(missing)


async def ensure_namespace(
    client: Client, namespace: str, *, retention: timedelta = DEFAULT_RETENTION, wait_seconds: float = 30.0
) -> bool:
    """Create `namespace` when it does not exist (answers True then) and wait until it serves.
    On clusters that forbid it (Temporal Cloud) a missing namespace is a clear error."""
    if await _namespace_exists(client, namespace):
        return False
    try:
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace,
                workflow_execution_retention_period=Duration(seconds=int(retention.total_seconds())),
            )
        )
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:
            return False
        raise TemporalSetupError(
            f"namespace {namespace} does not exist and cannot be created here ({err.message}): "
            "create it with your Temporal admin tools or Cloud console"
        ) from err
    deadline = time.monotonic() + wait_seconds
    while not await _namespace_ready(client, namespace):
        if time.monotonic() > deadline:
            raise TemporalSetupError(
                f"namespace {namespace} was created but is not served after {wait_seconds:g}s"
            )
        await asyncio.sleep(0.5)
    return True


async def _namespace_exists(client: Client, namespace: str) -> bool:
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def _namespace_ready(client: Client, namespace: str) -> bool:
    # A fresh namespace reaches the frontend's namespace cache a few seconds after registration.
    try:
        await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def setup_temporal(client: Client, namespace: str) -> list[str]:
    """What `oppflow setup-temporal` does: namespace, then search attributes."""
    await ensure_namespace(client, namespace)
    return await register_search_attributes(client, namespace)
