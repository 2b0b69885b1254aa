"""Tables of DICOM rows in the embedded warehouse, for export to tables and for streaming: rows the
flattener made are written in one transaction that first widens the table to the columns they bring
(a column whose type conflicts moves the row's value into OtherElements, spec §1.14, so no instance
is lost), and, for streams, records which events the rows came from so that a redelivery adds nothing,
and keeps the `<table>_view` of the latest state of every instance (spec §6.6)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from dicomlake.dicom.flatten import OTHER_ELEMENTS_FIELD, SERVICE_FIELDS, FlatRow, demote
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
    allow_columns,
    connect,
    relation_kind,
    require_dataset,
)
from dicomlake.warehouse.schema import MAX_COLUMNS, Field, SchemaMerge, count_columns, merge, quote

log = logging.getLogger("dicomlake.warehouse")

VIEW_SUFFIX = "_view"
UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
BASE_FIELDS: list[Field] = [
    *(Field(name=name, type="STRING", mode="NULLABLE") for name in UID_COLUMNS),
    *SERVICE_FIELDS,
]
_DELIVERED = "stream_delivered"


@dataclass(frozen=True)
class Written:
    rows: int
    columns: int  # the table's columns afterwards, nested ones included


@dataclass(frozen=True)
class Fitted:
    """Rows fitted to a table's schema: the columns they fill, as that schema has them plus what the rows add,
    and the rows as an Arrow table of those columns (values whose type conflicted moved into OtherElements).
    Made wherever it is cheapest (a pool process), appended where the table is held."""

    fields: list[Field]
    data: pa.Table


def merge_fields(existing: list[Field], incoming: list[Field]) -> SchemaMerge:
    """The schema of a DICOM table widened by the fields of rows: a value whose column has another type (or a
    name in another case) is a conflict, moved with `demote` into its record's OtherElements."""
    return merge(existing, incoming, other_elements=OTHER_ELEMENTS_FIELD)


def fit(existing: list[Field], rows: list[FlatRow]) -> Fitted:
    """Fit `rows` to the schema `existing`: values whose column has another type are demoted to OtherElements
    (spec §1.14), and elements whose columns would take the table past MAX_COLUMNS (BigQuery's 10,000) are listed
    in DroppedTags instead (spec §6.8), for the embedded tables and a real BigQuery alike."""
    schema = existing
    table_rows: list[dict[str, Any]] = []
    used: set[str] = set()
    # Rows share most field objects (the flattener hands out one per column kind) and rebuild the rest (a
    # sequence's record) with the same shape: each shape is merged once (the schema only grows, so a field that
    # fitted keeps fitting), and the shapes a row brings that were not seen yet are merged together. That
    # turns a merge of every column of every row into a few merges per batch.
    seen: dict[int, frozenset[str]] = {}
    shapes: dict[tuple, frozenset[str]] = {}
    over_shapes: set[tuple] = set()
    alive: list[Field] = []  # keeps the ids in `seen` from being reused
    demoting = False
    # Elements whose columns would take the table past BigQuery's column limit go to DroppedTags (spec §6.8).
    over: set[int] = set()  # ids of such fields
    for flat in rows:
        new = []
        for f in flat.fields:
            if id(f) in seen:
                continue
            known = shapes.get(shape := _shape(f))
            if known is None:
                new.append((f, shape))
            else:
                seen[id(f)] = known
                alive.append(f)
                if shape in over_shapes:
                    over.add(id(f))
        if new:
            merged = merge_fields(schema, [f for f, _ in new])
            if merged.conflicts or count_columns(merged.fields) > MAX_COLUMNS:  # rare: one field at a time
                for f, shape in new:
                    one = merge_fields(schema, [f])
                    if count_columns(one.fields) > MAX_COLUMNS and f["name"] not in _ALWAYS:
                        over.add(id(f))
                        over_shapes.add(shape)
                        seen[id(f)] = shapes[shape] = frozenset()
                        continue
                    demoting = demoting or bool(one.conflicts)
                    schema = one.fields
                    seen[id(f)] = shapes[shape] = frozenset(one.conflicts)
            else:
                schema = merged.fields
                for f, shape in new:
                    seen[id(f)] = shapes[shape] = frozenset()
            alive += (f for f, _ in new)
            used.update(f["name"].casefold() for f, _ in new if id(f) not in over)
        row = flat.row
        if over and any(id(f) in over for f in flat.fields):
            row = _drop(row, [f["name"] for f in flat.fields if id(f) in over])
            used.add("droppedtags")
        conflicts = frozenset().union(*(seen[id(f)] for f in flat.fields)) if demoting else frozenset()
        if conflicts:
            used.update(("otherelements", "droppedtags"))
            table_rows.append(demote(row, conflicts))
        else:
            table_rows.append(row)
    if over:
        names = sorted({f["name"] for flat in rows for f in flat.fields if id(f) in over})
        log.warning(
            "the table has reached BigQuery's %d columns: %s listed in DroppedTags instead (spec 6.8)",
            MAX_COLUMNS,
            ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else ""),
        )
    fields = [f for f in schema if f["name"].casefold() in used]
    return Fitted(fields, _arrow_rows(fields, table_rows))


# Columns every row has, whatever the limit: a row means nothing without its UIDs and service columns.
_ALWAYS = frozenset([*UID_COLUMNS, *(f["name"] for f in SERVICE_FIELDS)])


