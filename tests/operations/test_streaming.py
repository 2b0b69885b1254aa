"""Streaming to tables: a store with streamConfigs appends a CREATE row per stored instance (STOW or import)
and a DELETE row per deleted one to every destination, and keeps `<table>_view` on the latest state; rows
survive a SIGKILL right after the STOW answers and are never written twice; a destination that cannot take
rows gets `dicom_stream` log entries and never fails the store request."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from google.cloud import bigquery

from conftest import (
    Server,
    Store,
    bigquery_client,
    dicom_file,
    eventually,
    make_store,
    new_bucket,
    start_server,
    wait_all_done,
    wait_done,
    write,
)

# The warehouse is the same DuckDB whichever index the server uses: one backend is enough here.
sqlite_only = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


@pytest.fixture
def bq(server: Server) -> Iterator[bigquery.Client]:
    client = bigquery_client(server, "st")
    client.create_dataset("stream")
    yield client
    client.close()


def streaming_store(server: Server, *uris: str) -> Store:
    store = make_store(server)
    configs = [{"bigqueryDestination": {"tableUri": uri}} for uri in uris]
    response = requests.patch(
        store.url, params={"updateMask": "streamConfigs"}, json={"streamConfigs": configs}, timeout=30
    )
    assert response.status_code == 200, response.text
    return store


def stow(store: Store, name: str) -> pydicom.Dataset:
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=dicom_file(name).read_bytes(),
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return pydicom.dcmread(dicom_file(name), stop_before_pixels=True)


def rows(bq: bigquery.Client, relation: str, columns: str = "SOPInstanceUID, Type") -> list[tuple]:
    sql = f"SELECT {columns} FROM `{bq.project}.stream.{relation}` ORDER BY LastUpdated"
    return [tuple(r.values()) for r in bq.query_and_wait(sql)]


@sqlite_only
def test_store_delete_store_gives_three_rows_and_the_view_shows_the_latest(server: Server, bq: bigquery.Client) -> None:
    table = f"bq://{bq.project}.stream.instances"
    store = streaming_store(server, table)
    ct = stow(store, "CT_small.dcm")
    url = f"{store.dicomweb}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"

    def created_once() -> None:
        assert rows(bq, "instances") == [(ct.SOPInstanceUID, "CREATE")]

    eventually(created_once)
    assert rows(bq, "instances_view") == [(ct.SOPInstanceUID, "CREATE")]

    requests.delete(url, timeout=30).raise_for_status()

    def deleted() -> None:
        assert rows(bq, "instances") == [(ct.SOPInstanceUID, "CREATE"), (ct.SOPInstanceUID, "DELETE")]

    eventually(deleted)
    assert rows(bq, "instances_view") == []  # a delete alone hides the instance

    stow(store, "CT_small.dcm")

    def again() -> None:
        assert [t for _, t in rows(bq, "instances")] == ["CREATE", "DELETE", "CREATE"]

    eventually(again)
    assert rows(bq, "instances_view") == [(ct.SOPInstanceUID, "CREATE")]
    (row,) = bq.query_and_wait(
        f"SELECT PatientName.Alphabetic.FamilyName AS family, StudyDate FROM `{bq.project}.stream.instances_view`"
    )
    assert row["family"] == ct.PatientName.family_name
    (deleted_row,) = bq.query_and_wait(f"SELECT * FROM `{bq.project}.stream.instances` WHERE Type = 'DELETE'")
    present = {k for k, v in deleted_row.items() if v not in (None, [])}
    assert present == {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Type", "LastUpdated"}


@sqlite_only
def test_a_sequence_left_out_of_the_metadata_for_its_size_is_a_dropped_tag(
    server: Server, bq: bigquery.Client, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    icon = pydicom.Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 1024, 1024, 16
    icon.PixelData = bytes(2 * 1024 * 1024)  # 2 MiB: the whole sequence is over the 1 MiB limit
    ds.IconImageSequence = [icon]
    ds.save_as(tmp_path / "big.dcm")
    store = streaming_store(server, f"bq://{bq.project}.stream.big")
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=(tmp_path / "big.dcm").read_bytes(),
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text

    def row() -> dict:
        (found,) = bq.query_and_wait(f"SELECT DroppedTags, KVP FROM `{bq.project}.stream.big`")
        return dict(found.items())

    found = eventually(row)
    assert found["DroppedTags"] == [{"TagName": "IconImageSequence"}]
    assert found["KVP"] == str(ds.KVP)  # the rest of the instance is there
    metadata = requests.get(f"{store.dicomweb}/studies/{ds.StudyInstanceUID}/metadata", timeout=30).json()
    assert "00880200" not in metadata[0] and "00020010" not in metadata[0]


@sqlite_only
def test_every_destination_gets_rows_from_stow_import_and_study_delete(server: Server, bq: bigquery.Client) -> None:
    first, second = f"bq://{bq.project}.stream.a", f"bq://{bq.project}.stream.b"
    store = streaming_store(server, first, second)
    name, folder = new_bucket(server)
    for file_name in ("MR_small.dcm", "rtplan.dcm"):
        write(folder / file_name, dicom_file(file_name).read_bytes())
    ct = stow(store, "CT_small.dcm")
    started = requests.post(f"{store.url}:import", json={"gcsSource": {"uri": f"gs://{name}/*.dcm"}}, timeout=30)
    wait_done(server, started.json())
    requests.delete(f"{store.dicomweb}/studies/{ct.StudyInstanceUID}", timeout=30).raise_for_status()
    wait_all_done(store)

    def complete() -> None:
        for table in ("a", "b"):
            kinds = sorted(t for _, t in rows(bq, table))
            assert kinds == ["CREATE", "CREATE", "CREATE", "DELETE"], kinds
            assert len(rows(bq, f"{table}_view")) == 2

    eventually(complete)


@sqlite_only
def test_a_missing_bigquery_dataset_logs_and_never_fails_the_stow(server: Server, bq: bigquery.Client) -> None:
    destination = f"bq://{bq.project}.no_such_dataset.instances"
    store = streaming_store(server, destination)
    ct = stow(store, "CT_small.dcm")
    log_name = f"projects/{store.project}/logs/healthcare.googleapis.com%2Fdicom_stream"

    def logged() -> list[dict]:
        response = requests.get(
            store.server.api(f"projects/{store.project}/logs"), params={"filter": f'logName="{log_name}"'}, timeout=30
        )
        entries = [e for e in response.json().get("entries", []) if e["jsonPayload"]["destination"] == destination]
        assert entries
        return entries

    (entry,) = eventually(logged)
    assert entry["jsonPayload"]["@type"] == "type.googleapis.com/google.cloud.healthcare.logging.DicomStreamLogEntry"
    assert entry["jsonPayload"]["resourceName"].endswith(f"/instances/{ct.SOPInstanceUID}")
    assert entry["jsonPayload"]["error"]["code"] == 5
    assert "operation" not in entry


def test_no_row_is_lost_or_doubled_when_the_server_is_killed_right_after_stow(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    try:
        bq = bigquery_client(server, "st")
        bq.create_dataset("stream")
        store = streaming_store(server, f"bq://{bq.project}.stream.instances")
        stored = [stow(store, name).SOPInstanceUID for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
        server.stop(signal.SIGKILL)
        server.restart()

        def all_there() -> None:
            assert sorted(s for s, _ in rows(bq, "instances")) == sorted(stored)

        eventually(all_there)
        time.sleep(0.5)  # any redelivery would have landed by now
        assert sorted(s for s, _ in rows(bq, "instances")) == sorted(stored)
    finally:
        server.stop()
