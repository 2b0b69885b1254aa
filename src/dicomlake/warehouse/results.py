"""Rows as BigQuery's REST API writes them (`{"f": [{"v": ...}]}`: every scalar a string, RECORD as `{"f": [...]}`,
REPEATED as `[{"v": ...}]`, TIMESTAMP as float seconds, or integer microseconds with `useInt64Timestamp`), and the
Arrow IPC files that keep a query's result for later pages, whichever server process asks for them."""

from __future__ import annotations

import base64
import datetime as dt
import math
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from dicomlake.warehouse.schema import Field

Encoder = Callable[[Any], Any]

# The most a page carries when the client does not ask for fewer rows (BigQuery's cap is 10 MB of JSON).
PAGE_BYTES = 8 << 20
MAX_PAGE_ROWS = 100_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SCHEMA_KEY = b"bigquery_schema"


class TimestampFormat:
    """How TIMESTAMP values are written: BigQuery's default (float seconds), `formatOptions.useInt64Timestamp`
    (integer microseconds, what google-cloud-bigquery asks for) or `timestampOutputFormat=ISO8601_STRING`."""

    FLOAT_SECONDS = "float"
    INT64_MICROS = "int64"
    ISO8601 = "iso8601"


def rows_json(table: pa.Table, fields: list[Field], timestamps: str = TimestampFormat.FLOAT_SECONDS) -> list[dict]:
    """The rows of an Arrow table (columns in the order of `fields`) in BigQuery's REST encoding."""
    columns = []
    for f, column in zip(fields, table.columns, strict=True):
        encode = encoder(f, timestamps)
        columns.append([{"v": encode(value)} for value in column.to_pylist()])
    return [{"f": list(cells)} for cells in zip(*columns, strict=True)] if columns else []


def encoder(field: Field, timestamps: str = TimestampFormat.FLOAT_SECONDS) -> Encoder:
    """A function from one Python value of the field (as Arrow's to_pylist gives it) to its REST JSON value."""
    if field["type"] == "RECORD":
        children = [encoder(child, timestamps) for child in field["fields"]]
        names = [child["name"] for child in field["fields"]]

        def record(value: Any) -> Any:
            if value is None:
                return None
            # Maps read back as lists of (key, value) tuples.
            items = value.values() if isinstance(value, dict) else value
            if isinstance(value, dict) and list(value) != names:
                items = [value.get(n) for n in names]
            return {"f": [{"v": enc(v)} for enc, v in zip(children, items, strict=True)]}

        scalar: Encoder = record
    else:
        scalar = _SCALARS[field["type"]] if field["type"] != "TIMESTAMP" else _TIMESTAMPS[timestamps]
    if field["mode"] != "REPEATED":
        return lambda value: None if value is None else scalar(value)

    # BigQuery has no NULL arrays: they read back as empty ones.
    def repeated(value: Any) -> Any:
        if value is None:
            return []
        return [{"v": None if v is None else scalar(v)} for v in value]

    return repeated


def _float(value: Any) -> str:
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _integer(value: Any) -> str:
    return str(int(value))


def _numeric(value: Any) -> str:
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return "0" if text in ("-0", "0E-9") else text
    return str(value)


def _micros(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _float_seconds(value: dt.datetime) -> str:
    micros = _micros(value)
    seconds, fraction = divmod(abs(micros), 1_000_000)
    sign = "-" if micros < 0 else ""
    return f"{sign}{seconds}.{fraction:06d}".rstrip("0") if fraction else f"{sign}{seconds}.0"


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(value: dt.time) -> str:
    return value.replace(tzinfo=None).isoformat()


def _datetime(value: dt.datetime) -> str:
    return value.replace(tzinfo=None).isoformat()


_SCALARS: dict[str, Encoder] = {
    "STRING": str,
    "JSON": lambda v: v if isinstance(v, str) else orjson.dumps(v).decode(),
    "BYTES": lambda v: base64.b64encode(v).decode(),
    "INTEGER": _integer,
    "FLOAT": _float,
    "NUMERIC": _numeric,
    "BOOLEAN": lambda v: "true" if v else "false",
    "DATE": lambda v: v.isoformat(),
    "TIME": _time,
    "DATETIME": _datetime,
}
_TIMESTAMPS: dict[str, Encoder] = {
    TimestampFormat.FLOAT_SECONDS: _float_seconds,
    TimestampFormat.INT64_MICROS: lambda v: str(_micros(v)),
    TimestampFormat.ISO8601: _iso,
}


# ---- result files -----------------------------------------------------------------------------


def write(path: Path, fields: list[Field], schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> int:
    """Store a result as an Arrow IPC file with its BigQuery schema, atomically; the number of rows."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    rows = 0
    schema = schema.with_metadata({_SCHEMA_KEY: orjson.dumps(fields)})
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch.replace_schema_metadata(schema.metadata))
                rows += batch.num_rows
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def read(path: Path, start: int, count: int | None) -> tuple[list[Field], pa.Table, int]:
    """Rows `start` .. `start + count` of a stored result (all up to PAGE_BYTES when count is None), its BigQuery
    schema and its total number of rows. The file is memory-mapped: a page reads only its own rows."""
    # Not closed here: the slices below keep the mapping alive for as long as they need it.
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    fields = orjson.loads(table.schema.metadata[_SCHEMA_KEY])
    total = table.num_rows
    start = max(0, min(start, total))
    if count is None:
        count = page_rows(table)
    return fields, table.slice(start, max(0, count)), total


def page_rows(table: pa.Table) -> int:
    """How many rows of this table make a page of about PAGE_BYTES."""
    if table.num_rows == 0:
        return MAX_PAGE_ROWS
    per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(MAX_PAGE_ROWS, PAGE_BYTES // per_row))
