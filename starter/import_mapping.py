"""How the columns of a CRM export become opportunities: built-in mappings for Salesforce
opportunity reports and HubSpot deal exports (told apart by their header), and mapping
files (YAML) for any other export.

A mapping names, for each part of a deal, the source column(s) holding it, plus a stage
map (source stage -> process stage), extra columns to keep as process fields, an id
prefix, date formats and the time zone of dates without one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sales import stage_rules
from sales.messages import MAX_AMOUNT
from sales.process import SalesProcess
from sales.refusals import CommandRefused

Target = Literal[
    "opportunity_id",
    "name",
    "account",
    "owner",
    "stage",
    "amount",
    "close_date",
    "stage_entered_at",
    "created_at",
]
REQUIRED_TARGETS: tuple[Target, ...] = ("opportunity_id", "name", "account", "owner", "stage")
CENT = Decimal("0.01")
DEFAULT_DATE_FORMATS = ["%m/%d/%Y", "%m/%d/%Y %I:%M %p", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S"]


def stage_key(name: str) -> str:
    """'Appointment Scheduled', 'appointmentscheduled' and 'appointment-scheduled' are one stage."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


class ImportMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(default="custom", description="label shown in reports")
    columns: dict[Target, list[str]] = Field(description="source column candidates per deal part")
    signature: list[str] = Field(default_factory=list, description="header columns that identify a preset")
    fields: dict[str, str] = Field(default_factory=dict, description="source column -> process field")
    stage_map: dict[str, str] = Field(default_factory=dict, description="source stage -> process stage")
    id_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_.:@-]*$", max_length=40)
    date_formats: list[str] = Field(default_factory=lambda: list(DEFAULT_DATE_FORMATS))
    timezone: str = "UTC"
    decimal_comma: bool = False
    process: str | None = None

    @field_validator("columns", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def stage_lookup(self) -> dict[str, str]:
        return {stage_key(k): v for k, v in self.stage_map.items()}

    def digest(self) -> str:
        body = self.model_dump(mode="json", exclude={"signature"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


SALESFORCE = ImportMapping(
    source="salesforce",
    signature=["Opportunity Name", "Stage"],
    columns={
        "opportunity_id": ["Opportunity ID", "Opportunity Id", "Id"],
        "name": ["Opportunity Name"],
        "account": ["Account Name"],
        "owner": ["Opportunity Owner", "Opportunity Owner Email", "Owner Email", "Owner ID", "Owner"],
        "stage": ["Stage"],
        "amount": ["Amount"],
        "close_date": ["Close Date"],
        "stage_entered_at": ["Last Stage Change Date"],
        "created_at": ["Created Date"],
    },
)

# HubSpot's default sales pipeline, by internal id (labels normalise to the same keys).
HUBSPOT_DEFAULT_STAGES = {
    "appointmentscheduled": "Qualification",
    "qualifiedtobuy": "Needs Analysis",
    "presentationscheduled": "Value Proposition",
    "decisionmakerboughtin": "Id. Decision Makers",
    "contractsent": "Proposal/Price Quote",
    "closedwon": "Closed Won",
    "closedlost": "Closed Lost",
}

HUBSPOT = ImportMapping(
    source="hubspot",
    signature=["Deal Name", "Deal Stage"],
    columns={
        "opportunity_id": ["Record ID", "Deal ID"],
        "name": ["Deal Name"],
        "account": ["Associated Company (Primary)", "Associated Company", "Company name", "Company"],
        "owner": ["Deal owner", "Deal Owner Email", "Owner email", "HubSpot Owner"],
        "stage": ["Deal Stage"],
        "amount": ["Amount"],
        "close_date": ["Close Date"],
        "stage_entered_at": ["Last Stage Change Date", "Date of last stage change"],
        "created_at": ["Create Date"],
    },
    stage_map=HUBSPOT_DEFAULT_STAGES,
    date_formats=["%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", *DEFAULT_DATE_FORMATS],
)

PRESETS: dict[str, ImportMapping] = {"salesforce": SALESFORCE, "hubspot": HUBSPOT}


class MappingError(ValueError):
    """The export cannot be read with this mapping (a whole-file problem, not a row's)."""


def _header_index(headers: list[str]) -> dict[str, str]:
    return {h.strip().casefold(): h for h in headers if h}


def detect(headers: list[str]) -> ImportMapping:
    """The preset whose signature columns are all in the header."""
    known = _header_index(headers)
    for preset in PRESETS.values():
        if all(col.casefold() in known for col in preset.signature):
            return preset
    shown = ", ".join(h for h in headers[:12] if h)
    raise MappingError(
        f"cannot tell the export format from the header ({shown}); expected a Salesforce opportunity "
        "report or a HubSpot deal export, or pass --mapping FILE (see docs/import.md)"
    )


def resolve_columns(mapping: ImportMapping, headers: list[str]) -> dict[Target, str]:
    """For each deal part, the header column that holds it; a required part missing is fatal."""
    known = _header_index(headers)
    resolved: dict[Target, str] = {}
    for target, candidates in mapping.columns.items():
        for candidate in candidates:
            if candidate.strip().casefold() in known:
                resolved[target] = known[candidate.strip().casefold()]
                break
    missing = [t for t in REQUIRED_TARGETS if t not in resolved]
    if missing:
        wanted = "; ".join(f"{t}: {' or '.join(mapping.columns.get(t, [])) or 'not mapped'}" for t in missing)
        raise MappingError(f"{mapping.source} mapping: the file has no column for {wanted}")
    absent = [col for col in mapping.fields if col.strip().casefold() not in known]
    if absent:
        raise MappingError(
            f"{mapping.source} mapping: fields name columns not in the file: {', '.join(absent)}"
        )
    return resolved


def parse_mapping(text: str, source: str) -> ImportMapping:
    """A mapping file: optionally start from a preset, then override columns and add to maps."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise MappingError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise MappingError(f"{source}: expected a mapping with columns:, stage_map:, ...")
    preset_name = data.pop("preset", None)
    base: dict[str, Any] = {"columns": {}}
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise MappingError(f"{source}: preset must be one of {', '.join(PRESETS)} (got {preset_name!r})")
        base = PRESETS[preset_name].model_dump()
    columns = data.pop("columns", None) or {}
    if not isinstance(columns, dict):
        raise MappingError(f"{source}: columns: must map deal parts to column names")
    merged = {
        **base,
        **data,
        "source": data.get("source", source),
        "columns": {**base["columns"], **columns},
        "stage_map": {**base.get("stage_map", {}), **(data.get("stage_map") or {})},
        "fields": {**base.get("fields", {}), **(data.get("fields") or {})},
    }
    try:
        return ImportMapping.model_validate(merged)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise MappingError(f"{source}: " + "; ".join(problems)) from None


def load_mapping(path: str | Path) -> ImportMapping:
    return parse_mapping(Path(path).read_text(encoding="utf-8"), str(path))


# -- rows: one line of the export -> one deal, or the reasons it cannot be one ---------------------


@dataclass(frozen=True)
class RowProblem:
    line: int
    column: str | None
    reason: str
    opportunity_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "column": self.column,
            "reason": self.reason,
            "opportunity_id": self.opportunity_id,
        }


@dataclass(frozen=True)
class DealRow:
    line: int
    opportunity_id: str
    name: str
    account: str
    owner_id: str
    stage: str
    amount: Decimal | None
    close_date: date | None
    stage_entered_at: datetime
    fields: dict[str, Any]


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    email: str
    roles: list[str]


class OwnerDirectory:
    """The org chart, searchable by id, email or full name (case and spacing ignored)."""

    def __init__(self, people: list[Person]) -> None:
        self.by_id = {p.id: p for p in people}
        self.by_email = {p.email.strip().casefold(): p for p in people}
        self.by_name: dict[str, list[Person]] = {}
        for person in people:
            self.by_name.setdefault(_name_key(person.name), []).append(person)

    def find(self, value: str) -> Person:
        if value in self.by_id:
            return self.by_id[value]
        email = _EMBEDDED_EMAIL.search(value)
        key = (email.group(1) if email else value).strip().casefold()
        if key in self.by_email:
            return self.by_email[key]
        name = _EMBEDDED_EMAIL.sub("", value) if email else value
        matches = self.by_name.get(_name_key(name), [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            ids = ", ".join(sorted(p.id for p in matches))
            raise ValueError(
                f"owner {value!r} matches several people in the org chart ({ids}); use id or email"
            )
        raise ValueError(f"owner {value!r} is not in the org chart (matched by id, email or full name)")


_EMBEDDED_EMAIL = re.compile(r"[<(]?\s*([^\s<>()@]+@[^\s<>()@]+)\s*[>)]?")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")
_CURRENCY = re.compile(r"^(?:[A-Z]{3}\s*)|(?:\s*[A-Z]{3})$|[$€£¥\s\u00a0']")


def _name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_amount(value: Any, decimal_comma: bool = False) -> Decimal | None:
    if isinstance(value, bool):
        raise ValueError(f"amount {value!r} is not a number")
    if isinstance(value, (int, float, Decimal)):
        number = Decimal(str(value)).quantize(CENT)
    else:
        text = _text(value)
        if not text:
            return None
        cleaned = _CURRENCY.sub("", text)
        cleaned = cleaned.replace(".", "").replace(",", ".") if decimal_comma else cleaned.replace(",", "")
        try:
            number = Decimal(cleaned)
        except InvalidOperation:
            raise ValueError(f"amount {text!r} is not a number") from None
        if not number.is_finite():
            raise ValueError(f"amount {text!r} is not a number")
        if number != number.quantize(CENT):
            raise ValueError(f"amount {text!r} has more than 2 decimal places")
    if number < 0:
        raise ValueError(f"amount {value!r} is negative")
    if number > MAX_AMOUNT:
        raise ValueError(f"amount {value!r} is larger than {MAX_AMOUNT:,.0f}")
    return number.quantize(CENT)


def parse_datetime(value: Any, formats: list[str], zone: ZoneInfo) -> datetime | None:
    """A date-time from an ISO string, one of the mapping's formats, or a spreadsheet cell."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        text = _text(value)
        if not text:
            return None
        parsed = _from_text(text, formats)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


_EXAMPLE = datetime(2026, 3, 31, 14, 30)


def _from_text(text: str, formats: list[str]) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    examples = ", ".join(dict.fromkeys(_EXAMPLE.strftime(f) for f in ["%Y-%m-%d", *formats]))
    raise ValueError(f"{text!r} is not a date (expected e.g. {examples})")


class RowConverter:
    """Checks and converts rows of one export, against one process and the org chart."""

    def __init__(
        self,
        mapping: ImportMapping,
        columns: dict[Target, str],
        process: SalesProcess,
        owners: OwnerDirectory,
        now: datetime,
        default_entered: datetime | None = None,
    ) -> None:
        unknown = [f for f in mapping.fields.values() if f not in process.fields]
        if unknown:
            raise MappingError(
                f"{mapping.source} mapping: {', '.join(unknown)} are not fields of process {process.name}"
            )
        self.mapping = mapping
        self.columns = columns
        self.process = process
        self.owners = owners
        self.now = now
        self.default_entered = default_entered or now
        self.zone = ZoneInfo(mapping.timezone)
        self.stage_map = mapping.stage_lookup()
        self.stage_by_key = {stage_key(s.name): s.name for s in process.stages}
        self.seen: dict[str, int] = {}

    def convert(self, line: int, raw: dict[str, Any]) -> DealRow | list[RowProblem]:
        problems: list[RowProblem] = []
        values: dict[str, Any] = {}
        source_id = _text(raw.get(self.columns["opportunity_id"]))
        opp_id = f"{self.mapping.id_prefix}{source_id}" if source_id else None

        def check(target: Target, parse: Any) -> None:
            column = self.columns.get(target)
            if column is None:
                return
            try:
                values[target] = parse(raw.get(column))
            except ValueError as exc:
                problems.append(RowProblem(line, column, str(exc), opp_id))

        check("opportunity_id", self._opportunity_id)
        check("name", lambda v: self._required(v, "name"))
        check("account", lambda v: self._required(v, "account"))
        check("owner", self._owner)
        check("stage", self._stage)
        check("amount", lambda v: parse_amount(v, self.mapping.decimal_comma))
        check("close_date", self._date)
        check("stage_entered_at", self._entered)
        check("created_at", self._entered)
        fields = self._fields(line, raw, opp_id, problems)
        if opp_id and "opportunity_id" in values:
            first = self.seen.setdefault(opp_id, line)
            if first != line:
                problems.append(
                    RowProblem(
                        line,
                        self.columns["opportunity_id"],
                        f"duplicate id {source_id} (first on line {first})",
                        opp_id,
                    )
                )
        if problems:
            return problems
        entered = values.get("stage_entered_at") or values.get("created_at") or self.default_entered
        return DealRow(
            line=line,
            opportunity_id=values["opportunity_id"],
            name=values["name"],
            account=values["account"],
            owner_id=values["owner"],
            stage=values["stage"],
            amount=values.get("amount"),
            close_date=values.get("close_date"),
            stage_entered_at=entered,
            fields=fields,
        )

    def _opportunity_id(self, value: Any) -> str:
        text = _text(value)
        if not text:
            raise ValueError("missing id")
        opp_id = f"{self.mapping.id_prefix}{text}"
        if not _IDENTIFIER.match(opp_id) or len(opp_id) > 120:
            raise ValueError(f"id {text!r} must be letters, digits and _ . : @ - (at most 120)")
        return opp_id

    @staticmethod
    def _required(value: Any, what: str) -> str:
        text = _text(value)
        if not text:
            raise ValueError(f"missing {what}")
        if len(text) > 255 or "\x00" in text:
            raise ValueError(f"{what} must be at most 255 characters of text")
        return text

    def _owner(self, value: Any) -> str:
        text = _text(value)
        if not text:
            raise ValueError("missing owner")
        return self.owners.find(text).id

    def _stage(self, value: Any) -> str:
        text = _text(value)
        if not text:
            raise ValueError("missing stage")
        if self.process.has_stage(text):
            return text
        key = stage_key(text)
        if key in self.stage_map:
            target = self.stage_map[key]
            if not self.process.has_stage(target):
                raise ValueError(
                    f"stage {text!r} maps to {target!r}, which is not a stage of process {self.process.name}"
                )
            return target
        if key in self.stage_by_key:
            return self.stage_by_key[key]
        raise ValueError(
            f"unknown stage {text!r}: not a stage of process {self.process.name} and not in the stage map"
        )

    def _date(self, value: Any) -> date | None:
        parsed = parse_datetime(value, self.mapping.date_formats, self.zone)
        return parsed.date() if parsed else None

    def _entered(self, value: Any) -> datetime | None:
        parsed = parse_datetime(value, self.mapping.date_formats, self.zone)
        if parsed and parsed > self.now + timedelta(days=1):
            raise ValueError(f"{_text(value)!r} is in the future")
        return parsed

    def _fields(
        self, line: int, raw: dict[str, Any], opp_id: str | None, problems: list[RowProblem]
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        known = _header_index(list(raw))
        for column, name in self.mapping.fields.items():
            header = known[column.strip().casefold()]
            value = raw.get(header)
            try:
                converted = self._field_value(name, value)
                if converted is not None:
                    stage_rules.check_field_values(self.process, {name: converted})
                    fields[name] = converted
            except ValueError as exc:
                problems.append(RowProblem(line, header, str(exc), opp_id))
            except CommandRefused as exc:
                problems.append(RowProblem(line, header, exc.message, opp_id))
        return fields

    def _field_value(self, name: str, value: Any) -> Any:
        spec = self.process.field_spec(name)
        if value is None or _text(value) == "":
            return None
        if spec.type == "money":
            amount = parse_amount(value, self.mapping.decimal_comma)
            return str(amount) if amount is not None else None
        if spec.type == "date":
            parsed = self._date(value)
            return parsed.isoformat() if parsed else None
        if spec.type == "bool":
            text = _text(value).casefold()
            if text not in _BOOLS:
                raise ValueError(f"{name} {value!r} is not yes/no or true/false")
            return _BOOLS[text]
        return _text(value)


_BOOLS = {
    "true": True,
    "yes": True,
    "1": True,
    "y": True,
    "false": False,
    "no": False,
    "0": False,
    "n": False,
}
