"""Tables of DICOM rows in the embedded warehouse, for export to tables and for streaming: rows the
flattener made are written in one transaction that first widens the table to the columns they bring
(a column whose type conflicts moves the row's value into OtherElements, spec §1.14, so no instance
is lost), and, for streams, records which events the rows came from so that a redelivery adds nothing,
and keeps the `<table>_view` of the latest state of every instance (spec §6.6)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from dicomlake.dicom.flatten import SERVICE_FIELDS, FlatRow, count_columns, demote, merge_schema
from dicomlake.errors import FailedPrecondition
from dicomlake.warehouse.embedded import (
    META,
    Db,
    TableRef,
    Warehouse,
    _arrow_rows,
    _create,
    _dataset_missing,
    _evolve,
    _fields,
    _literal,
    _touch,
    connect,
    relation_kind,
    require_dataset,
)
from dicomlake.warehouse.schema import quote

VIEW_SUFFIX = "_view"
UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
BASE_FIELDS = [
    *({"name": name, "type": "STRING", "mode": "NULLABLE"} for name in UID_COLUMNS),
    *SERVICE_FIELDS,
]
_DELIVERED = "stream_delivered"


@dataclass(frozen=True)
class Written:
    rows: int
    columns: int  # the table's columns afterwards, nested ones included


def write(wh: Warehouse, ref: TableRef, rows: list[FlatRow], *, stream: tuple[int, list[int]] | None = None) -> Written:
    """Append `rows` to the table (created if missing; its dataset must exist). With `stream` =
    (store key, event keys, one per row), rows of events this table already holds are skipped, the
    others recorded as held, and the table's view is kept up to date.

    The warehouse file is held by one process at a time, so the rows are fitted to the table's schema as this
    process last saw it before the file is taken; only when another process widened the table meanwhile (or
    events were already held) are they fitted again while it is held."""
    key = (wh.root, ref)
    guess = _schemas.get(key, [])
    prepared = _prepare(guess, rows)
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        kind = relation_kind(db, ref)
        if kind == "VIEW":
            raise FailedPrecondition(f"{ref} is a view; DICOM rows go to tables")
        existing = _fields(db, ref) if kind == "TABLE" else []
        if stream is not None:
            fresh = _undelivered(db, ref, rows, *stream)
            if len(fresh) != len(rows):
                rows, prepared = fresh, None
        if prepared is None or existing != guess:
            prepared = _prepare(existing, rows)
        schema, data = prepared
        # Merging only ever adds fields, so a schema that changed has more of them.
        changed = kind is None or count_columns(schema) != count_columns(existing)
        if kind is None:
            _create(db, ref, schema)
        elif changed:
            _evolve(db, ref, schema)
        if data is not None:
            db.conn.register("_dicomlake_rows", data)
            try:
                db.conn.execute(f"INSERT INTO {db.name(ref.dataset, ref.table)} BY NAME SELECT * FROM _dicomlake_rows")
            finally:
                db.conn.unregister("_dicomlake_rows")
            _touch(db, ref)
        if stream is not None and changed:
            _replace_view(db, ref)
        _schemas[key] = _fields(db, ref) if changed else existing
        return Written(data.num_rows if data is not None else 0, count_columns(schema))


# The last schema this process saw of each table, to fit rows to before taking the warehouse file.
_schemas: dict[tuple[Path, TableRef], list[dict]] = {}


def _prepare(existing: list[dict], rows: list[FlatRow]) -> tuple[list[dict], pa.Table | None]:
    """The schema the rows need on top of `existing`, and the rows as an Arrow table of that schema (values of
    columns whose type conflicts moved into OtherElements)."""
    schema, table_rows = existing, []
    # The flattener hands out one field object per column kind and shares it between rows: each is merged
    # once per batch (the schema only grows, so a field that fitted keeps fitting), which turns a merge of
    # every column of every row into one of the few columns not seen before.
    seen: dict[int, set[str]] = {}
    alive: list[dict] = []  # keeps the ids in `seen` from being reused
    for flat in rows:
        conflicts: set[str] = set()
        for field in flat.fields:
            known = seen.get(id(field))
            if known is None:
                merged = merge_schema(schema, [field])
                schema, known = merged.fields, merged.conflicts
                seen[id(field)] = known
                alive.append(field)
            conflicts |= known
        table_rows.append(demote(flat.row, conflicts) if conflicts else flat.row)
    return schema, (_arrow_rows(schema, table_rows) if table_rows else None)


def ensure(wh: Warehouse, ref: TableRef) -> None:
    """Create the table, if missing, with the columns every DICOM row has (the UIDs and the service columns)."""
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset), write=True) as db:
        require_dataset(db, ref)
        if relation_kind(db, ref) is None:
            _create(db, ref, BASE_FIELDS)


def has_rows(wh: Warehouse, ref: TableRef) -> bool | None:
    """None when the table does not exist, else whether it holds any row (its dataset must exist)."""
    with connect(wh, ref.project, missing=_dataset_missing(ref.project, ref.dataset)) as db:
        require_dataset(db, ref)
        kind = relation_kind(db, ref)
        if kind is None:
            return None
        if kind == "VIEW":
            raise FailedPrecondition(f"{ref} is a view; DICOM rows go to tables")
        return db.conn.execute(f"SELECT 1 FROM {db.name(ref.dataset, ref.table)} LIMIT 1").fetchone() is not None


def _undelivered(db: Db, ref: TableRef, rows: list[FlatRow], store_pk: int, events: list[int]) -> list[FlatRow]:
    delivered = db.name(META, _DELIVERED)
    db.conn.execute(
        f'CREATE TABLE IF NOT EXISTS {delivered} (dataset VARCHAR, "table" VARCHAR, store_pk BIGINT, event_pk BIGINT)'
    )
    held = {
        pk
        for (pk,) in db.conn.execute(
            f'SELECT event_pk FROM {delivered} WHERE dataset = ? AND "table" = ? AND store_pk = ? '
            "AND event_pk BETWEEN ? AND ?",
            [ref.dataset, ref.table, store_pk, min(events), max(events)],
        ).fetchall()
    }
    fresh = [(pk, row) for pk, row in zip(events, rows, strict=True) if pk not in held]
    if fresh:
        db.conn.executemany(
            f"INSERT INTO {delivered} VALUES (?, ?, ?, ?)", [[ref.dataset, ref.table, store_pk, pk] for pk, _ in fresh]
        )
    # Events below the oldest of this batch left the outbox for good (delivered or dropped): forget them.
    db.conn.execute(
        f'DELETE FROM {delivered} WHERE dataset = ? AND "table" = ? AND store_pk = ? AND event_pk < ?',
        [ref.dataset, ref.table, store_pk, min(events)],
    )
    return [row for _, row in fresh]


def view_query(ref: TableRef) -> str:
    """The latest state of each instance, in BigQuery SQL (spec §6.6): per UID triple the row with the greatest
    LastUpdated (NULLs last), hidden when that row is a DELETE."""
    return (
        "SELECT * EXCEPT (_dicomlake_rank) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY StudyInstanceUID, "
        "SeriesInstanceUID, SOPInstanceUID ORDER BY LastUpdated DESC NULLS LAST) AS _dicomlake_rank "
        f"FROM `{ref.project}.{ref.dataset}.{ref.table}`) WHERE _dicomlake_rank = 1 AND IFNULL(Type, '') != 'DELETE'"
    )


def _replace_view(db: Db, ref: TableRef) -> None:
    """Create or replace `<table>_view` in the transaction that changed the table: DuckDB binds a view's
    columns when it is created, so a view over a widened table must be made again."""
    view = TableRef(ref.project, ref.dataset, ref.table + VIEW_SUFFIX)
    name = db.name(view.dataset, view.table)
    table = db.name(ref.dataset, ref.table)
    db.conn.execute(
        f"CREATE OR REPLACE VIEW {name} AS SELECT * EXCLUDE (_dicomlake_rank) FROM (SELECT *, row_number() OVER "
        f"(PARTITION BY {quote('StudyInstanceUID')}, {quote('SeriesInstanceUID')}, {quote('SOPInstanceUID')} "
        f"ORDER BY {quote('LastUpdated')} DESC NULLS LAST) AS _dicomlake_rank FROM {table}) "
        f"WHERE _dicomlake_rank = 1 AND coalesce({quote('Type')}, '') <> 'DELETE'"
    )
    db.conn.execute(f"COMMENT ON VIEW {name} IS {_literal(view_query(ref))}")
    _touch(db, view, "VIEW")
