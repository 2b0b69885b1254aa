"""tabledata.insertAll on the embedded tables: rows in BigQuery's JSON encoding, checked against the table's
schema one by one and appended in one transaction.

Values take the forms BigQuery accepts: numbers or their text for INTEGER, FLOAT and NUMERIC, true/false or
"true"/"false" for BOOLEAN, base64 for BYTES, RFC 3339 text or seconds since the epoch for TIMESTAMP,
ISO text for DATE, TIME and DATETIME, objects for RECORD and lists for REPEATED fields."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import threading
from collections import OrderedDict
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from dicomlake.errors import InvalidArgument
from dicomlake.warehouse.embedded import AnyWarehouse, TableRef
from dicomlake.warehouse.schema import Field

# The insertIds of a table's last rows this process keeps, to drop a row sent again (a client retrying).
INSERT_ID_MEMORY = 100_000

_recent: dict[tuple[Path, TableRef], OrderedDict[str, None]] = {}
_recent_lock = threading.Lock()


class _Invalid(Exception):
    def __init__(self, location: str, message: str) -> None:
        super().__init__(message)
        self.location, self.message = location, message


def insert_all(
    wh: AnyWarehouse, ref: TableRef, rows: list[dict[str, Any]], *, skip_invalid: bool, ignore_unknown: bool
) -> list[dict[str, Any]]:
    """Append `rows` ({insertId, json}) to the table; the insertErrors of those that were not appended."""
    info = wh.get_table(ref)
    if info.type != "TABLE":
        raise InvalidArgument(f"{ref} is a view; rows can only be inserted into tables")
    fields = info.fields
    errors: list[dict[str, Any]] = []
    good: list[tuple[str | None, dict[str, Any]]] = []
    for index, row in enumerate(rows):
        try:
            values = row.get("json")
            if not isinstance(values, dict):
                raise _Invalid("", "each row needs a json object")
            insert_id = row.get("insertId")
            if insert_id is not None and not isinstance(insert_id, str):
                raise _Invalid("insertId", "insertId must be a string")
            good.append((insert_id, _record(fields, values, "", ignore_unknown)))
        except _Invalid as exc:
            errors.append(_error(index, "invalid", exc.location, exc.message))
    if errors and not skip_invalid:
        failed = {e["index"] for e in errors}
        stopped = [_error(i, "stopped", "", "") for i in range(len(rows)) if i not in failed]
        return sorted(errors + stopped, key=lambda e: e["index"])
    key = (wh.root, ref)
    with _recent_lock:
        seen = _recent.setdefault(key, OrderedDict())
        fresh = [values for insert_id, values in good if insert_id is None or insert_id not in seen]
    if fresh:  # rows all sent before: nothing to write
        wh.append(ref, fields, fresh)
    with _recent_lock:
        for insert_id, _ in good:
            if insert_id is not None:
                seen[insert_id] = None
        while len(seen) > INSERT_ID_MEMORY:
            seen.popitem(last=False)
    return errors


def _error(index: int, reason: str, location: str, message: str) -> dict[str, Any]:
    return {"index": index, "errors": [{"reason": reason, "location": location, "message": message}]}


def _record(fields: list[Field], values: dict[str, Any], path: str, ignore_unknown: bool) -> dict[str, Any]:
    by_name = {f["name"].casefold(): f for f in fields}
    out: dict[str, Any] = {}
    for name, value in values.items():
        field = by_name.get(name.casefold())
        where = f"{path}{name}"
        if field is None:
            if ignore_unknown:
                continue
            raise _Invalid(where, f"no such field: {where}.")
        if value is None:
            if field["mode"] == "REPEATED":
                out[field["name"]] = []
            continue
        if field["mode"] == "REPEATED":
            if not isinstance(value, list):
                raise _Invalid(where, f"{where} is a repeated field and needs a list")
            out[field["name"]] = [_value(field, item, f"{where}[{i}]", ignore_unknown) for i, item in enumerate(value)]
        else:
            if isinstance(value, list):
                raise _Invalid(where, f"Array specified for non-repeated field: {where}.")
            out[field["name"]] = _value(field, value, where, ignore_unknown)
    for field in fields:
        if field["mode"] == "REQUIRED" and field["name"] not in out:
            raise _Invalid(f"{path}{field['name']}", f"Missing required field: {path}{field['name']}.")
    return out


def _value(field: Field, value: Any, where: str, ignore_unknown: bool) -> Any:
    kind = field["type"]
    try:
        if kind in ("RECORD", "STRUCT"):
            if not isinstance(value, dict):
                raise ValueError("a record needs an object")
            return _record(field.get("fields", []), value, f"{where}.", ignore_unknown)
        if kind == "STRING":
            if isinstance(value, dict | list | bool):
                raise ValueError("a string needs text")
            return str(value)
        if kind in ("INTEGER", "INT64"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("not an integer")
            return int(value)
        if kind in ("FLOAT", "FLOAT64"):
            if isinstance(value, bool):
                raise ValueError("not a number")
            return float(value)
        if kind in ("NUMERIC", "BIGNUMERIC"):
            return Decimal(str(value))
        if kind in ("BOOLEAN", "BOOL"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError("not a boolean")
        if kind == "BYTES":
            return base64.b64decode(value, validate=True)
        if kind == "TIMESTAMP":
            return _timestamp(value)
        if kind == "DATE":
            return dt.date.fromisoformat(value)
        if kind == "TIME":
            return dt.time.fromisoformat(value)
        if kind == "DATETIME":
            return dt.datetime.fromisoformat(str(value).replace(" ", "T"))
        if kind == "JSON":
            return value
    except (ValueError, TypeError, InvalidOperation, binascii.Error, OverflowError) as exc:
        raise _Invalid(where, f"Cannot convert value to {kind.lower()}: {exc} (field {where})") from None
    raise _Invalid(where, f"field {where} has type {kind}, which rows cannot be inserted into")


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    text = str(value).strip().replace(" ", "T")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if text.endswith(("UTC", "utc")):
        text = text[:-3].rstrip() + "+00:00"
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=dt.UTC)
