"""The Iceberg tables (the default warehouse): one commit per write, exactly once per stream event and export
shard, several processes committing to one table, small files compacted and history expired within stated bounds,
and outside readers (pyiceberg, DuckDB, Polars) reading the tables through the same catalog."""

from __future__ import annotations

import multiprocessing
import os
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pytest

from conftest import dicom_file
from dicomlake.dicom.flatten import ServiceColumns, flatten
from dicomlake.dicom.parse import parse
from dicomlake.errors import AlreadyExists, InvalidArgument, NotFound
from dicomlake.warehouse import dicom_tables, iceberg, query
from dicomlake.warehouse.embedded import TableRef
from dicomlake.warehouse.iceberg import IcebergTables, IcebergWarehouse

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
REF = TableRef("proj", "ds", "t")


def warehouse_in(folder: Path) -> IcebergWarehouse:
    return IcebergWarehouse(f"sqlite:///{folder / 'index.sqlite'}", (folder / "tables").as_uri(), folder / "local")


@pytest.fixture
def wh(tmp_path: Path) -> IcebergWarehouse:
    warehouse = warehouse_in(tmp_path)
    warehouse.create_dataset("proj", "ds")
    return warehouse


def row_of(name: str, **metadata_changes: object):  # type: ignore[no-untyped-def]
    parsed = parse(dicom_file(name).read_bytes())
    metadata = {**parsed.metadata, **metadata_changes}
    return flatten(orjson.dumps(metadata), ServiceColumns(NOW), file_meta=parsed.file_meta)


def select(wh: IcebergWarehouse, sql: str, tmp_path: Path) -> list[dict]:
    from dicomlake.warehouse import results

    path = tmp_path / "result.arrow"
    query.run(wh, "proj", sql, default_dataset=("proj", "ds"), results_path=path)
    _fields, page, _total = results.read(path, 0, 10_000)
    return page.to_pylist()


def test_tables_views_and_statements_commit_to_iceberg(wh: IcebergWarehouse, tmp_path: Path) -> None:
    fields = [{"name": "x", "type": "STRING", "mode": "REQUIRED"}, {"name": "n", "type": "INTEGER"}]
    wh.create_table(REF, fields, description="people")
    with pytest.raises(AlreadyExists):
        wh.create_table(TableRef("proj", "ds", "T"), fields)
    wider = [*fields, {"name": "r", "type": "RECORD", "fields": [{"name": "a", "type": "STRING"}]}]
    wh.append(REF, wider, [{"x": "1", "n": 2, "r": {"a": "z"}}, {"x": "2"}])
    info = wh.get_table(REF)
    assert (info.num_rows, info.description, [f["name"] for f in info.fields]) == (2, "people", ["x", "n", "r"])
    assert info.fields[0]["mode"] == "REQUIRED"
    with pytest.raises(InvalidArgument, match="do not fit"):
        wh.append(REF, fields, [{"n": 5}])  # x is REQUIRED

    wh.create_or_replace_view(TableRef("proj", "ds", "v"), "SELECT x, n FROM ds.t WHERE n IS NOT NULL")
    assert [(i.ref.table, i.type) for i in wh.list_tables("proj", "ds")] == [("t", "TABLE"), ("v", "VIEW")]
    assert select(wh, "SELECT * FROM v", tmp_path) == [{"x": "1", "n": 2}]

    query.run(wh, "proj", "INSERT INTO ds.t (x, n) VALUES ('3', 4)")
    query.run(wh, "proj", "CREATE TABLE ds.t2 AS SELECT x FROM ds.t")
    query.run(wh, "proj", "DELETE FROM ds.t WHERE x = '1'")
    query.run(wh, "proj", "UPDATE ds.t SET n = 40 WHERE x = '3'")
    assert select(wh, "SELECT x, n, r.a AS a FROM t ORDER BY x", tmp_path) == [
        {"x": "2", "n": None, "a": None},
        {"x": "3", "n": 40, "a": None},
    ]
    assert wh.row_count(TableRef("proj", "ds", "t2")) == 3
    query.run(wh, "proj", "DROP TABLE ds.t2")
    with pytest.raises(NotFound):
        wh.get_table(TableRef("proj", "ds", "t2"))
    wh.truncate(REF)
    assert wh.row_count(REF) == 0 and [f["name"] for f in wh.get_table(REF).fields] == ["x", "n", "r"]