def _drop(row: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A copy of `row` without the values of `names`, which DroppedTags lists instead."""
    out = {k: v for k, v in row.items() if k not in names}
    out["DroppedTags"] = [*(row.get("DroppedTags") or []), *({"TagName": n} for n in names)]
    return out


def combine(parts: list[Fitted]) -> Fitted | None:
    """Batches fitted to one schema, as one with the union of their columns; None when two of them brought one
    new column with different types."""
    fields: list[Field] = []
    for part in parts:
        merged = merge_fields(fields, part.fields)
        if merged.conflicts:
            return None
        fields = merged.fields
    return Fitted(fields, pa.concat_tables([part.data for part in parts], promote_options="permissive"))


def _shape(field: Field) -> tuple:
    nested = field.get("fields")
    return (
        field["name"],
        field.get("type"),
        field.get("mode"),
        tuple(_shape(f) for f in nested) if nested is not None else None,
    )


class Table:
    """A DICOM table held for writing, in the transaction of `open_table` (created on the first append)."""

    def __init__(self, db: Db, ref: TableRef) -> None:
        self.db, self.ref = db, ref
        kind = relation_kind(db, ref)
        if kind == "VIEW":
            raise FailedPrecondition(f"{ref} is a view; DICOM rows go to tables")
        self.exists = kind is not None
        self.fields: list[Field] = _fields(db, ref) if self.exists else []
        self.changed = False  # whether the table was created or widened
        self.touched = False  # whether anything was appended

    def append(self, fitted: Fitted) -> bool:
        """Widen the table to the fitted rows' columns and insert them; False (nothing done) when a column of
        theirs has another type in the table now: fit them again to `fields`."""
        if not fitted.fields:  # no rows (their instances were deleted meanwhile)
            return True
        merged = merge_fields(self.fields, fitted.fields)
        if merged.conflicts:
            return False
        # Merging only ever adds fields, so a schema that changed has more of them.
        if not self.exists:
            _create(self.db, self.ref, merged.fields)
            self.exists = self.changed = True
            self.fields = _fields(self.db, self.ref)
        elif count_columns(merged.fields) != count_columns(self.fields):
            self.fields = _evolve(self.db, self.ref, merged.fields)
            self.changed = True
        if fitted.data.num_rows:
            allow_columns(self.db, count_columns(self.fields))
            self.touched = True
            self.db.conn.register("_dicomlake_rows", fitted.data)
            try:
                name = self.db.name(self.ref.dataset, self.ref.table)
                self.db.conn.execute(f"INSERT INTO {name} BY NAME SELECT * FROM _dicomlake_rows")
            finally:
                self.db.conn.unregister("_dicomlake_rows")
        return True

    def add(self, rows: list[FlatRow], fitted: Fitted | None = None) -> None:
        """Append `rows`, already `fitted` to a schema this table may have outgrown, or fitted now."""
        if fitted is not None and self.append(fitted):
            return
        if not self.append(fit(self.fields, rows)):
            raise AssertionError("rows fitted to the table's own schema conflict with it")


@contextmanager
def open_table(wh: Warehouse, ref: TableRef, *, bulk: bool = False, hold: float = 0.0) -> Iterator[Table]:
    """Hold the table's warehouse file, in one transaction, for appends (its dataset must exist).

    `bulk`: for appends of thousands of rows, while other processes flatten the next ones. DuckDB's checkpoint
    would merge each append with the row groups written before (vacuum), rewriting them again and again; the
    file's next ordinary writer merges them once; this holds for the file until the process closes it. (The
    number of DuckDB threads is not changed here: DuckDB's thread pool is shared by the whole process, and
    changing it waits for every running query's current task, a long query's included.) `hold`: see `connect`."""
    missing = _dataset_missing(ref.project, ref.dataset)
    with connect(wh, ref.project, missing=missing, write=True, hold=hold) as db:
        if bulk:
            db.conn.execute("SET max_vacuum_tasks = 0")
        require_dataset(db, ref)
        table = Table(db, ref)
        yield table
        _schemas[(wh.root, ref)] = table.fields
        if table.touched:  # creating or widening it recorded the time already
            _touch(db, ref)


def known_schema(wh: Warehouse, ref: TableRef) -> list[Field]:
    """The table's schema as this process last saw it (empty if never), to fit rows to before holding it."""
    return _schemas.get((wh.root, ref), [])


def write(
    wh: Warehouse,
    ref: TableRef,
    rows: list[FlatRow],
    *,
    stream: tuple[int, list[int]] | None = None,
    hold: float = 0.0,
) -> Written:
    """Append `rows` to the table (created if missing; its dataset must exist). With `stream` =
    (store key, event keys, one per row), rows of events this table already holds are skipped, the
    others recorded as held, and the table's view is kept up to date. `hold`: see `connect`.

    The warehouse file is held by one process at a time, so the rows are fitted to the table's schema as this
    process last saw it before the file is taken; only when another process changed the table meanwhile (or
    events were already held) are they fitted again while it is held."""
    fitted = fit(known_schema(wh, ref), rows) if rows else None
    with open_table(wh, ref, hold=hold) as table:
        if stream is not None:
            fresh = _undelivered(table.db, ref, rows, *stream)
            if len(fresh) != len(rows):
                rows, fitted = fresh, None
        if rows:
            table.add(rows, fitted)
        if stream is not None and table.changed:
            _replace_view(table.db, ref)
        return Written(len(rows), count_columns(table.fields))


# The last schema this process saw of each table, to fit rows to before taking the warehouse file.
_schemas: dict[tuple[Path, TableRef], list[Field]] = {}


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
