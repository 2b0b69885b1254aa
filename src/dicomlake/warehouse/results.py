"""Rows as BigQuery's REST API writes them (`{"f": [{"v": ...}]}`: every scalar a string, RECORD as `{"f": [...]}`,
REPEATED as `[{"v": ...}]`, TIMESTAMP as float seconds, or integer microseconds with `useInt64Timestamp`), and the
Arrow IPC files that keep a query's result for later pages, whichever server process asks for them."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from dicomlake.warehouse.schema import Field

Encoder = Callable[[Any], Any]

# The most a page carries when the client does not ask for fewer rows (BigQuery's cap is 10 MB of JSON).
PAGE_BYTES = 8 << 20
MAX_PAGE_ROWS = 100_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SCHEMA_KEY = b"bigquery_schema"
# Rows of each batch of a result file but its last: page `start` begins in batch `start // batch_rows`.
_BATCH_ROWS_KEY = b"dicomlake_batch_rows"


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


@dataclass(frozen=True)
class Place:
    """Where a result file is: a path on a pyarrow filesystem, the local one or the S3 / GCS one of the
    warehouse's files, so that every machine reads the result one of them wrote."""

    fs: pafs.FileSystem
    path: str

    @classmethod
    def local(cls, path: Path) -> Place:
        return cls(pafs.LocalFileSystem(), str(path))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)


def _place(target: Path | Place) -> Place:
    return target if isinstance(target, Place) else Place.local(target)


def write(target: Path | Place, fields: list[Field], schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> int:
    """Store a result as an Arrow IPC file with its BigQuery schema, in batches of one size (see `read`); the
    number of rows. A local file appears whole (written aside, then renamed); an object of an object store appears
    once its upload ends, whole too, and is deleted when the result fails."""
    place = _place(target)
    if place.is_local:
        os.makedirs(os.path.dirname(place.path), exist_ok=True)
        written = f"{place.path}.{os.getpid()}.{threading.get_ident()}.tmp"
    else:
        written = place.path
    rows = 0
    try:
        with place.fs.open_output_stream(written) as sink:
            writer: pa.ipc.RecordBatchFileWriter | None = None
            for step, batch in _evenly(batches):
                if writer is None:
                    metadata = {_SCHEMA_KEY: orjson.dumps(fields), _BATCH_ROWS_KEY: str(step).encode()}
                    schema = schema.with_metadata(metadata)
                    writer = pa.ipc.new_file(sink, schema)
                writer.write_batch(batch.replace_schema_metadata(schema.metadata))
                rows += batch.num_rows
            if writer is None:
                writer = pa.ipc.new_file(sink, schema.with_metadata({_SCHEMA_KEY: orjson.dumps(fields)}))
            writer.close()
        if written != place.path:
            place.fs.move(written, place.path)
    except BaseException:
        with contextlib.suppress(OSError):
            place.fs.delete_file(written)
        raise
    return rows


def _evenly(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The rows of `batches` in batches of one size but the last, (size, batch): the size of the first batch, or
    fewer rows when they make more than a page. A page then reads only the batches that hold its rows, from a
    local file or an object store alike; batches of the engine's one size pass as they are."""
    step = held = 0
    group: list[pa.RecordBatch] = []
    for batch in batches:
        if not step and batch.num_rows:
            step = min(batch.num_rows, _page_rows(batch.num_rows, batch.nbytes))
        offset = 0
        while offset < batch.num_rows:
            piece = batch.slice(offset, step - held)
            offset += piece.num_rows
            group.append(piece)
            held += piece.num_rows
            if held == step:
                yield step, _joined(group)
                group, held = [], 0
    if group:
        yield step, _joined(group)


def _joined(group: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(group) == 1:
        return group[0]
    return pa.Table.from_batches(group).combine_chunks().to_batches()[0]


def read(
    target: Path | Place, start: int, count: int | None, total: int | None = None
) -> tuple[list[Field], pa.Table, int]:
    """Rows `start` .. `start + count` of a stored result (about PAGE_BYTES of them when count is None), its
    BigQuery schema and its total number of rows (`total` when the caller knows it). Only the batches that hold
    the rows are read: from a local file memory-mapped, from an object store by ranged reads."""
    place = _place(target)
    # A local file is not closed here: the slices below keep the mapping alive for as long as they need it.
    source = pa.memory_map(place.path) if place.is_local else place.fs.open_input_file(place.path)
    try:
        reader = pa.ipc.open_file(source)
        metadata = reader.schema.metadata or {}
        fields = orjson.loads(metadata[_SCHEMA_KEY])
        step = int(metadata.get(_BATCH_ROWS_KEY, 0))
        last = reader.num_record_batches - 1
        if total is None and step:
            total = last * step + reader.get_batch(last).num_rows if last >= 0 else 0
        elif total is None:
            total = sum(b.num_rows for b in _batches(reader))
        start = max(0, min(start, total))
        if start == total or count == 0:
            return fields, reader.schema.empty_table(), total
        if not step:  # batches of any size: all of them
            table = pa.Table.from_batches(list(_batches(reader)), reader.schema)
            return fields, table.slice(start, page_rows(table) if count is None else count), total
        first = start // step
        batch = reader.get_batch(first)
        if count is None:
            count = _page_rows(batch.num_rows, batch.nbytes)
        end = min(total, start + count)
        chunks = [batch]
        while (first + len(chunks)) * step < end:
            chunks.append(reader.get_batch(first + len(chunks)))
        table = pa.Table.from_batches(chunks, reader.schema)
        return fields, table.slice(start - first * step, end - start), total
    finally:
        if not place.is_local:
            source.close()


def _batches(reader: pa.ipc.RecordBatchFileReader) -> Iterator[pa.RecordBatch]:
    return (reader.get_batch(i) for i in range(reader.num_record_batches))


def delete(target: Path | Place) -> None:
    """Remove a stored result, if there is one."""
    place = _place(target)
    with contextlib.suppress(FileNotFoundError):
        place.fs.delete_file(place.path)


def page_rows(table: pa.Table) -> int:
    """How many rows of this table make a page of about PAGE_BYTES."""
    return _page_rows(table.num_rows, table.nbytes)


def _page_rows(rows: int, nbytes: int) -> int:
    if rows == 0:
        return MAX_PAGE_ROWS
    per_row = max(1, nbytes // rows)
    return max(1, min(MAX_PAGE_ROWS, PAGE_BYTES // per_row))