def test_redelivered_stream_events_and_repeated_export_shards_are_written_once(wh: IcebergWarehouse) -> None:
    tables = IcebergTables(wh)
    rows = [row_of("CT_small.dcm"), row_of("MR_small.dcm")]
    tables.deliver(REF, rows, 7, [10, 11])
    tables.deliver(REF, rows, 7, [10, 11])
    tables.deliver(REF, [rows[1], rows[0]], 7, [11, 12])
    tables.deliver(REF, rows[:1], 8, [10])  # another store's event 10
    assert wh.row_count(REF) == 4

    export = TableRef("proj", "ds", "export")
    tables.ensure(export)
    parts = [dicom_tables.fit(tables.known_schema(export), rows)]
    tables.append(export, parts, lambda _i: rows, "export/1")
    tables.append(export, parts, lambda _i: rows, "export/1")
    tables.append(export, parts, lambda _i: rows, "export/2")
    # Another shard of export 1 (other instances) is rows of its own.
    other = [row_of("CT_small.dcm", **{"00080018": {"vr": "UI", "Value": ["1.2.3.4"]}})]
    tables.append(export, [dicom_tables.fit(tables.known_schema(export), other)], lambda _i: other, "export/1")
    assert wh.row_count(export) == 5
    assert wh.get_table(TableRef("proj", "ds", "t_view")).type == "VIEW"


