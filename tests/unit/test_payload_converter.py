"""Every workflow a worker runs shares one payload converter, which writes exactly what the
SDK's pydantic converter writes (so histories recorded before it still decode)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from decimal import Decimal

from temporalio.contrib.pydantic import pydantic_data_converter

from sales.messages import Actor, ChangeStage, CommandResult
from starter.codec import CodecSettings, SharedPayloadConverter, data_converter


def test_each_workflow_is_given_the_same_converter() -> None:
    plain = data_converter(CodecSettings(_env_file=None, encryption_keys=None))  # type: ignore[call-arg]
    key = base64.b64encode(b"k" * 32).decode()
    encrypted = data_converter(CodecSettings(_env_file=None, encryption_keys=f"k1:{key}"))  # type: ignore[call-arg]

    # The SDK calls payload_converter_class() once for every workflow it runs.
    assert plain.payload_converter_class is SharedPayloadConverter
    assert encrypted.payload_converter_class is SharedPayloadConverter
    assert SharedPayloadConverter() is SharedPayloadConverter()


def test_payloads_are_the_sdk_pydantic_converters_byte_for_byte() -> None:
    values = [
        ChangeStage(
            request_id="r-1",
            actor=Actor(id="rep-1", role="rep"),
            stage="Qualification",
            amount=Decimal("125000.50"),
            fields={"budget": 125000, "decided_at": "2026-11-27"},
        ),
        CommandResult(request_id="r-1", message="moved", stage="Qualification", stage_entry_seq=2),
        {"at": datetime(2026, 11, 27, 9, 30, tzinfo=UTC).isoformat(), "n": 3},
        None,
    ]
    ours = SharedPayloadConverter().to_payloads(values)
    sdk = pydantic_data_converter.payload_converter.to_payloads(values)

    assert [p.SerializeToString() for p in ours] == [p.SerializeToString() for p in sdk]
    assert (
        SharedPayloadConverter().from_payloads(sdk, [ChangeStage, CommandResult, dict, type(None)]) == values
    )
