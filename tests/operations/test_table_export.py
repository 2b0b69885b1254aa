"""`POST {store}:export` to a table (`bigqueryDestination`) in the embedded warehouse, read back with the
unmodified google-cloud-bigquery client: the schema against Google's own (IDC), values against the files,
the write-disposition matrix, filters, the seed example queries, and invalid requests."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from bigquery_rows import DICOMWEB_PATHS_OF_PATIENT, LATEST_STUDIES
from conftest import (
    SHARED_TESTDATA,
    Server,
    Store,
    all_dicom_files,
    dicom_file,
    make_store,
    new_bucket,
    wait_done,
    write,
)

EXPORT_BQ = "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData_bq"
IDC_SCHEMA = SHARED_TESTDATA.parent / "spec" / "idc_dicom_all_schema.json"
FILES = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "rtplan.dcm")

# The warehouse is the same DuckDB whichever index the server uses: one backend is enough here.
pytestmark = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


@pytest.fixture
def bq(server: Server) -> Iterator[bigquery.Client]:
    """A client on a project of the test's own, with an empty dataset `dicom`."""
    client = bigquery.Client(
        project=f"bq-{uuid.uuid4().hex[:10]}",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.url},
    )
    client.create_dataset("dicom")
    yield client
    client.close()


def stow(store: Store, paths: list[Path]) -> list[Path]:
    """Store each file; the ones stored (later files repeating a UID triple are refused)."""
    stored = []
    for path in paths:
        response = requests.post(
            f"{store.dicomweb}/studies",
            data=path.read_bytes(),
            headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
            timeout=60,
        )
        if response.status_code == 200:
            stored.append(path)
    return stored


@pytest.fixture
def filled(server: Server) -> Store:
    store = make_store(server)
    stow(store, [dicom_file(n) for n in FILES])
    return store


def export(store: Store, table_uri: str, **destination: Any) -> dict:
    body: dict[str, Any] = {"bigqueryDestination": {"tableUri": table_uri, **destination}}
    response = requests.post(f"{store.url}:export", json=body, timeout=30)
    assert response.status_code == 200, response.text
    started = response.json()
    assert started["metadata"]["apiMethodName"] == EXPORT_BQ
    return wait_done(store.server, started)


def table_uri(bq: bigquery.Client, table: str = "instances") -> str:
    return f"bq://{bq.project}.dicom.{table}"


def rows_of(bq: bigquery.Client, sql: str) -> list[dict]:
    return [dict(row.items()) for row in bq.query_and_wait(sql)]


# ---- schema and values ------------------------------------------------------------------------


def _idc_fields() -> dict[str, dict]:
    return {f["name"]: f for f in json.loads(IDC_SCHEMA.read_text())["schema"]["fields"]}


def _compare(ours: list[Any], theirs: dict[str, dict], path: str, mismatches: list[str]) -> int:
    compared = 0
    for field in ours:
        other = theirs.get(field.name)
        if other is None:
            continue
        compared += 1
        if (field.field_type, field.mode) != (other["type"], other["mode"]):
            mismatches.append(f"{path}{field.name}: {field.field_type} {field.mode} != {other['type']} {other['mode']}")
        elif field.field_type == "RECORD":
            inner = {f["name"]: f for f in other.get("fields", [])}
            compared += _compare(field.fields, inner, f"{path}{field.name}.", mismatches)
    return compared


def test_every_test_file_exports_with_the_types_and_modes_of_googles_schema(
    server: Server, bq: bigquery.Client
) -> None:
    store = make_store(server)
    stored = stow(store, all_dicom_files())

    operation = export(store, table_uri(bq))

    assert operation["response"]["@type"].endswith("ExportDicomDataResponse")
    assert operation["metadata"]["counter"] == {"success": str(len(stored))}
    table = bq.get_table(f"{bq.project}.dicom.instances")
    assert table.num_rows == len(stored)
    mismatches: list[str] = []
    compared = _compare(table.schema, _idc_fields(), "", mismatches)
    # SegmentAlgorithmName: IDC's table was made with an older dictionary (VM 1, now 1-n), spec §1.1.
    assert [m for m in mismatches if "SegmentAlgorithmName" not in m] == []
    assert compared > 500


