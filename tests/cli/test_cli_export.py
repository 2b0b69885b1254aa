"""`dicomlake dicom-stores export gcs|bq` against a real server exporting to a bucket folder
(gs://NAME = <data dir>/buckets/NAME): waited and --async, media types, filter files, the failure
summary, and an operation that ends in error (gcloud's ERROR line, exit code 1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import requests
import yaml
from cli_helpers import new_store, run, sqlite_server, store_flags

from conftest import Server, Store, dicom_file, new_bucket, wait_done, write

pytestmark = sqlite_server

EXPORT_METHOD = "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"


def filled(server: Server, *files: str) -> Store:
    store = new_store(server)
    for name in files:
        response = requests.post(
            f"{store.dicomweb}/studies",
            data=dicom_file(name).read_bytes(),
            headers={"Content-Type": "application/dicom"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    return store


def object_path(out: Path, name: str, extension: str) -> Path:
    ds = pydicom.dcmread(dicom_file(name), stop_before_pixels=True)
    return out / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}{extension}"


def export_gcs(store: Store, prefix: str, *extra: str):
    return run(
        store.server,
        "dicom-stores",
        "export",
        "gcs",
        store.store,
        *store_flags(store),
        "--gcs-uri-prefix",
        prefix,
        *extra,
    )


def test_export_waits_writes_every_instance_and_prints_the_store(server: Server) -> None:
    store = filled(server, "CT_small.dcm", "MR_small.dcm")
    bucket, folder = new_bucket(server)

    result = export_gcs(store, f"gs://{bucket}/out")

    assert result.code == 0
    assert re.fullmatch(
        rf"Request issued for: \[{store.store}\]\n"
        rf"Waiting for operation \[{re.escape(store.dataset_name)}/operations/\d+\] to complete\.\.\.done\.\n",
        result.stderr,
    )
    assert yaml.safe_load(result.stdout) == {"name": store.name}
    for name in ("CT_small.dcm", "MR_small.dcm"):
        assert object_path(folder / "out", name, ".dcm").read_bytes() == dicom_file(name).read_bytes()


def test_export_async_with_a_media_type_and_a_filter_file(server: Server) -> None:
    store = filled(server, "CT_small.dcm", "MR_small.dcm")
    bucket, folder = new_bucket(server)
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True)
    write(folder / "filter.txt", f"/studies/{ct.StudyInstanceUID}\n".encode())

    result = export_gcs(
        store,
        f"gs://{bucket}/png",
        "--mime-type=image/png",
        f"--filter-config-gcs-uri=gs://{bucket}/filter.txt",
        "--async",
    )

    assert result.code == 0
    operation = yaml.safe_load(result.stdout)
    assert operation["metadata"]["apiMethodName"] == EXPORT_METHOD
    assert result.stderr == f"Request issued for: [{store.store}]\nCheck operation [{operation['name']}] for status.\n"
    assert wait_done(server, operation)["metadata"]["counter"] == {"success": "1"}
    exported = [p.relative_to(folder / "png") for p in (folder / "png").rglob("*") if p.is_file()]
    assert exported == [object_path(Path(), "CT_small.dcm", ".png")]


def test_export_with_failures_warns_and_names_the_command_that_shows_why(server: Server) -> None:
    # An RT plan has no pixels to render as PNG.
    store = filled(server, "CT_small.dcm", "rtplan.dcm")
    bucket, _ = new_bucket(server)

    result = export_gcs(store, f"gs://{bucket}/out", "--mime-type", "image/png")

    assert result.code == 0
    name = re.search(r"Waiting for operation \[(.+?)\]", result.stderr).group(1)
    assert result.stderr.splitlines()[2] == (
        f"WARNING: 1 of 2 instances failed to export; see why with: "
        f"dicomlake logs read --project={store.project} --filter 'operation.id=\"{name}\"'"
    )
    logs = run(server, "logs", "read", "--project", store.project, "--filter", f'operation.id="{name}"')
    rtplan = pydicom.dcmread(dicom_file("rtplan.dcm"), stop_before_pixels=True)
    assert yaml.safe_load(logs.stdout)["jsonPayload"]["resourceName"].endswith(rtplan.SOPInstanceUID)


def test_an_operation_that_ends_in_error_prints_gcloud_error_and_exits_1(server: Server) -> None:
    store = filled(server, "CT_small.dcm")
    bucket, folder = new_bucket(server)
    write(folder / "filter.txt", b"studies/not-a-path\n")

    result = export_gcs(store, f"gs://{bucket}/out", f"--filter-config-gcs-uri=gs://{bucket}/filter.txt")

    assert result.code == 1 and result.stdout == ""
    issued, waiting, error = result.stderr.split("\n", 2)
    assert issued == f"Request issued for: [{store.store}]"
    assert re.fullmatch(r"Waiting for operation \[.+\] to complete\.\.\.failed\.", waiting)
    prefix = "ERROR: (dicomlake.dicom-stores.export.gcs) "
    assert error.startswith(prefix + '{\n  "code": 3,\n')
    assert json.loads(error.removeprefix(prefix))["code"] == 3
    assert "line 1 of filter file" in error


def test_export_to_a_missing_bucket_is_refused_with_one_line(server: Server) -> None:
    store = filled(server)

    result = export_gcs(store, "gs://no-such-bucket-here/out")

    assert result.code == 2 and result.stdout == ""
    assert result.stderr.startswith(
        "dicomlake: error: INVALID_ARGUMENT: bucket gs://no-such-bucket-here does not exist"
    )
    assert result.stderr.count("\n") == 1


def export_bq(store: Store, table: str, *extra: str):
    return run(
        store.server, "dicom-stores", "export", "bq", store.store, *store_flags(store), "--bq-table", table, *extra
    )


def test_export_bq_writes_a_row_per_instance_and_honours_the_write_disposition(server: Server) -> None:
    store = filled(server, "CT_small.dcm", "MR_small.dcm")
    project = f"cli-{store.dataset}".replace("_", "-")
    assert run(server, "bq", "mk", f"{project}:dicom").code == 0
    table = f"bq://{project}.dicom.instances"

    first = export_bq(store, table)
    refused = export_bq(store, table)
    appended = export_bq(store, table, "--write-disposition=write-append", "--async")
    operation = wait_done(server, yaml.safe_load(appended.stdout))
    overwritten = export_bq(store, table, "--overwrite-table")

    assert first.code == 0, first.stderr
    assert yaml.safe_load(first.stdout)["name"] == store.name
    assert refused.code == 1
    assert '"code": 6' in refused.stderr and "already exists" in refused.stderr
    assert operation["metadata"]["counter"] == {"success": "2"}
    assert overwritten.code == 0, overwritten.stderr
    count = run(server, "query", "SELECT COUNT(*) AS n FROM dicom.instances", "--project", project, "--format=json")
    assert json.loads(count.stdout) == [{"n": "2"}]  # as bq prints them


def test_export_bq_refuses_a_bad_table_with_one_line(server: Server) -> None:
    store = filled(server)
    result = export_bq(store, "bq://not-a-table")
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "invalid table" in result.stderr
