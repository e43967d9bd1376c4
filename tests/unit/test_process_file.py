"""Process files as sales ops write them: validated, with errors that point at the line."""

import base64
import hashlib
import zlib

import pytest

from sales import process
from sales.process import ProcessFileError, default_process, parse_process_yaml

FORECAST = ["Pipeline", "Best Case", "Commit", "Closed", "Omitted"]


def test_default_process_is_salesforces_standard_list() -> None:
    process = default_process()
    assert [(s.name, s.probability, s.forecast_category) for s in process.stages] == [
        ("Prospecting", 10, "Pipeline"),
        ("Qualification", 10, "Pipeline"),
        ("Needs Analysis", 20, "Pipeline"),
        ("Value Proposition", 50, "Pipeline"),
        ("Id. Decision Makers", 60, "Pipeline"),
        ("Perception Analysis", 70, "Pipeline"),
        ("Proposal/Price Quote", 75, "Pipeline"),
        ("Negotiation/Review", 90, "Pipeline"),
        ("Closed Won", 100, "Closed"),
        ("Closed Lost", 0, "Omitted"),
    ]
    assert process.won_stage.name == "Closed Won" and process.lost_stage.name == "Closed Lost"


BROKEN = """\
name: renewal
stages:
  - name: Open
    probability: 50
    forecast_category: Pipeline
    stuck_after: 14 days
  - name: Won
    probability: 140
    forecast_category: Closed
    closed: true
    won: true
  - name: Lost
    probability: 0
    forecast_category: Omitted
    closed: true
"""


def test_errors_name_the_line_and_the_field() -> None:
    with pytest.raises(ProcessFileError) as caught:
        parse_process_yaml(BROKEN, "renewal.yaml")
    message = str(caught.value)
    assert "renewal.yaml: line 6: stages.0.stuck_after" in message
    assert "use a whole number followed by s, m, h, d, w or bd" in message
    assert "renewal.yaml: line 8: stages.1.probability" in message
    assert "less than or equal to 100" in message


def test_cross_references_are_checked() -> None:
    text = BROKEN.replace("14 days", "14d").replace("140", "100") + (
        "automations:\n  - {name: x, when: {kind: call}, then: {advance_to: Nowhere}}\n"
    )
    with pytest.raises(ProcessFileError, match="automation 'x' names unknown stage 'Nowhere'"):
        parse_process_yaml(text, "renewal.yaml")


def test_a_process_needs_won_and_lost_stages() -> None:
    text = BROKEN.replace("14 days", "14d").replace("140", "100").replace("    won: true\n", "")
    with pytest.raises(ProcessFileError, match="needs a won closed stage"):
        parse_process_yaml(text)


def test_unknown_keys_are_refused() -> None:
    text = (
        BROKEN.replace("14 days", "14d")
        .replace("140", "100")
        .replace("name: Open", "name: Open\n    colour: red")
    )
    with pytest.raises(ProcessFileError, match=r"stages\.0\.colour: Extra inputs are not permitted"):
        parse_process_yaml(text)


def test_a_packed_definition_unpacks_to_one_shared_equal_process() -> None:
    original = default_process()
    packed = process.pack(original)
    assert len(packed) < len(original.model_dump_json()) / 3
    first, again = process.unpack(packed), process.unpack(process.pack(default_process()))
    assert first == original
    assert first is again  # deals pinned to one version share one object
    assert process.shared(first) is first


def test_a_shipped_process_packs_to_about_a_hundred_characters_and_an_edited_one_still_unpacks() -> None:
    shipped = default_process()
    assert len(process.pack(shipped)) < 200  # was 2,024 without the preset dictionary
    edited = shipped.model_copy(update={"name": "enterprise", "version": 7, "description": "Edited"})
    packed = process.pack(edited)
    assert packed.startswith(f"d{process.PACKING_DICTIONARY}:")
    assert process.unpack(packed) == edited


def test_a_definition_packed_before_dictionaries_still_unpacks() -> None:
    # What deals started before the dictionary carry: plain zlib in base64.
    original = default_process().model_copy(update={"version": 3})
    older = base64.b64encode(zlib.compress(original.model_dump_json().encode(), 9)).decode("ascii")
    assert process.unpack(older) == original
    with pytest.raises(KeyError):  # a newer starter's dictionary: the task waits for a newer worker
        process.unpack("d99:" + older)


def test_the_packing_dictionary_is_never_edited() -> None:
    # Running deals unpack their start input with it on every replay: a new dictionary is
    # a new file and a new PACKING_DICTIONARY number.
    text = (process.PACKING_FOLDER / "dictionary-1.jsonl").read_bytes()
    assert hashlib.sha256(text).hexdigest() == (
        "a0f97a7619599bbf72ee3a1e37f2aa5b0fff88504381d05546bd0f91896a092a"
    )
