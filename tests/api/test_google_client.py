"""google-api-python-client against dicomlake: the Healthcare v1 client built offline from the discovery
document bundled with the package, pointed at the test server with `client_options.api_endpoint`."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pydicom
import pytest
from googleapiclient.errors import HttpError

from conftest import Server, dicom_file, new_bucket, write


@pytest.fixture
def location() -> str:
    return f"projects/gc-{uuid.uuid4().hex[:10]}/locations/us-central1"


@pytest.fixture
def dataset(healthcare: Any, location: str) -> str:
    operation = healthcare.projects().locations().datasets().create(parent=location, datasetId="ds", body={}).execute()
    return operation["response"]["name"]


@pytest.fixture
def dicom_store(healthcare: Any, dataset: str) -> str:
    stores = healthcare.projects().locations().datasets().dicomStores()
    return stores.create(parent=dataset, dicomStoreId="store", body={}).execute()["name"]


def datasets(healthcare: Any) -> Any:
    return healthcare.projects().locations().datasets()


def stores(healthcare: Any) -> Any:
    return datasets(healthcare).dicomStores()


def error_of(excinfo: pytest.ExceptionInfo[HttpError]) -> dict[str, Any]:
    return json.loads(excinfo.value.content)["error"]


def store_instance(healthcare: Any, store: str, name: str) -> dict[str, Any]:
    """STOW one file through the generated storeInstances method.

    The discovery document declares the request body as google.api.HttpBody and offers no media
    upload, so the generated method would send a JSON document. Google's transcoding puts the raw
    request body into HttpBody, so the request built by the method is sent with the DICOM bytes as
    its body and Content-Type application/dicom instead (Content-Length too: the request computed
    it for the empty body it was built with)."""
    data = dicom_file(name).read_bytes()
    request = stores(healthcare).storeInstances(parent=store, dicomWebPath="studies")
    request.body = data
    request.headers["content-type"] = "application/dicom"
    request.headers["content-length"] = str(len(data))
    return request.execute()


def test_client_targets_the_local_server_with_the_v1_paths(healthcare: Any, server: Server, location: str) -> None:
    request = datasets(healthcare).list(parent=location)
    assert request.uri.startswith(f"{server.url}/v1/{location}/datasets?")
    assert "alt=json" in request.uri


def test_dataset_create_get_list_delete(healthcare: Any, location: str) -> None:
    operation = datasets(healthcare).create(parent=location, datasetId="first", body={}).execute()
    assert operation["done"] is True
    assert operation["name"].startswith(f"{location}/datasets/first/operations/")
    assert operation["response"]["name"] == f"{location}/datasets/first"
    assert operation["metadata"]["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"
    name = f"{location}/datasets/first"
    assert datasets(healthcare).get(name=name).execute() == {"name": name}
    assert datasets(healthcare).list(parent=location).execute() == {"datasets": [{"name": name}]}
    assert datasets(healthcare).delete(name=name).execute() == {}
    with pytest.raises(HttpError) as excinfo:
        datasets(healthcare).get(name=f"{location}/datasets/first").execute()
    assert excinfo.value.status_code == 404


def test_dataset_list_pages_with_list_next(healthcare: Any, location: str) -> None:
    names = [f"{location}/datasets/d{i}" for i in range(5)]
    for name in names:
        datasets(healthcare).create(parent=location, datasetId=name.rsplit("/", 1)[1], body={}).execute()
    seen, pages = [], 0
    request = datasets(healthcare).list(parent=location, pageSize=2)
    while request is not None:
        response = request.execute()
        pages += 1
        seen += [d["name"] for d in response["datasets"]]
        request = datasets(healthcare).list_next(request, response)
    assert (seen, pages) == (names, 3)


def test_duplicate_create_is_409_already_exists(healthcare: Any, dataset: str, dicom_store: str) -> None:
    location = dataset.rsplit("/datasets/", 1)[0]
    with pytest.raises(HttpError) as excinfo:
        datasets(healthcare).create(parent=location, datasetId="ds", body={}).execute()
    assert excinfo.value.status_code == 409
    assert error_of(excinfo)["status"] == "ALREADY_EXISTS"
    with pytest.raises(HttpError) as excinfo:
        stores(healthcare).create(parent=dataset, dicomStoreId="store", body={}).execute()
    assert (excinfo.value.status_code, error_of(excinfo)["status"]) == (409, "ALREADY_EXISTS")


def test_unknown_dataset_and_store_are_404_in_google_envelope(healthcare: Any, dataset: str) -> None:
    location = dataset.rsplit("/datasets/", 1)[0]
    calls = [
        datasets(healthcare).get(name=f"{location}/datasets/missing"),
        stores(healthcare).list(parent=f"{location}/datasets/missing"),
        stores(healthcare).get(name=f"{dataset}/dicomStores/missing"),
        stores(healthcare).delete(name=f"{dataset}/dicomStores/missing"),
        stores(healthcare).getDICOMStoreMetrics(name=f"{dataset}/dicomStores/missing"),
        stores(healthcare).searchForStudies(parent=f"{dataset}/dicomStores/missing", dicomWebPath="studies"),
    ]
    for request in calls:
        with pytest.raises(HttpError) as excinfo:
            request.execute()
        assert excinfo.value.status_code == 404
        body = json.loads(excinfo.value.content)
        assert set(body) == {"error"}
        assert body["error"]["code"] == 404 and body["error"]["status"] == "NOT_FOUND" and body["error"]["message"]
        assert excinfo.value.reason == body["error"]["message"]


@pytest.mark.parametrize("bad_id", ["has space", "x" * 257, "semi;colon"])
def test_invalid_ids_are_400(healthcare: Any, dataset: str, bad_id: str) -> None:
    location = dataset.rsplit("/datasets/", 1)[0]
    for request in (
        datasets(healthcare).create(parent=location, datasetId=bad_id, body={}),
        stores(healthcare).create(parent=dataset, dicomStoreId=bad_id, body={}),
    ):
        with pytest.raises(HttpError) as excinfo:
            request.execute()
        assert (excinfo.value.status_code, error_of(excinfo)["status"]) == (400, "INVALID_ARGUMENT")


def test_store_create_get_list_delete(healthcare: Any, dataset: str) -> None:
    created = stores(healthcare).create(parent=dataset, dicomStoreId="s1", body={"labels": {"env": "dev"}}).execute()
    assert created == {"name": f"{dataset}/dicomStores/s1", "labels": {"env": "dev"}}
    assert stores(healthcare).get(name=created["name"]).execute() == created
    assert stores(healthcare).list(parent=dataset).execute() == {"dicomStores": [created]}
    assert stores(healthcare).delete(name=created["name"]).execute() == {}
    assert stores(healthcare).list(parent=dataset).execute() == {}


def test_store_list_pages_across_more_than_two_pages(healthcare: Any, dataset: str) -> None:
    names = [f"{dataset}/dicomStores/s{i:02d}" for i in range(7)]
    for name in names:
        stores(healthcare).create(parent=dataset, dicomStoreId=name.rsplit("/", 1)[1], body={}).execute()
    seen, tokens = [], []
    response = stores(healthcare).list(parent=dataset, pageSize=2).execute()
    while True:
        seen += [s["name"] for s in response["dicomStores"]]
        if "nextPageToken" not in response:
            break
        tokens.append(response["nextPageToken"])
        response = stores(healthcare).list(parent=dataset, pageSize=2, pageToken=tokens[-1]).execute()
    assert seen == names
    assert len(tokens) == 3
    filtered = stores(healthcare).list(parent=dataset, filter="labels.none=x").execute()
    assert filtered == {}


def test_patch_labels_with_update_mask(healthcare: Any, dicom_store: str) -> None:
    patched = (
        stores(healthcare)
        .patch(name=dicom_store, updateMask="labels", body={"labels": {"env": "prod", "owner": "radiology"}})
        .execute()
    )
    assert patched == {"name": dicom_store, "labels": {"env": "prod", "owner": "radiology"}}
    assert stores(healthcare).get(name=dicom_store).execute() == patched


def test_patch_stream_configs_accepts_valid_and_rejects_invalid(healthcare: Any, dicom_store: str) -> None:
    def configs(*uris: str) -> dict[str, Any]:
        return {"streamConfigs": [{"bigqueryDestination": {"tableUri": uri}} for uri in uris]}

    valid = configs("bq://project-1.dataset_1.table_a", "bq://project-1.dataset_1.table_b")
    patched = stores(healthcare).patch(name=dicom_store, updateMask="streamConfigs", body=valid).execute()
    assert patched == {"name": dicom_store, **valid}
    for body in (
        configs(*[f"bq://p.d.t{i}" for i in range(6)]),
        configs("bq://p.d.same", "bq://p.d.same"),
        configs("bq://p.d"),
        configs("bq:/p.d.t"),
        configs("p.d.t"),
        configs("bq://p.d.t.u.v!"),
    ):
        with pytest.raises(HttpError) as excinfo:
            stores(healthcare).patch(name=dicom_store, updateMask="streamConfigs", body=body).execute()
        assert (excinfo.value.status_code, error_of(excinfo)["status"]) == (400, "INVALID_ARGUMENT")
    assert stores(healthcare).get(name=dicom_store).execute() == patched


def test_patch_with_unknown_update_mask_is_400(healthcare: Any, dicom_store: str) -> None:
    with pytest.raises(HttpError) as excinfo:
        stores(healthcare).patch(name=dicom_store, updateMask="displayName", body={}).execute()
    assert (excinfo.value.status_code, error_of(excinfo)["status"]) == (400, "INVALID_ARGUMENT")


def test_store_instances_then_metrics_count_them(healthcare: Any, dicom_store: str) -> None:
    empty = stores(healthcare).getDICOMStoreMetrics(name=dicom_store).execute()
    assert (empty["studyCount"], empty["seriesCount"], empty["instanceCount"]) == ("0", "0", "0")
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        response = store_instance(healthcare, dicom_store, name)
        sop = pydicom.dcmread(dicom_file(name), stop_before_pixels=True).SOPInstanceUID
        assert response["00081199"]["Value"][0]["00081155"]["Value"] == [sop]
    metrics = stores(healthcare).getDICOMStoreMetrics(name=dicom_store).execute()
    assert metrics["name"] == dicom_store
    assert (metrics["studyCount"], metrics["seriesCount"], metrics["instanceCount"]) == ("3", "3", "3")
    sizes = sum(dicom_file(n).stat().st_size for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"))
    assert metrics["blobStorageSizeBytes"] == str(sizes)


def test_storing_a_duplicate_through_the_client_is_409(healthcare: Any, dicom_store: str) -> None:
    store_instance(healthcare, dicom_store, "CT_small.dcm")
    with pytest.raises(HttpError) as excinfo:
        store_instance(healthcare, dicom_store, "CT_small.dcm")
    assert excinfo.value.status_code == 409


def test_searches_ignore_alt_json(healthcare: Any, dicom_store: str) -> None:
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True)
    mr = pydicom.dcmread(dicom_file("MR_small.dcm"), stop_before_pixels=True)
    assert stores(healthcare).searchForStudies(parent=dicom_store, dicomWebPath="studies").execute() == {}
    for name in ("CT_small.dcm", "MR_small.dcm"):
        store_instance(healthcare, dicom_store, name)

    request = stores(healthcare).searchForStudies(parent=dicom_store, dicomWebPath="studies")
    assert "alt=json" in request.uri
    found = request.execute()
    assert sorted(s["0020000D"]["Value"][0] for s in found) == sorted([ct.StudyInstanceUID, mr.StudyInstanceUID])

    series = stores(healthcare).searchForSeries(parent=dicom_store, dicomWebPath="series").execute()
    assert {(s["0020000E"]["Value"][0], s["00080060"]["Value"][0]) for s in series} == {
        (ct.SeriesInstanceUID, "CT"),
        (mr.SeriesInstanceUID, "MR"),
    }

    instances = stores(healthcare).searchForInstances(parent=dicom_store, dicomWebPath="instances").execute()
    assert {i["00080018"]["Value"][0] for i in instances} == {ct.SOPInstanceUID, mr.SOPInstanceUID}

    in_study = (
        stores(healthcare)
        .studies()
        .searchForSeries(parent=dicom_store, dicomWebPath=f"studies/{ct.StudyInstanceUID}/series")
        .execute()
    )
    assert [s["0020000E"]["Value"][0] for s in in_study] == [ct.SeriesInstanceUID]
    in_series = (
        stores(healthcare)
        .studies()
        .series()
        .searchForInstances(
            parent=dicom_store, dicomWebPath=f"studies/{mr.StudyInstanceUID}/series/{mr.SeriesInstanceUID}/instances"
        )
        .execute()
    )
    assert [i["00080018"]["Value"][0] for i in in_series] == [mr.SOPInstanceUID]


def wait_with_client(healthcare: Any, operation: dict, timeout: float = 60) -> dict:
    """Poll operations().get() until done, as a client of Google's service does."""
    deadline = time.monotonic() + timeout
    while not operation.get("done"):
        assert time.monotonic() < deadline, f"operation not done within {timeout} s: {operation}"
        time.sleep(0.05)
        operation = datasets(healthcare).operations().get(name=operation["name"]).execute()
    return operation


