"""`POST {store}:export` to a bucket folder (gs://NAME = <data dir>/buckets/NAME): object names, bytes as
stored and round trip through import, transcoded DICOM checked by dciodvfy, raw frames, JPEG and PNG
equal to WADO, filter files, per-instance failures with their log entries, and invalid requests."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from conftest import Store, dicom_file, make_store, new_bucket, wait_done, write

EXPORT_RESPONSE = {"@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ExportDicomDataResponse"}
LOG_TYPE = "type.googleapis.com/google.cloud.healthcare.logging.ExportDicomLogEntry"
FILES = ("CT_small.dcm", "emri_small.dcm", "SC_rgb.dcm", "rtplan.dcm")


def uids(name: str) -> tuple[str, str, str]:
    ds = pydicom.dcmread(dicom_file(name), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def object_stem(folder: Path, name: str) -> Path:
    study, series, sop = uids(name)
    return folder / study / series / sop


def object_path(folder: Path, name: str, extension: str) -> Path:
    # Not with_suffix: UIDs are full of dots.
    return Path(f"{object_stem(folder, name)}{extension}")


@pytest.fixture
def filled(store: Store) -> Store:
    """A store holding a single-frame CT, a 10-frame MR, an RGB image and an RT plan without pixels."""
    for name in FILES:
        response = requests.post(
            f"{store.dicomweb}/studies",
            data=dicom_file(name).read_bytes(),
            headers={"Content-Type": "application/dicom"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    return store


def export(store: Store, body: dict) -> dict:
    response = requests.post(f"{store.url}:export", json=body, timeout=30)
    assert response.status_code == 200, response.text
    started = response.json()
    assert started["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"
    return wait_done(store.server, started)


def export_to(store: Store, mime_type: str | None = None, **extra: object) -> tuple[dict, Path]:
    name, folder = new_bucket(store.server)
    destination = {"uriPrefix": f"gs://{name}/out"} | ({"mimeType": mime_type} if mime_type is not None else {})
    return export(store, {"gcsDestination": destination, **extra}), folder / "out"


def log_entries(store: Store, operation: dict) -> list[dict]:
    response = requests.get(
        store.server.api(f"projects/{store.project}/logs"),
        params={"filter": f'operation.id="{operation["name"]}"'},
        timeout=30,
    )
    return response.json().get("entries", [])


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def wado(store: Store, name: str, suffix: str = "", accept: str = "application/dicom; transfer-syntax=*") -> bytes:
    study, series, sop = uids(name)
    response = requests.get(
        f"{store.dicomweb}/studies/{study}/series/{series}/instances/{sop}{suffix}",
        headers={"Accept": accept},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.content


# ---- as stored ---------------------------------------------------------------------------------


def test_export_writes_each_instance_as_stored_under_study_series_instance(filled: Store) -> None:
    operation, out = export_to(filled)

    assert operation["response"] == EXPORT_RESPONSE
    assert operation["metadata"]["counter"] == {"success": str(len(FILES))}
    expected = sorted(str(object_stem(out, n).relative_to(out)) + ".dcm" for n in FILES)
    assert files_under(out) == expected
    for name in FILES:
        assert object_path(out, name, ".dcm").read_bytes() == dicom_file(name).read_bytes()


def test_exported_tree_imports_into_a_second_store_byte_identical(filled: Store) -> None:
    name, folder = new_bucket(filled.server)
    export(filled, {"gcsDestination": {"uriPrefix": f"gs://{name}/tree/", "mimeType": "application/dicom"}})
    second = make_store(filled.server)

    started = requests.post(f"{second.url}:import", json={"gcsSource": {"uri": f"gs://{name}/tree/**.dcm"}}, timeout=30)
    operation = wait_done(second.server, started.json())

    assert operation["metadata"]["counter"] == {"success": str(len(FILES))}
    for file_name in FILES:
        assert wado(second, file_name) == wado(filled, file_name) == dicom_file(file_name).read_bytes()


# ---- transcoded --------------------------------------------------------------------------------


def dciodvfy_errors(path: Path) -> set[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2"])
def test_transcoded_export_passes_dciodvfy_where_the_source_does(filled: Store, syntax: str) -> None:
    operation, out = export_to(filled, f"application/dicom; transfer-syntax={syntax}")

    assert operation["metadata"]["counter"] == {"success": str(len(FILES))}
    for name in ("CT_small.dcm", "SC_rgb.dcm", "emri_small.dcm"):
        exported = object_path(out, name, ".dcm")
        ds = pydicom.dcmread(exported)
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SOPInstanceUID == uids(name)[2]
        assert np.array_equal(ds.pixel_array, pydicom.dcmread(dicom_file(name)).pixel_array)
        assert dciodvfy_errors(exported) <= dciodvfy_errors(dicom_file(name))


def test_instances_that_cannot_take_the_syntax_fail_with_a_log_entry(filled: Store) -> None:
    # JPEG baseline holds 8-bit pixels: the 16-bit CT and MR fail, the RGB image and the RT plan go.
    operation, out = export_to(filled, "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50")

    assert operation["response"] == EXPORT_RESPONSE
    assert operation["metadata"]["counter"] == {"success": "2", "failure": "2"}
    assert object_path(out, "SC_rgb.dcm", ".dcm").exists()
    assert not object_path(out, "CT_small.dcm", ".dcm").exists()
    entries = log_entries(filled, operation)
    failed = sorted(e["jsonPayload"]["resourceName"].split("/instances/")[1] for e in entries)
    assert failed == sorted([uids("CT_small.dcm")[2], uids("emri_small.dcm")[2]])
    for entry in entries:
        assert entry["jsonPayload"]["@type"] == LOG_TYPE
        assert entry["jsonPayload"]["resourceName"].startswith(f"{filled.name}/dicomWeb/studies/")
        assert entry["jsonPayload"]["error"]["code"] == 9
        assert entry["logName"] == f"projects/{filled.project}/logs/healthcare.googleapis.com%2Fexport_dicom"
        assert entry["operation"] == {
            "id": operation["name"],
            "producer": "healthcare.googleapis.com/ExportDicomData",
        }


# ---- per frame ---------------------------------------------------------------------------------


@pytest.mark.parametrize("media, extension", [("image/png", ".png"), ("image/jpeg", ".jpg")])
def test_rendered_exports_equal_wado_rendered(filled: Store, media: str, extension: str) -> None:
    operation, out = export_to(filled, media)

    # The RT plan has no pixel data to render.
    assert operation["metadata"]["counter"] == {"success": "3", "failure": "1"}
    (entry,) = log_entries(filled, operation)
    assert entry["jsonPayload"]["resourceName"].endswith(uids("rtplan.dcm")[2])
    single = object_path(out, "CT_small.dcm", extension)
    assert single.read_bytes() == wado(filled, "CT_small.dcm", "/rendered", media)
    frames = object_stem(out, "emri_small.dcm")
    assert sorted(p.name for p in frames.iterdir()) == sorted(f"{n}{extension}" for n in range(1, 11))
    for number in (1, 10):
        exported = Image.open(frames / f"{number}{extension}")
        served = Image.open(io.BytesIO(wado(filled, "emri_small.dcm", f"/frames/{number}/rendered", media)))
        assert exported.format == ("PNG" if media == "image/png" else "JPEG")
        assert np.array_equal(np.asarray(exported), np.asarray(served))


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "*"])
def test_octet_stream_export_writes_each_frame_as_wado_frames(filled: Store, syntax: str) -> None:
    operation, out = export_to(filled, f"application/octet-stream; transfer-syntax={syntax}")

    assert operation["metadata"]["counter"] == {"success": "3", "failure": "1"}
    mr = pydicom.dcmread(dicom_file("emri_small.dcm"))
    frame_bytes = mr.Rows * mr.Columns * 2
    for number in range(1, 11):
        exported = (object_stem(out, "emri_small.dcm") / str(number)).read_bytes()
        assert exported == mr.PixelData[(number - 1) * frame_bytes : number * frame_bytes]
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    assert object_stem(out, "CT_small.dcm").read_bytes() == ct.PixelData


# ---- filter files ------------------------------------------------------------------------------


def test_filter_file_selects_studies_series_and_instances_and_logs_unknown_ones(filled: Store) -> None:
    name, folder = new_bucket(filled.server)
    ct, mr, rgb = uids("CT_small.dcm"), uids("emri_small.dcm"), uids("SC_rgb.dcm")
    lines = [
        f"/studies/{ct[0]}",
        f"/studies/{mr[0]}/series/{mr[1]}",
        f"/studies/{rgb[0]}/series/{rgb[1]}/instances/{rgb[2]}",
        f"/studies/{ct[0]}/series/{ct[1]}/instances/{ct[2]}",  # named twice: exported once
        "/studies/1.2.3.4.5",
        "",
    ]
    write(folder / "filters/list.txt", "\r\n".join(lines).encode())

    operation = export(
        filled,
        {
            "gcsDestination": {"uriPrefix": f"gs://{name}/out"},
            "filterConfig": {"resourcePathsGcsUri": f"gs://{name}/filters/list.txt"},
        },
    )

    assert operation["metadata"]["counter"] == {"success": "3", "failure": "1"}
    out = folder / "out"
    assert len(files_under(out)) == 3
    assert not object_path(out, "rtplan.dcm", ".dcm").exists()
    (entry,) = log_entries(filled, operation)
    assert entry["jsonPayload"]["resourceName"] == f"{filled.name}/dicomWeb/studies/1.2.3.4.5"
    assert entry["jsonPayload"]["error"]["code"] == 5


@pytest.mark.parametrize("line", ["studies/1.2.3", "/studies/1.2.x", "/series/1.2.3", "/studies/1.2/instances/3"])
def test_malformed_filter_line_fails_the_operation_before_any_work(filled: Store, line: str) -> None:
    name, folder = new_bucket(filled.server)
    ct = uids("CT_small.dcm")
    write(folder / "filter.txt", f"/studies/{ct[0]}\n{line}\n".encode())

    operation = export(
        filled,
        {
            "gcsDestination": {"uriPrefix": f"gs://{name}/out"},
            "filterConfig": {"resourcePathsGcsUri": f"gs://{name}/filter.txt"},
        },
    )

    assert operation["error"]["code"] == 3
    assert "line 2 of filter file" in operation["error"]["message"]
    assert line not in operation["error"]["message"]  # the file may be anything: its lines are never quoted
    assert "counter" not in operation["metadata"]
    assert not (folder / "out").exists()


def test_missing_filter_file_fails_the_operation(filled: Store) -> None:
    name, _ = new_bucket(filled.server)
    operation = export(
        filled,
        {
            "gcsDestination": {"uriPrefix": f"gs://{name}/out"},
            "filterConfig": {"resourcePathsGcsUri": f"gs://{name}/nothing.txt"},
        },
    )
    assert operation["error"] == {"code": 3, "message": f"filter file gs://{name}/nothing.txt does not exist"}


# ---- invalid requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "set exactly one of gcsDestination and bigqueryDestination"),
        ({"gcsDestination": {}}, "gcsDestination.uriPrefix is required"),
        ({"gcsDestination": {"uriPrefix": "http://x/y"}}, "invalid URI"),
        ({"gcsDestination": {"uriPrefix": "gs://no-such-bucket-here/x"}}, "does not exist"),
        ({"gcsDestination": {"uriPrefix": "gs://BUCKET/x"}}, "invalid bucket name"),
        ({"gcsDestination": {"uriPrefix": "gs://{bucket}/x", "mimeType": "text/plain"}}, "invalid mimeType"),
        (
            {"gcsDestination": {"uriPrefix": "gs://{bucket}/x", "mimeType": "application/dicom; transfer-syntax=1.2"}},
            "cannot be exported",
        ),
        ({"gcsDestination": {"uriPrefix": "gs://{bucket}/x", "mimeType": "image/png; q=1"}}, "unknown parameter"),
        ({"gcsDestination": {"uriPrefix": "gs://{bucket}/x"}, "filterConfig": {}}, "resourcePathsGcsUri"),
    ],
)
def test_invalid_export_requests_are_rejected_and_queue_nothing(store: Store, body: dict, message: str) -> None:
    name, _ = new_bucket(store.server)
    text = requests.models.complexjson.dumps(body).replace("{bucket}", name)

    response = requests.post(f"{store.url}:export", data=text, headers={"Content-Type": "application/json"}, timeout=30)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert message in response.json()["error"]["message"]
    operations = requests.get(store.server.api(f"{store.dataset_name}/operations"), timeout=30).json()
    assert all("ExportDicomData" not in op["metadata"]["apiMethodName"] for op in operations["operations"])