def test_streamed_rows_are_visible_at_once_and_counted_once_across_flushes(
    wh: IcebergWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(iceberg, "FLUSH_ROWS", 3)
    tables = IcebergTables(wh)
    tables.deliver(REF, [row_of("CT_small.dcm"), row_of("MR_small.dcm")], 1, [1, 2])
    assert iceberg._row_count(wh.load(REF)) == 0  # still in the streaming buffer...
    assert select(wh, "SELECT Modality FROM t_view ORDER BY Modality", tmp_path) == [
        {"Modality": "CT"},
        {"Modality": "MR"},
    ]
    assert wh.row_count(REF) == 2 and wh.read_rows(REF, 0, 10, ["Modality"])[2] == 2

    tables.deliver(REF, [row_of("CT_small.dcm")], 1, [3])  # the third row: due, flushed in one commit
    assert iceberg._row_count(wh.load(REF)) == 0
    tables.flush_due()  # what the flusher thread of every process does every second
    assert iceberg._row_count(wh.load(REF)) == 3 and wh.buffer.pending("proj.ds.t") == []
    tables.deliver(REF, [row_of("MR_small.dcm")], 1, [3])  # redelivered after the flush: nothing new
    # A flush that committed but died before it forgot its entries leaves them behind: they are not read twice.
    tables.deliver(REF, [row_of("MR_small.dcm")], 1, [4])
    table = wh.load(REF)
    entries = wh.buffer.pending("proj.ds.t")
    with table.transaction() as tx:
        tx.append(iceberg.fit_to(wh._buffered_rows(table, entries), table.schema().as_arrow()))
        tx.set_properties({iceberg.FLUSHED: str(entries[-1].id)})
    assert wh.row_count(REF) == 4
    assert select(wh, "SELECT count(*) AS c FROM t", tmp_path) == [{"c": 4}]
    query.run(wh, "proj", "DELETE FROM ds.t WHERE Modality = 'MR'")
    assert wh.row_count(REF) == 2 and wh.buffer.pending("proj.ds.t") == []


def _deliver_from_another_process(folder: str, first_event: int, count: int) -> None:
    tables = IcebergTables(warehouse_in(Path(folder)))
    for event in range(first_event, first_event + count):
        tables.deliver(REF, [row_of("MR_small.dcm", **{"00200013": {"vr": "IS", "Value": [event]}})], 1, [event])


def test_processes_committing_to_one_table_lose_no_row(wh: IcebergWarehouse, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_deliver_from_another_process, args=(str(tmp_path), i * 100, 15)) for i in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert wh.row_count(REF) == 30
    numbers = sorted(r["n"] for r in select(wh, "SELECT CAST(InstanceNumber AS INT64) AS n FROM t", tmp_path))
    assert numbers == [*range(100, 115), *range(200, 215)]


def test_small_files_history_and_schemas_stay_bounded(
    wh: IcebergWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(iceberg, "KEEP_SECONDS", 0)
    monkeypatch.setattr(iceberg, "KEEP_SNAPSHOTS", 4)
    monkeypatch.setattr(iceberg, "ORPHAN_SECONDS", 0)
    tables = IcebergTables(wh)
    for event in range(40):
        # Every fifth row brings a new column: the table evolves as it streams.
        extra = {f"0011{event:04X}": {"vr": "LO", "Value": ["x"]}} if event % 5 == 0 else {}
        tables.deliver(REF, [row_of("CT_small.dcm", **extra)], 1, [event])
        wh.flush(REF)  # a commit each time, as a long stream's flushes make
    table = wh.load(REF)
    files = list(table.scan().plan_files())
    assert wh.row_count(REF) == 40
    assert len(files) <= iceberg.MAX_SMALL_FILES + IcebergTables.MAINTAIN_EVERY
    assert len(table.metadata.snapshots) <= 4 + IcebergTables.MAINTAIN_EVERY
    assert len(table.metadata.schemas) <= 4 + IcebergTables.MAINTAIN_EVERY
    on_disk = list((tmp_path / "tables").rglob("*.parquet"))
    assert len(on_disk) <= len(files) + 2 * IcebergTables.MAINTAIN_EVERY
    assert select(wh, "SELECT count(*) AS c FROM t", tmp_path) == [{"c": 40}]


def test_outside_readers_open_the_tables_through_the_same_catalog(wh: IcebergWarehouse, tmp_path: Path) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    tables = IcebergTables(wh)
    tables.deliver(REF, [row_of("CT_small.dcm"), row_of("MR_small.dcm")], 1, [1, 2])
    wh.flush(REF)  # outside readers see the rows that left the streaming buffer
    catalog = SqlCatalog("dicomlake", uri=f"sqlite:///{tmp_path / 'index.sqlite'}")
    table = catalog.load_table("proj.ds.t")
    modalities = sorted(table.scan(selected_fields=("Modality",)).to_arrow().column("Modality").to_pylist())
    assert modalities == ["CT", "MR"]

    files = [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
    with duckdb.connect() as conn:
        assert conn.sql(f"SELECT count(*) FROM read_parquet({files!r}, union_by_name = true)").fetchall() == [(2,)]

    polars = pytest.importorskip("polars")
    frame = polars.scan_iceberg(table).select("Modality").collect()
    assert sorted(frame["Modality"].to_list()) == ["CT", "MR"]
    # The reader holds its snapshot while dicomlake goes on writing.
    tables.deliver(REF, [row_of("CT_small.dcm")], 1, [3])
    wh.flush(REF)
    assert table.scan().to_arrow().num_rows == 2 and catalog.load_table("proj.ds.t").scan().to_arrow().num_rows == 3


def test_a_warehouse_folder_is_where_the_url_says(tmp_path: Path) -> None:
    wh = warehouse_in(tmp_path)
    wh.create_dataset("proj", "ds")
    wh.append(REF, [{"name": "x", "type": "STRING"}], [{"x": "1"}])
    assert list((tmp_path / "tables").rglob("*.parquet")) and not (tmp_path / "local" / "proj.duckdb").exists()
    assert os.path.exists(tmp_path / "index.sqlite")


def test_a_flush_held_by_a_process_that_died_is_taken_over_at_once(wh: IcebergWarehouse) -> None:
    from dicomlake.warehouse.stream_buffer import flushes

    tables = IcebergTables(wh)
    tables.deliver(REF, [row_of("CT_small.dcm")], 1, [1])
    dead = multiprocessing.get_context("spawn").Process(target=os.getpid)
    dead.start()
    dead.join()
    with wh.buffer.engine.begin() as conn:
        # A flush lease of a process of this machine that is gone, and one of a process that is alive.
        conn.execute(
            flushes.insert().values(table_id="proj.ds.t", until_ms=2**62, holder=f"{os.uname()[1]}:{dead.pid}")
        )
    wh.flush(REF)
    assert iceberg._row_count(wh.load(REF)) == 1
    with wh.buffer.engine.begin() as conn:
        conn.execute(flushes.update().values(until_ms=2**62, holder=f"{os.uname()[1]}:{os.getppid()}"))
    tables.deliver(REF, [row_of("MR_small.dcm")], 1, [2])
    wh.flush(REF)
    assert iceberg._row_count(wh.load(REF)) == 1 and wh.row_count(REF) == 2  # held: the rows wait, visible
