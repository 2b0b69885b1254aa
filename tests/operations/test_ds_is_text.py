"""DS and IS values keep their text in the tables (their columns are STRING): a real file whose SliceThickness
is "0.50", PixelSpacing "0.50\\0.50" and InstanceNumber " 007", stored by STOW, reads back through the BigQuery
API as written (without the padding) from an exported table and from a streamed one, while DICOMweb serves the
numbers of PS3.18 F.2.3."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pydicom
import pytest
import requests
from google.cloud import bigquery

from conftest import Server, Store, bigquery_client, dicom_file, eventually, make_store, stow, wait_done


@pytest.fixture
def bq(server: Server) -> Iterator[bigquery.Client]:
    client = bigquery_client(server, "dsis")
    client.create_dataset("dicom")
    yield client
    client.close()


def modified_ct() -> tuple[pydicom.Dataset, bytes]:
    """CT_small with the three values as a writer may put them in the file."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SliceThickness = "0.50"  # pydicom writes a DS's original text as it is
    ds.PixelSpacing = ["0.50", "0.50"]
    ds.InstanceNumber = "007"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    data = buffer.getvalue()
    # pydicom pads the IS at the end ("007 "); a writer may pad at the start, which PS3.5 6.2 allows.
    assert data.count(b"IS\x04\x00007 ") == 1
    return ds, data.replace(b"IS\x04\x00007 ", b"IS\x04\x00 007")


def streaming_store(server: Server, table_uri: str) -> Store:
    store = make_store(server)
    response = requests.patch(
        store.url,
        params={"updateMask": "streamConfigs"},
        json={"streamConfigs": [{"bigqueryDestination": {"tableUri": table_uri}}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return store


def text_columns(bq: bigquery.Client, table: str, sop_uid: str) -> list[tuple]:
    assert set(sop_uid) <= set("0123456789.")  # a UID: safe in the query text (no query parameters yet)
    sql = (
        "SELECT SliceThickness, PixelSpacing, InstanceNumber, SpacingBetweenSlices, SliceLocation "
        f"FROM `{bq.project}.dicom.{table}` WHERE SliceThickness = '0.50' AND SOPInstanceUID = '{sop_uid}'"
    )
    return [tuple(row.values()) for row in bq.query_and_wait(sql)]


# What both tables hold: the three values as written, CT_small's own "5.000000" too, and SliceLocation, whose
# text is what its number writes back, as before.
EXPECTED = [("0.50", ["0.50", "0.50"], "007", "5.000000", "-77.2040634155")]


def test_ds_and_is_text_reaches_exported_and_streamed_tables_and_dicomweb_keeps_numbers(
    server: Server, bq: bigquery.Client
) -> None:
    store = streaming_store(server, f"bq://{bq.project}.dicom.streamed")
    ds, data = modified_ct()
    stow(store, data)

    def streamed() -> None:
        assert text_columns(bq, "streamed", ds.SOPInstanceUID) == EXPECTED

    eventually(streamed)

    response = requests.post(
        f"{store.url}:export",
        json={"bigqueryDestination": {"tableUri": f"bq://{bq.project}.dicom.exported"}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert "error" not in wait_done(server, response.json())
    assert text_columns(bq, "exported", ds.SOPInstanceUID) == EXPECTED

    instance = f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    metadata = requests.get(f"{store.dicomweb}/{instance}/metadata", timeout=30)
    assert metadata.status_code == 200, metadata.text
    (served,) = metadata.json()
    assert served["00180050"] == {"vr": "DS", "Value": [0.5]}
    assert served["00280030"] == {"vr": "DS", "Value": [0.5, 0.5]}
    assert served["00200013"] == {"vr": "IS", "Value": [7]}
    assert "NumberText" not in served
    found = requests.get(
        f"{store.dicomweb}/instances",
        params={"SOPInstanceUID": ds.SOPInstanceUID, "includefield": "SliceThickness,PixelSpacing"},
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    )
    assert found.status_code == 200, found.text
    (match,) = found.json()
    assert match["00180050"]["Value"] == [0.5] and match["00280030"]["Value"] == [0.5, 0.5]
    assert match["00200013"]["Value"] == [7]
