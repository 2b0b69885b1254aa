"""Exports and streams to a BigQuery API instead of the embedded tables (DICOMLAKE_BIGQUERY_URL): a dicomlake
server (the sender) writes through google-cloud-bigquery to the BigQuery API of a second dicomlake process
(the "BigQuery"), exactly as it would to Google's. The rows that arrive are those an embedded export makes,
a stream's view shows the latest state, columns are added as instances bring them, and a BigQuery that is
down delays the stream without losing a row."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from google.cloud import bigquery

from conftest import Server, Store, bigquery_client, dicom_file, eventually, make_store, start_server, wait_done
from conftest import stow as stow_one

FILES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "US1_J2KR.dcm"]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The BigQuery the sender writes to: another dicomlake process's BigQuery API."""
    server = start_server(tmp_path_factory.mktemp("bigquery"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sender(tmp_path_factory: pytest.TempPathFactory, remote: Server) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("sender"), extra_env={"DICOMLAKE_BIGQUERY_URL": remote.url})
    yield server
    server.stop()


@pytest.fixture
def bq(remote: Server) -> Iterator[bigquery.Client]:
    client = bigquery_client(remote, "rb")
    client.create_dataset("dicom")
    yield client
    client.close()


def stow(store: Store, *names: str) -> None:
    for name in names:
        stow_one(store, dicom_file(name).read_bytes())


def export(store: Store, uri: str, **destination: Any) -> dict:
    body = {"bigqueryDestination": {"tableUri": uri, **destination}}
    response = requests.post(f"{store.url}:export", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return wait_done(store.server, response.json())


def rows(bq: bigquery.Client, sql: str) -> list[dict]:
    return [dict(r.items()) for r in bq.query_and_wait(sql)]


def test_an_export_writes_the_rows_an_embedded_export_writes(
    sender: Server, remote: Server, bq: bigquery.Client
) -> None:
    there = make_store(sender)
    stow(there, *FILES)
    operation = export(there, f"bq://{bq.project}.dicom.sent")
    assert "error" not in operation, operation
    assert operation["metadata"]["counter"] == {"success": str(len(FILES))}

    # The same files exported by the BigQuery's own server, into its embedded tables.
    here = make_store(remote)
    stow(here, *FILES)
    assert "error" not in export(here, f"bq://{bq.project}.dicom.native")

    sent, native = bq.get_table(f"{bq.project}.dicom.sent"), bq.get_table(f"{bq.project}.dicom.native")
    assert sent.num_rows == native.num_rows == len(FILES)
    assert sorted(f.to_api_repr()["name"] for f in sent.schema) == sorted(
        f.to_api_repr()["name"] for f in native.schema
    )
    assert {f.name: f.to_api_repr() for f in sent.schema} == {f.name: f.to_api_repr() for f in native.schema}
    columns = "SOPInstanceUID, Modality, PatientName, Rows, PixelSpacing, StorageClass, BlobStorageSize"
    query = "SELECT {c} FROM `{p}.dicom.{t}` ORDER BY SOPInstanceUID"
    assert rows(bq, query.format(c=columns, p=bq.project, t="sent")) == rows(
        bq, query.format(c=columns, p=bq.project, t="native")
    )


def test_write_dispositions_and_a_missing_dataset(sender: Server, bq: bigquery.Client) -> None:
    store = make_store(sender)
    stow(store, "CT_small.dcm", "MR_small.dcm")
    uri = f"bq://{bq.project}.dicom.instances"
    assert "error" not in export(store, uri)
    assert export(store, uri)["error"]["code"] == 6  # unset disposition on a table that exists: ALREADY_EXISTS
    assert export(store, uri, writeDisposition="WRITE_EMPTY")["error"]["code"] == 9
    assert "error" not in export(store, uri, writeDisposition="WRITE_APPEND")
    assert bq.get_table(uri[5:]).num_rows == 4
    assert "error" not in export(store, uri, writeDisposition="WRITE_TRUNCATE")
    assert bq.get_table(uri[5:]).num_rows == 2

    missing = export(store, f"bq://{bq.project}.no_such_dataset.instances")
    assert missing["error"]["code"] == 5 and "no_such_dataset" in missing["error"]["message"], missing


def test_columns_are_added_as_instances_bring_them(sender: Server, bq: bigquery.Client) -> None:
    store = make_store(sender)
    uri = f"bq://{bq.project}.dicom.growing"
    stow(store, "MR_small.dcm")
    assert "error" not in export(store, uri)
    before = {f.name for f in bq.get_table(uri[5:]).schema}
    stow(store, "US1_J2KR.dcm")  # an ultrasound brings its own attributes
    assert "error" not in export(store, uri, writeDisposition="WRITE_TRUNCATE")
    after = {f.name for f in bq.get_table(uri[5:]).schema}
    assert before < after
    assert "PlanarConfiguration" in after - before  # the ultrasound is colour, the MR is not
    assert rows(bq, f"SELECT Modality, PlanarConfiguration FROM `{uri[5:]}` ORDER BY Modality") == [
        {"Modality": "MR", "PlanarConfiguration": None},
        {"Modality": "US", "PlanarConfiguration": 0},
    ]
    assert rows(bq, f"SELECT Modality FROM `{uri[5:]}` ORDER BY Modality") == [{"Modality": "MR"}, {"Modality": "US"}]


def test_a_column_another_tool_typed_otherwise_keeps_its_type_and_the_value_moves_to_other_elements(
    sender: Server, bq: bigquery.Client
) -> None:
    # Rows (US, INTEGER in the DICOM schema) made a STRING column by someone else before the first export.
    name = f"{bq.project}.dicom.typed"
    bq.create_table(
        bigquery.Table(
            name, schema=[bigquery.SchemaField("SOPInstanceUID", "STRING"), bigquery.SchemaField("Rows", "STRING")]
        )
    )
    store = make_store(sender)
    stow(store, "MR_small.dcm")
    assert "error" not in export(store, f"bq://{name}", writeDisposition="WRITE_APPEND")
    (row,) = rows(bq, f"SELECT Rows, OtherElements FROM `{name}`")
    assert row["Rows"] is None
    assert {"Tag": "Tag_00280010", "Data": ["64"]} in row["OtherElements"]
    assert bq.get_table(name).schema[1].field_type == "STRING"


def streaming(server: Server, uri: str) -> Store:
    store = make_store(server)
    configs = [{"bigqueryDestination": {"tableUri": uri}}]
    response = requests.patch(
        store.url, params={"updateMask": "streamConfigs"}, json={"streamConfigs": configs}, timeout=30
    )
    assert response.status_code == 200, response.text
    return store


def test_a_stream_writes_each_instance_once_and_keeps_the_view(sender: Server, bq: bigquery.Client) -> None:
    uri = f"bq://{bq.project}.dicom.stream"
    store = streaming(sender, uri)
    stow(store, *FILES)
    name = uri[5:]

    def arrived() -> list[dict]:
        got = rows(bq, f"SELECT SOPInstanceUID, Type FROM `{name}` ORDER BY SOPInstanceUID")
        assert len(got) == len(FILES), got
        return got

    got = eventually(arrived, timeout=30)
    assert {r["Type"] for r in got} == {"CREATE"}
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True)
    response = requests.delete(
        f"{store.dicomweb}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}",
        timeout=30,
    )
    assert response.status_code == 200, response.text

    def view_hides_the_deleted() -> None:
        assert {r["SOPInstanceUID"] for r in rows(bq, f"SELECT SOPInstanceUID FROM `{name}_view`")} == {
            r["SOPInstanceUID"] for r in got
        } - {ct.SOPInstanceUID}

    eventually(view_hides_the_deleted, timeout=30)
    assert len(rows(bq, f"SELECT * FROM `{name}` WHERE Type = 'DELETE'")) == 1
    assert bq.get_table(f"{name}_view").table_type == "VIEW"


def test_a_bigquery_that_is_down_delays_the_stream_and_loses_nothing(tmp_path: Path) -> None:
    remote = start_server(tmp_path / "bigquery")
    sender = start_server(tmp_path / "sender", extra_env={"DICOMLAKE_BIGQUERY_URL": remote.url})
    try:
        client = bigquery_client(remote, "down")
        client.create_dataset("dicom")
        store = streaming(sender, f"bq://{client.project}.dicom.stream")
        stow(store, "CT_small.dcm")
        eventually(lambda: _expect(client, 1), timeout=30)
        remote.stop()
        stow(store, "MR_small.dcm", "SC_rgb.dcm")  # acknowledged while the BigQuery is away
        time.sleep(1.5)  # several delivery rounds fail meanwhile
        remote.restart()
        eventually(lambda: _expect(client, 3), timeout=30)
        time.sleep(1)
        _expect(client, 3)  # and no row twice
    finally:
        sender.stop()
        remote.stop()


def _expect(client: bigquery.Client, rows: int) -> None:
    counted = list(client.query_and_wait(f"SELECT COUNT(*) AS n FROM `{client.project}.dicom.stream`"))[0]["n"]
    assert counted == rows


# ---- the BigQuery API's own tables.patch and tabledata.insertAll, as google-cloud-bigquery calls them ------


def test_insert_rows_checks_each_row_against_the_schema(bq: bigquery.Client) -> None:
    schema = [
        bigquery.SchemaField("name", "STRING"),
        bigquery.SchemaField("n", "INTEGER"),
        bigquery.SchemaField("at", "TIMESTAMP"),
        bigquery.SchemaField("items", "RECORD", mode="REPEATED", fields=[bigquery.SchemaField("code", "STRING")]),
    ]
    table = bq.create_table(bigquery.Table(f"{bq.project}.dicom.t", schema=schema))
    good = [{"name": "a", "n": 1, "at": "2026-12-07T10:00:00.5Z", "items": [{"code": "x"}, {"code": "y"}]}]
    assert bq.insert_rows_json(table, good, row_ids=["one"]) == []
    assert bq.insert_rows_json(table, good, row_ids=["one"]) == []  # sent again: dropped
    bad = [{"name": "b", "n": "not a number"}, {"name": "c", "nope": 1}, {"name": "d"}]
    errors = bq.insert_rows_json(table, bad)
    assert [e["index"] for e in errors] == [0, 1, 2]
    assert [e["errors"][0]["reason"] for e in errors] == ["invalid", "invalid", "stopped"]
    assert bq.insert_rows_json(table, bad, skip_invalid_rows=True, ignore_unknown_values=True) == [
        {"index": 0, "errors": [errors[0]["errors"][0]]}
    ]
    got = rows(
        bq, f"SELECT name, n, at, items[SAFE_OFFSET(1)].code AS second FROM `{bq.project}.dicom.t` ORDER BY name"
    )
    assert [(r["name"], r["n"], r["second"]) for r in got] == [("a", 1, "y"), ("c", None, None), ("d", None, None)]
    assert got[0]["at"].isoformat() == "2026-12-07T10:00:00.500000+00:00"


def test_update_table_adds_columns_and_nested_fields_and_honours_the_etag(bq: bigquery.Client) -> None:
    record = bigquery.SchemaField("r", "RECORD", fields=[bigquery.SchemaField("a", "STRING")])
    table = bq.create_table(
        bigquery.Table(f"{bq.project}.dicom.u", schema=[bigquery.SchemaField("id", "STRING"), record])
    )
    stale = bq.get_table(table.reference)
    wider = bigquery.SchemaField(
        "r", "RECORD", fields=[bigquery.SchemaField("a", "STRING"), bigquery.SchemaField("b", "INTEGER")]
    )
    table.schema = [bigquery.SchemaField("id", "STRING"), wider, bigquery.SchemaField("extra", "DATE")]
    table = bq.update_table(table, ["schema"])
    assert [f.name for f in table.schema] == ["id", "r", "extra"]
    assert [f.name for f in table.schema[1].fields] == ["a", "b"]
    assert bq.insert_rows_json(table, [{"id": "1", "r": {"a": "x", "b": 2}, "extra": "2026-12-07"}]) == []

    stale.schema = [*stale.schema, bigquery.SchemaField("late", "STRING")]
    with pytest.raises(Exception, match="412|Precondition"):
        bq.update_table(stale, ["schema"])  # read before the change above
    table = bq.get_table(table.reference)  # the rows inserted changed its etag
    table.schema = [bigquery.SchemaField("id", "STRING")]
    with pytest.raises(Exception, match="missing in new schema"):
        bq.update_table(table, ["schema"])
    table.schema = [bigquery.SchemaField("id", "INTEGER"), wider, bigquery.SchemaField("extra", "DATE")]
    with pytest.raises(Exception, match="400"):  # a column changing type
        bq.update_table(table, ["schema"])
    assert [f.name for f in bq.get_table(table.reference).schema] == ["id", "r", "extra"]


def test_truncate_table_empties_a_table(bq: bigquery.Client) -> None:
    table = bq.create_table(bigquery.Table(f"{bq.project}.dicom.v", schema=[bigquery.SchemaField("id", "STRING")]))
    assert bq.insert_rows_json(table, [{"id": "1"}, {"id": "2"}]) == []
    job = bq.query(f"TRUNCATE TABLE `{bq.project}.dicom.v`")
    job.result()
    assert job.statement_type == "TRUNCATE_TABLE"
    assert bq.get_table(table.reference).num_rows == 0
    assert [f.name for f in bq.get_table(table.reference).schema] == ["id"]
