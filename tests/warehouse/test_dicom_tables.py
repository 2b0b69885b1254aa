"""Writing flattened DICOM rows into warehouse tables: redelivered stream events add nothing, a column type
conflict moves the value into OtherElements instead of losing the instance, and the `_view` follows the
table as it widens."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pytest

from conftest import dicom_file
from dicomlake.dicom.flatten import ServiceColumns, delete_row, flatten
from dicomlake.dicom.parse import parse
from dicomlake.errors import NotFound
from dicomlake.warehouse import dicom_tables, embedded
from dicomlake.warehouse.embedded import TableRef, Warehouse
from dicomlake.warehouse.schema import MAX_COLUMNS, count_columns

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path)
    embedded.create_dataset(warehouse, "proj", "ds")
    return warehouse


def row_of(name: str, **metadata_changes: object):  # type: ignore[no-untyped-def]
    parsed = parse(dicom_file(name).read_bytes())
    metadata = {**parsed.metadata, **metadata_changes}
    return flatten(orjson.dumps(metadata), ServiceColumns(NOW), file_meta=parsed.file_meta)


def query(wh: Warehouse, sql: str) -> list[tuple]:
    with duckdb.connect(str(wh.file("proj")), read_only=True) as conn:
        return conn.sql(sql).fetchall()


def test_redelivered_stream_events_are_written_once(wh: Warehouse) -> None:
    ref = TableRef("proj", "ds", "t")
    rows = [row_of("CT_small.dcm"), row_of("MR_small.dcm")]

    first = dicom_tables.write(wh, ref, rows, stream=(7, [10, 11]))
    again = dicom_tables.write(wh, ref, rows, stream=(7, [10, 11]))
    partly = dicom_tables.write(wh, ref, [rows[1], rows[0]], stream=(7, [11, 12]))

    assert (first.rows, again.rows, partly.rows) == (2, 0, 1)
    assert query(wh, "SELECT count(*) FROM ds.t") == [(3,)]


def test_a_column_type_conflict_moves_the_value_to_other_elements(wh: Warehouse) -> None:
    ref = TableRef("proj", "ds", "t")
    dicom_tables.write(wh, ref, [row_of("CT_small.dcm")])
    # Rows (US, INTEGER) written by another tool as text: the table keeps its type, the value is kept as text.
    odd = row_of("MR_small.dcm")
    odd.row["Rows"] = "sixty-four"
    odd.fields = [dict(f, type="STRING") if f["name"] == "Rows" else f for f in odd.fields]

    written = dicom_tables.write(wh, ref, [odd])

    assert written.rows == 1
    sop = odd.row["SOPInstanceUID"]
    (row,) = query(wh, f"SELECT \"Rows\", OtherElements FROM ds.t WHERE SOPInstanceUID = '{sop}'")
    assert row[0] is None
    assert {"Tag": "Tag_00280010", "Data": ["sixty-four"]} in row[1]


def test_the_view_is_remade_when_the_table_widens(wh: Warehouse) -> None:
    ref = TableRef("proj", "ds", "t")
    dicom_tables.write(wh, ref, [row_of("rtplan.dcm")], stream=(1, [1]))
    dicom_tables.write(wh, ref, [row_of("CT_small.dcm")], stream=(1, [2]))
    ct = row_of("CT_small.dcm").row

    assert query(wh, f"SELECT count(*) FROM ds.t_view WHERE SOPInstanceUID = '{ct['SOPInstanceUID']}'") == [(1,)]
    assert query(wh, "SELECT count(*) FROM ds.t_view WHERE KVP IS NOT NULL") == [(1,)]  # a CT-only column

    gone = delete_row(ct["StudyInstanceUID"], ct["SeriesInstanceUID"], ct["SOPInstanceUID"], datetime.now(UTC))
    dicom_tables.write(wh, ref, [gone], stream=(1, [3]))

    assert query(wh, "SELECT count(*) FROM ds.t_view") == [(1,)]
    assert query(wh, "SELECT count(*) FROM ds.t") == [(3,)]


def test_batches_fitted_apart_that_disagree_on_a_column_are_appended_one_by_one(wh: Warehouse) -> None:
    ref = TableRef("proj", "ds", "t")
    ct, odd = row_of("CT_small.dcm"), row_of("MR_small.dcm")
    odd.row["Rows"] = "sixty-four"
    odd.fields = [dict(f, type="STRING") if f["name"] == "Rows" else f for f in odd.fields]
    # Fitted in two pool processes against the same (empty) schema: each is right on its own.
    parts = [dicom_tables.fit([], [ct]), dicom_tables.fit([], [odd])]

    assert dicom_tables.combine(parts) is None
    with dicom_tables.open_table(wh, ref) as table:
        assert table.append(parts[0])
        assert not table.append(parts[1])  # nothing written: fitted again to the table, as the export does
        table.add([odd])

    rows = query(wh, 'SELECT "Rows", OtherElements FROM ds.t ORDER BY "Rows" NULLS LAST')
    assert [r[0] for r in rows] == [ct.row["Rows"], None]
    assert {"Tag": "Tag_00280010", "Data": ["sixty-four"]} in rows[1][1]


def test_a_failed_shard_writes_nothing(wh: Warehouse) -> None:
    ref = TableRef("proj", "ds", "t")
    with pytest.raises(RuntimeError), dicom_tables.open_table(wh, ref) as table:
        table.add([row_of("CT_small.dcm")])
        raise RuntimeError("the worker died before the shard was done")

    with pytest.raises(NotFound):  # created in the same transaction
        embedded.row_count(wh, ref)


def test_a_table_thousands_of_columns_wide_is_checkpointed(wh: Warehouse) -> None:
    # A store of many modalities fills thousands of columns; checkpointing them needs more memory than the
    # default limit, and DuckDB fails for good (fatal, transaction lost) when it runs out.
    ref = TableRef("proj", "ds", "wide")
    fields = [{"name": f"Column{i}", "type": "STRING", "mode": "NULLABLE"} for i in range(3000)]
    rng = random.Random(7)
    rows = 5000
    data = pa.table(
        {f["name"]: [f"v{rng.randint(0, 999)}" if rng.random() < 0.3 else None for _ in range(rows)] for f in fields}
    )
    for _ in range(4):
        with dicom_tables.open_table(wh, ref) as table:
            assert table.append(dicom_tables.Fitted(fields, data))

    assert query(wh, "SELECT count(*) FROM ds.wide") == [(4 * rows,)]


def test_a_batch_whose_instances_were_all_deleted_appends_nothing(wh: Warehouse) -> None:
    ref = TableRef("proj", "ds", "t")
    with dicom_tables.open_table(wh, ref) as table:
        assert table.append(dicom_tables.fit([], []))
        assert not table.exists


def test_elements_past_the_column_limit_go_to_dropped_tags(caplog: pytest.LogCaptureFixture) -> None:
    """A table a few columns short of BigQuery's 10,000: a row's first new elements get columns, the rest are listed
    in DroppedTags without their values, and the row keeps its UIDs and service columns."""
    ct = row_of("CT_small.dcm")
    existing = list(dicom_tables.BASE_FIELDS)
    filler = MAX_COLUMNS - count_columns(existing) - 5
    existing += [{"name": f"Filler{i}", "type": "STRING", "mode": "NULLABLE"} for i in range(filler)]

    with caplog.at_level("WARNING", logger="dicomlake.warehouse"):
        fitted = dicom_tables.fit(existing, [ct, row_of("CT_small.dcm")])
    assert "reached BigQuery's 10000 columns" in caplog.text  # the operator learns why values are missing

    merged = dicom_tables.merge_fields(existing, fitted.fields).fields
    assert count_columns(merged) <= MAX_COLUMNS
    added = [f["name"] for f in fitted.fields if f["name"] not in {e["name"] for e in existing}]
    assert 0 < count_columns([f for f in fitted.fields if f["name"] in added]) <= 5
    (row, again) = fitted.data.to_pylist()
    dropped = [t["TagName"] for t in row["DroppedTags"]]
    assert dropped and not set(dropped) & set(added)
    assert "PatientName" in dropped or "PatientName" in added
    for name in dropped:
        assert name not in fitted.data.column_names
    assert again["DroppedTags"] == row["DroppedTags"]  # the second row, same shapes, goes the same way
    assert row["SOPInstanceUID"] == ct.row["SOPInstanceUID"] and row["LastUpdated"] is not None
