"""Small helpers shared by the tests."""

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio.common import SearchAttributeIndexedValueType as SAType
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment

from starter.temporal_server import temporal_binary
from starter.temporal_setup import SEARCH_ATTRIBUTES

_KEY_FACTORIES: dict[SAType, Callable[[str], SearchAttributeKey[Any]]] = {
    SAType.TEXT: SearchAttributeKey.for_text,
    SAType.KEYWORD: SearchAttributeKey.for_keyword,
    SAType.INT: SearchAttributeKey.for_int,
    SAType.DOUBLE: SearchAttributeKey.for_float,
    SAType.BOOL: SearchAttributeKey.for_bool,
    SAType.DATETIME: SearchAttributeKey.for_datetime,
    SAType.KEYWORD_LIST: SearchAttributeKey.for_keyword_list,
}


def contract_search_attribute_keys() -> list[SearchAttributeKey[Any]]:
    return [_KEY_FACTORIES[sa_type](name) for name, sa_type in SEARCH_ATTRIBUTES.items()]


def new_task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


async def assert_eq_eventually(
    expected: object,
    fn: Callable[[], object],
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.1,
) -> None:
    """Poll `fn` (sync or async) until it returns `expected`; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = fn()
        last = await result if inspect.isawaitable(result) else result
        if last == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:g}s expected {expected!r}, last got {last!r}")
        await asyncio.sleep(interval)


async def start_dev_server(extra_args: list[str] | None = None) -> WorkflowEnvironment:
    """The real dev server (in memory) with the contract's search attributes."""
    return await WorkflowEnvironment.start_local(
        namespace="default",
        data_converter=pydantic_data_converter,
        search_attributes=contract_search_attribute_keys(),
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=extra_args or [],
        dev_server_startup_timeout=timedelta(seconds=30),
    )


async def start_time_skipping_server() -> WorkflowEnvironment:
    """A dev server whose workflows' clocks can be moved forward one workflow at a time
    (``env.fast_forward(handle, delta)``), with the contract's search attributes."""
    return await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=contract_search_attribute_keys(),
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"],
    )