def test_exported_rows_hold_the_values_of_the_files(filled: Store, bq: bigquery.Client) -> None:
    export(filled, table_uri(bq))
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))

    (row,) = rows_of(
        bq,
        f"SELECT PatientName, StudyDate, StudyTime, PixelSpacing, InstanceNumber, ImageType, TransferSyntaxUID, "
        f"StorageClass, BlobStorageSize, Type, LastUpdated, ARRAY_LENGTH(OtherElements) AS private_count "
        f"FROM `{bq.project}.dicom.instances` WHERE SOPInstanceUID = '{ct.SOPInstanceUID}'",
    )

    assert row["PatientName"]["Alphabetic"]["FamilyName"] == ct.PatientName.family_name
    assert row["StudyDate"] == dt.date(2004, 1, 19)
    assert row["StudyTime"] == dt.time(7, 27, 30)
    assert row["PixelSpacing"] == [str(v) for v in ct.PixelSpacing]
    assert row["InstanceNumber"] == str(ct.InstanceNumber)
    assert row["ImageType"] == list(ct.ImageType)
    assert row["TransferSyntaxUID"] == ct.file_meta.TransferSyntaxUID
    assert (row["StorageClass"], row["Type"]) == ("STANDARD", "CREATE")
    assert row["BlobStorageSize"] == dicom_file("CT_small.dcm").stat().st_size
    assert isinstance(row["LastUpdated"], dt.datetime)
    assert row["private_count"] == sum(1 for e in ct if e.tag.is_private and e.VR not in ("SQ", "OB", "OW", "UN"))


def test_the_seed_example_queries_run_unchanged_on_an_exported_table(filled: Store, bq: bigquery.Client) -> None:
    export(filled, table_uri(bq))
    table = f"{bq.project}.dicom.instances"
    datasets = [pydicom.dcmread(dicom_file(n), stop_before_pixels=True) for n in FILES]
    patient = datasets[0].PatientID

    paths = rows_of(bq, DICOMWEB_PATHS_OF_PATIENT.format(table=table).replace("'19045'", f"'{patient}'"))
    latest = rows_of(bq, LATEST_STUDIES.format(table=table))

    assert sorted(r["DICOMwebPath"] for r in paths) == sorted(
        f"/dicomWeb/studies/{d.StudyInstanceUID}/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}"
        for d in datasets
        if d.PatientID == patient
    )
    studies = {d.StudyInstanceUID for d in datasets}
    assert sorted(r["StudyInstanceUID"] for r in latest) == sorted(studies)
    assert sum(r["InstanceCount"] for r in latest) == len(FILES)


def test_a_filter_file_exports_only_what_it_names(filled: Store, bq: bigquery.Client) -> None:
    name, folder = new_bucket(filled.server)
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True)
    write(folder / "filter.txt", f"/studies/{ct.StudyInstanceUID}\n/studies/1.2.3.999\n".encode())
    body = {
        "bigqueryDestination": {"tableUri": table_uri(bq)},
        "filterConfig": {"resourcePathsGcsUri": f"gs://{name}/filter.txt"},
    }
    operation = wait_done(filled.server, requests.post(f"{filled.url}:export", json=body, timeout=30).json())

    assert operation["metadata"]["counter"] == {"success": "1", "failure": "1"}
    assert [r["SOPInstanceUID"] for r in rows_of(bq, f"SELECT SOPInstanceUID FROM `{bq.project}.dicom.instances`")] == [
        ct.SOPInstanceUID
    ]