def test_delete_study_returns_an_operation_readable_with_operations_get(healthcare: Any, dicom_store: str) -> None:
    store_instance(healthcare, dicom_store, "CT_small.dcm")
    study = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True).StudyInstanceUID
    operation = stores(healthcare).studies().delete(parent=dicom_store, dicomWebPath=f"studies/{study}").execute()
    dataset = dicom_store.rsplit("/dicomStores/", 1)[0]
    assert operation["name"].startswith(f"{dataset}/operations/")
    fetched = wait_with_client(healthcare, operation)
    assert fetched["name"] == operation["name"]
    assert fetched["metadata"]["counter"] == {"success": "1"}
    assert fetched["metadata"]["apiMethodName"].endswith("DeleteStudy")
    assert "error" not in fetched
    listed = datasets(healthcare).operations().list(name=dataset).execute()
    assert fetched in listed["operations"]
    assert stores(healthcare).searchForStudies(parent=dicom_store, dicomWebPath="studies").execute() == {}
    metrics = stores(healthcare).getDICOMStoreMetrics(name=dicom_store).execute()
    assert metrics["instanceCount"] == "0"


def test_import_export_and_operations_get_through_the_google_client(
    healthcare: Any, dicom_store: str, server: Server
) -> None:
    name, folder = new_bucket(server)
    for file_name in ("CT_small.dcm", "MR_small.dcm"):
        write(folder / "in" / file_name, dicom_file(file_name).read_bytes())
    write(folder / "in" / "notes.txt", b"not DICOM")

    started = stores(healthcare).import_(name=dicom_store, body={"gcsSource": {"uri": f"gs://{name}/in/*"}}).execute()
    imported = wait_with_client(healthcare, started)

    assert imported["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    assert imported["metadata"]["counter"] == {"success": "2", "failure": "1"}
    assert imported["response"]["@type"].endswith("ImportDicomDataResponse")

    body = {"gcsDestination": {"uriPrefix": f"gs://{name}/out", "mimeType": "application/dicom"}}
    exported = wait_with_client(healthcare, stores(healthcare).export(name=dicom_store, body=body).execute())

    assert exported["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"
    assert exported["metadata"]["counter"] == {"success": "2"}
    written = sorted(p.read_bytes() for p in (folder / "out").rglob("*.dcm"))
    assert written == sorted(dicom_file(n).read_bytes() for n in ("CT_small.dcm", "MR_small.dcm"))