def test_a_table_in_another_project_is_written(filled: Store, bq: bigquery.Client, server: Server) -> None:
    other = bigquery.Client(
        project=f"other-{uuid.uuid4().hex[:8]}",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.url},
    )
    other.create_dataset("shared")

    operation = export(filled, f"bq://{other.project}.shared.from_{filled.dataset}")

    assert operation["metadata"]["counter"] == {"success": str(len(FILES))}
    assert other.get_table(f"{other.project}.shared.from_{filled.dataset}").num_rows == len(FILES)


# ---- write dispositions -----------------------------------------------------------------------

# (table before, destination settings) -> rows after, or the google.rpc code the operation ends with.
MATRIX = [
    ("absent", {}, 4),
    ("absent", {"force": True}, 4),
    ("absent", {"writeDisposition": "WRITE_EMPTY"}, 4),
    ("absent", {"writeDisposition": "WRITE_TRUNCATE"}, 4),
    ("absent", {"writeDisposition": "WRITE_APPEND"}, 4),
    ("empty", {}, 6),
    ("empty", {"force": False}, 6),
    ("empty", {"force": True}, 4),
    ("empty", {"writeDisposition": "WRITE_EMPTY"}, 4),
    ("empty", {"writeDisposition": "WRITE_TRUNCATE"}, 4),
    ("empty", {"writeDisposition": "WRITE_APPEND"}, 4),
    ("full", {}, 6),
    ("full", {"force": True}, 4),
    ("full", {"writeDisposition": "WRITE_EMPTY"}, 9),
    ("full", {"writeDisposition": "WRITE_TRUNCATE"}, 4),
    ("full", {"writeDisposition": "WRITE_APPEND"}, 8),
    # force is ignored when writeDisposition is set.
    ("full", {"writeDisposition": "WRITE_APPEND", "force": True}, 8),
]


@pytest.mark.parametrize("before, destination, expected", MATRIX)
def test_write_disposition_matrix(
    filled: Store, bq: bigquery.Client, before: str, destination: dict, expected: int
) -> None:
    uri = table_uri(bq)
    if before == "empty":
        bq.create_table(
            bigquery.Table(f"{bq.project}.dicom.instances", [bigquery.SchemaField("SOPInstanceUID", "STRING")])
        )
    if before == "full":
        assert "error" not in export(filled, uri)

    operation = export(filled, uri, **destination)

    if before == "absent" or expected in (4, 8):
        assert "error" not in operation, operation
        assert bq.get_table(f"{bq.project}.dicom.instances").num_rows == expected
    else:
        assert operation["error"]["code"] == expected, operation
        assert "counter" not in operation["metadata"]
        rows_before = {"empty": 0, "full": 4}[before]
        assert bq.get_table(f"{bq.project}.dicom.instances").num_rows == rows_before


def test_missing_bigquery_dataset_ends_the_operation_with_not_found(filled: Store, bq: bigquery.Client) -> None:
    operation = export(filled, f"bq://{bq.project}.no_such_dataset.instances")
    assert operation["error"]["code"] == 5
    assert "no_such_dataset" in operation["error"]["message"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"bigqueryDestination": {}}, "invalid tableUri"),
        ({"bigqueryDestination": {"tableUri": "bq://p.d"}}, "invalid table"),
        ({"bigqueryDestination": {"tableUri": "gs://p/d/t"}}, "invalid tableUri"),
        (
            {"bigqueryDestination": {"tableUri": "bq://p.d.t", "writeDisposition": "WRITE_SOMETIMES"}},
            "writeDisposition",
        ),
        ({"bigqueryDestination": {"tableUri": "bq://p.d.t", "force": "yes"}}, "force"),
        (
            {"bigqueryDestination": {"tableUri": "bq://p.d.t"}, "gcsDestination": {"uriPrefix": "gs://b/x"}},
            "exactly one",
        ),
        ({"bigqueryDestination": {"tableUri": "bq://p.d.t", "schemaJson": {}}}, "schemaJson"),
    ],
)
def test_invalid_table_export_requests_are_refused(filled: Store, body: dict, message: str) -> None:
    response = requests.post(f"{filled.url}:export", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
