"""The Healthcare resource API over raw HTTP: datasets, DICOM stores and operations under /v1/ and its
/v1beta1/ alias, Google's error envelope, label rules (spec §2.2), paging and the standard parameters."""

from __future__ import annotations

import http.client
import io
import sqlite3
import uuid
from typing import Any
from urllib.parse import urlsplit

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from conftest import Server, Store, dicom_file, wait_done
from dicomlake.store import catalog

VERSIONS = ["v1", "v1beta1"]
STANDARD_PARAMS = {"alt": "json", "prettyPrint": "false", "fields": "name", "key": "x", "$.xgafv": "2"}


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def location_url(server: Server, version: str, project: str) -> str:
    return f"{server.url}/{version}/projects/{project}/locations/us-central1"


def create_dataset(server: Server, version: str, project: str, dataset: str) -> str:
    """Create a dataset; returns its URL."""
    base = f"{location_url(server, version, project)}/datasets"
    response = requests.post(base, params={"datasetId": dataset}, timeout=30)
    assert response.status_code == 200, response.text
    return f"{base}/{dataset}"


def create_store(dataset_url: str, store: str, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.post(f"{dataset_url}/dicomStores", params={"dicomStoreId": store}, json=body or {}, timeout=30)


def assert_error(response: requests.Response, code: int, status: str) -> None:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["status"] == status
    assert isinstance(error["message"], str) and error["message"]


@pytest.fixture
def dataset_url(server: Server) -> str:
    return create_dataset(server, "v1", unique("proj"), unique("ds"))


# ---- datasets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_dataset_lifecycle_answers_the_same_on_v1_and_v1beta1(server: Server, version: str) -> None:
    project, dataset = unique("proj"), unique("ds")
    base = f"{location_url(server, version, project)}/datasets"
    name = f"projects/{project}/locations/us-central1/datasets/{dataset}"

    operation = requests.post(base, params={"datasetId": dataset}, timeout=30).json()
    assert operation["done"] is True
    assert operation["name"].startswith(f"{name}/operations/")
    assert operation["response"]["name"] == name
    assert requests.get(f"{base}/{dataset}", timeout=30).json() == {"name": name}
    assert requests.get(base, timeout=30).json() == {"datasets": [{"name": name}]}

    assert requests.delete(f"{base}/{dataset}", timeout=30).json() == {}
    assert_error(requests.get(f"{base}/{dataset}", timeout=30), 404, "NOT_FOUND")


def test_dataset_list_pages_through_every_dataset_once(server: Server) -> None:
    project = unique("proj")
    names = sorted(unique("ds") for _ in range(5))
    for dataset in names:
        create_dataset(server, "v1", project, dataset)
    base = f"{location_url(server, 'v1', project)}/datasets"
    seen, token, pages = [], None, 0
    while True:
        params = {"pageSize": 2, **({"pageToken": token} if token else {})}
        page = requests.get(base, params=params, timeout=30).json()
        pages += 1
        assert len(page["datasets"]) <= 2
        seen += [d["name"].rsplit("/", 1)[1] for d in page["datasets"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert seen == names
    assert pages == 3


def test_creating_an_existing_dataset_is_already_exists(server: Server) -> None:
    project, dataset = unique("proj"), unique("ds")
    create_dataset(server, "v1", project, dataset)
    again = requests.post(f"{location_url(server, 'v1', project)}/datasets", params={"datasetId": dataset}, timeout=30)
    assert_error(again, 409, "ALREADY_EXISTS")


@pytest.mark.parametrize("dataset_id", ["", "has space", "semi;colon", "x" * 257, "trailing-newline\n", "a@b"])
def test_invalid_dataset_id_is_invalid_argument(server: Server, dataset_id: str) -> None:
    response = requests.post(
        f"{location_url(server, 'v1', unique('proj'))}/datasets", params={"datasetId": dataset_id}, timeout=30
    )
    assert_error(response, 400, "INVALID_ARGUMENT")


def test_dataset_id_accepts_unicode_letters_digits_dot_dash_underscore(server: Server) -> None:
    dataset = f"Données-{uuid.uuid4().hex[:6]}_v1.2"
    url = create_dataset(server, "v1", unique("proj"), dataset)
    assert requests.get(url, timeout=30).json()["name"].endswith(f"/datasets/{dataset}")


def test_unknown_dataset_is_not_found_in_google_envelope(server: Server) -> None:
    url = f"{location_url(server, 'v1', unique('proj'))}/datasets/{unique('missing')}"
    for response in (
        requests.get(url, timeout=30),
        requests.get(f"{url}/dicomStores", timeout=30),
        requests.delete(url, timeout=30),
        requests.get(f"{url}/operations", timeout=30),
        requests.get(f"{url}/dicomStores/s/dicomWeb/studies", timeout=30),
    ):
        assert_error(response, 404, "NOT_FOUND")
        assert set(response.json()) == {"error"}


# ---- DICOM stores -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_store_lifecycle_answers_the_same_on_v1_and_v1beta1(server: Server, version: str) -> None:
    project, dataset, store = unique("proj"), unique("ds"), unique("store")
    dataset_url = create_dataset(server, version, project, dataset)
    name = f"projects/{project}/locations/us-central1/datasets/{dataset}/dicomStores/{store}"

    created = create_store(dataset_url, store, {"labels": {"env": "test"}})
    assert created.status_code == 200, created.text
    assert created.json() == {"name": name, "labels": {"env": "test"}}
    assert requests.get(f"{dataset_url}/dicomStores/{store}", timeout=30).json() == created.json()
    assert requests.get(f"{dataset_url}/dicomStores", timeout=30).json() == {"dicomStores": [created.json()]}

    patched = requests.patch(
        f"{dataset_url}/dicomStores/{store}",
        params={"updateMask": "labels"},
        json={"labels": {"env": "prod", "team": "imaging"}},
        timeout=30,
    )
    assert patched.json()["labels"] == {"env": "prod", "team": "imaging"}

    assert requests.delete(f"{dataset_url}/dicomStores/{store}", timeout=30).json() == {}
    assert_error(requests.get(f"{dataset_url}/dicomStores/{store}", timeout=30), 404, "NOT_FOUND")


def test_creating_an_existing_store_is_already_exists(dataset_url: str) -> None:
    assert create_store(dataset_url, "s1").status_code == 200
    assert_error(create_store(dataset_url, "s1"), 409, "ALREADY_EXISTS")


@pytest.mark.parametrize("store_id", ["", "has space", "slash%2Fin", "x" * 257, "line\n"])
def test_invalid_store_id_is_invalid_argument(dataset_url: str, store_id: str) -> None:
    response = requests.post(f"{dataset_url}/dicomStores?dicomStoreId={store_id}", json={}, timeout=30)
    assert_error(response, 400, "INVALID_ARGUMENT")


def test_standard_google_parameters_are_ignored(dataset_url: str) -> None:
    store = unique("store")
    created = requests.post(
        f"{dataset_url}/dicomStores",
        params={"dicomStoreId": store, **STANDARD_PARAMS},
        json={"labels": {"a": "b"}},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    full = {"name": created.json()["name"], "labels": {"a": "b"}}
    assert created.json() == full
    assert requests.get(f"{dataset_url}/dicomStores/{store}", params=STANDARD_PARAMS, timeout=30).json() == full
    listed = requests.get(f"{dataset_url}/dicomStores", params=STANDARD_PARAMS, timeout=30)
    assert listed.json() == {"dicomStores": [full]}
    patched = requests.patch(
        f"{dataset_url}/dicomStores/{store}",
        params={"updateMask": "labels", **STANDARD_PARAMS},
        json={"labels": {"c": "d"}},
        timeout=30,
    )
    assert patched.json() == {**full, "labels": {"c": "d"}}
    metrics = requests.get(
        f"{dataset_url}/dicomStores/{store}:getDICOMStoreMetrics", params=STANDARD_PARAMS, timeout=30
    )
    assert metrics.status_code == 200 and metrics.json()["name"] == full["name"]


def test_store_list_pages_with_page_size_and_token(dataset_url: str) -> None:
    stores = sorted(f"s{i}" for i in range(7))
    for store in stores:
        assert create_store(dataset_url, store).status_code == 200
    seen, token, pages = [], None, 0
    while True:
        params = {"pageSize": 3, **({"pageToken": token} if token else {})}
        page = requests.get(f"{dataset_url}/dicomStores", params=params, timeout=30).json()
        pages += 1
        seen += [s["name"].rsplit("/", 1)[1] for s in page["dicomStores"]]
        token = page.get("nextPageToken")
        if not token:
            break
    assert (seen, pages) == (stores, 3)


def test_store_list_filters_on_a_label(dataset_url: str) -> None:
    create_store(dataset_url, "a", {"labels": {"env": "prod"}})
    create_store(dataset_url, "b", {"labels": {"env": "test"}})
    create_store(dataset_url, "c", {"labels": {"env": "prod", "team": "x"}})
    create_store(dataset_url, "d")

    def names(filter_: str) -> list[str]:
        response = requests.get(f"{dataset_url}/dicomStores", params={"filter": filter_}, timeout=30)
        assert response.status_code == 200, response.text
        return [s["name"].rsplit("/", 1)[1] for s in response.json().get("dicomStores", [])]

    assert names("labels.env=prod") == ["a", "c"]
    assert names('labels.env="test"') == ["b"]
    assert names("labels.env=prod AND labels.team=x") == ["c"]
    assert names("labels.env=none") == []
    assert names("labels.env=test OR labels.team=x") == ["b", "c"]
    assert names("NOT labels.env=prod") == ["b", "d"]
    assert names("labels.team:*") == ["c"]
    assert names("(labels.env=test OR labels.env=prod) AND NOT labels.team:*") == ["a", "b"]


def test_store_list_filter_pages_over_matching_stores_only(dataset_url: str) -> None:
    for i in range(6):
        create_store(dataset_url, f"s{i}", {"labels": {"keep": "yes" if i % 2 else "no"}})
    first = requests.get(
        f"{dataset_url}/dicomStores", params={"filter": "labels.keep=yes", "pageSize": 2}, timeout=30
    ).json()
    second = requests.get(
        f"{dataset_url}/dicomStores",
        params={"filter": "labels.keep=yes", "pageSize": 2, "pageToken": first["nextPageToken"]},
        timeout=30,
    ).json()
    assert [s["name"][-2:] for s in first["dicomStores"] + second["dicomStores"]] == ["s1", "s3", "s5"]
    assert "nextPageToken" not in second


@pytest.mark.parametrize(
    "filter_",
    [
        "name=foo",
        "labels.env",
        "labels.env=",
        "(labels.env=prod",
        "labels.env=prod AND",
        "labels.env=prod OR OR labels.a=b",
        "%00",
    ],
)
def test_unsupported_store_list_filter_is_invalid_argument(dataset_url: str, filter_: str) -> None:
    response = requests.get(f"{dataset_url}/dicomStores", params={"filter": filter_}, timeout=30)
    assert_error(response, 400, "INVALID_ARGUMENT")


DEEP_FILTERS = {
    "200 nested parentheses": "(" * 200 + "labels.a=b" + ")" * 200,
    "1,000 NOTs": "NOT " * 1000 + "labels.a=b",
    "6,300 characters": " OR ".join(["labels.a=b"] * 450),
}


@pytest.mark.parametrize("filter_", DEEP_FILTERS.values(), ids=DEEP_FILTERS.keys())
def test_store_list_filter_too_deep_or_long_is_invalid_argument(dataset_url: str, filter_: str) -> None:
    response = requests.get(f"{dataset_url}/dicomStores", params={"filter": filter_}, timeout=30)
    assert_error(response, 400, "INVALID_ARGUMENT")
    assert (
        "levels deep" in response.json()["error"]["message"] or "characters long" in response.json()["error"]["message"]
    )


def test_store_list_filter_nested_to_the_limit_is_read(dataset_url: str) -> None:
    create_store(dataset_url, "a", {"labels": {"env": "prod"}})
    create_store(dataset_url, "b")
    depth = catalog.MAX_FILTER_DEPTH
    response = requests.get(
        f"{dataset_url}/dicomStores",
        params={"filter": "(" * (depth - 2) + "NOT NOT labels.env=prod" + ")" * (depth - 2)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert [s["name"].rsplit("/", 1)[1] for s in response.json()["dicomStores"]] == ["a"]


@pytest.mark.parametrize("filter_", DEEP_FILTERS.values(), ids=DEEP_FILTERS.keys())
def test_operation_and_log_filters_too_deep_are_invalid_argument(store: Store, filter_: str) -> None:
    operations = store.server.api(f"{store.dataset_name}/operations")
    assert_error(requests.get(operations, params={"filter": filter_}, timeout=30), 400, "INVALID_ARGUMENT")
    logs = store.server.api(f"projects/{store.project}/logs")
    assert requests.get(logs, params={"filter": filter_}, timeout=30).status_code == 400


@pytest.mark.parametrize("path", ["datasets", "datasets/{ds}/dicomStores", "datasets/{ds}/operations"])
@pytest.mark.parametrize("token", ["not-a-token", "Zm9v", "%FF", "AAAA"])
def test_bad_page_token_is_invalid_argument(server: Server, path: str, token: str) -> None:
    project, dataset = unique("proj"), unique("ds")
    create_dataset(server, "v1", project, dataset)
    url = f"{location_url(server, 'v1', project)}/{path.format(ds=dataset)}?pageToken={token}"
    assert_error(requests.get(url, timeout=30), 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("page_size", ["-1", "abc", "1.5"])
@pytest.mark.parametrize("path", ["datasets", "datasets/{ds}/dicomStores", "datasets/{ds}/operations"])
def test_bad_page_size_is_invalid_argument(server: Server, path: str, page_size: str) -> None:
    project, dataset = unique("proj"), unique("ds")
    create_dataset(server, "v1", project, dataset)
    url = f"{location_url(server, 'v1', project)}/{path.format(ds=dataset)}"
    assert_error(requests.get(url, params={"pageSize": page_size}, timeout=30), 400, "INVALID_ARGUMENT")


# ---- labels (spec §2.2) -------------------------------------------------------------------------

VALID_LABELS = [
    {"env": "prod"},
    {"a": ""},
    {"team-1_x": "v-2_3"},
    {"ключ": "значение"},
    {"日本": "値"},
    {"日" * 42: "x"},  # 126 bytes
    {"k" * 63: "v" * 63},
    {f"k{i}": str(i) for i in range(64)},
]
INVALID_LABELS = [
    {"Env": "prod"},  # upper-case key
    {"1abc": "x"},  # key must start with a letter
    {"_a": "x"},
    {"-a": "x"},
    {"": "x"},
    {"k" * 64: "x"},  # more than 63 characters
    {"日" * 43: "x"},  # more than 128 bytes
    {"env": "Prod"},  # upper-case value
    {"env": "has space"},
    {"env": "dot.ted"},
    {"env": "v" * 64},
    {"env": 3},
    {"env": None},
    {f"k{i}": "v" for i in range(65)},
]


@pytest.mark.parametrize("labels", VALID_LABELS, ids=range(len(VALID_LABELS)))
def test_valid_labels_are_stored(dataset_url: str, labels: dict[str, str]) -> None:
    response = create_store(dataset_url, "s", {"labels": labels})
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == labels


@pytest.mark.parametrize("labels", INVALID_LABELS, ids=range(len(INVALID_LABELS)))
def test_invalid_labels_are_rejected_on_create_and_patch(dataset_url: str, labels: dict[str, Any]) -> None:
    assert_error(create_store(dataset_url, "s", {"labels": labels}), 400, "INVALID_ARGUMENT")
    assert create_store(dataset_url, "t").status_code == 200
    patched = requests.patch(
        f"{dataset_url}/dicomStores/t", params={"updateMask": "labels"}, json={"labels": labels}, timeout=30
    )
    assert_error(patched, 400, "INVALID_ARGUMENT")
    assert "labels" not in requests.get(f"{dataset_url}/dicomStores/t", timeout=30).json()


def test_labels_must_be_an_object(dataset_url: str) -> None:
    assert_error(create_store(dataset_url, "s", {"labels": ["env"]}), 400, "INVALID_ARGUMENT")


# ---- patch ------------------------------------------------------------------------------------


def test_patch_changes_only_the_fields_in_the_update_mask(dataset_url: str) -> None:
    create_store(dataset_url, "s", {"labels": {"a": "1"}, "notificationConfig": {"pubsubTopic": "projects/p/topics/t"}})
    url = f"{dataset_url}/dicomStores/s"
    patched = requests.patch(
        url,
        params={"updateMask": "labels"},
        json={"labels": {"b": "2"}, "notificationConfig": {"pubsubTopic": "ignored"}},
        timeout=30,
    )
    assert patched.json()["labels"] == {"b": "2"}
    assert patched.json()["notificationConfig"] == {"pubsubTopic": "projects/p/topics/t"}
    cleared = requests.patch(url, params={"updateMask": "labels"}, json={}, timeout=30)
    assert "labels" not in cleared.json()
    assert requests.get(url, timeout=30).json() == cleared.json()


def test_patch_stream_configs_validates_destinations(dataset_url: str) -> None:
    create_store(dataset_url, "s")
    url = f"{dataset_url}/dicomStores/s"

    def patch(configs: Any) -> requests.Response:
        return requests.patch(url, params={"updateMask": "streamConfigs"}, json={"streamConfigs": configs}, timeout=30)

    def destination(uri: str) -> dict[str, Any]:
        return {"bigqueryDestination": {"tableUri": uri}}

    ok = patch([destination("bq://my-project.my_dataset.table1"), destination("bq://example.com:p.d.t")])
    assert ok.status_code == 200, ok.text
    assert [c["bigqueryDestination"]["tableUri"] for c in ok.json()["streamConfigs"]] == [
        "bq://my-project.my_dataset.table1",
        "bq://example.com:p.d.t",
    ]
    for bad in (
        [destination(f"bq://p.d.t{i}") for i in range(6)],
        [destination("bq://p.d.t"), destination("bq://p.d.t")],
        [destination("bq://p.d")],
        [destination("p.d.t")],
        [destination("bq:/p.d.t")],
        [destination("bq://p.d-s.t")],
        [destination("bq://p..t")],
        [destination("bq://p.d.t\n")],
        [{"bigqueryDestination": {}}],
        [{}],
        ["bq://p.d.t"],
        {"tableUri": "bq://p.d.t"},
        [{"bigqueryDestination": {"tableUri": "bq://p.d.t", "writeDisposition": "WRITE_SOMETIMES"}}],
    ):
        assert_error(patch(bad), 400, "INVALID_ARGUMENT")
    assert len(requests.get(url, timeout=30).json()["streamConfigs"]) == 2
    assert "streamConfigs" not in patch([]).json()


@pytest.mark.parametrize("mask", ["name", "labels,bogus", "notificationConfig.pubsubTopic", "LABELS"])
def test_unknown_update_mask_path_is_invalid_argument(dataset_url: str, mask: str) -> None:
    create_store(dataset_url, "s")
    response = requests.patch(f"{dataset_url}/dicomStores/s", params={"updateMask": mask}, json={}, timeout=30)
    assert_error(response, 400, "INVALID_ARGUMENT")


def test_patch_without_update_mask_is_invalid_argument(dataset_url: str) -> None:
    create_store(dataset_url, "s")
    response = requests.patch(f"{dataset_url}/dicomStores/s", json={"labels": {"a": "b"}}, timeout=30)
    assert_error(response, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("body", [b"{", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_non_json_object_body_is_invalid_argument(dataset_url: str, body: bytes) -> None:
    create_store(dataset_url, "existing")
    headers = {"Content-Type": "application/json"}
    created = requests.post(
        f"{dataset_url}/dicomStores", params={"dicomStoreId": "s"}, data=body, headers=headers, timeout=30
    )
    assert_error(created, 400, "INVALID_ARGUMENT")
    patched = requests.patch(
        f"{dataset_url}/dicomStores/existing", params={"updateMask": "labels"}, data=body, headers=headers, timeout=30
    )
    assert_error(patched, 400, "INVALID_ARGUMENT")


def test_unknown_store_field_is_invalid_argument(dataset_url: str) -> None:
    assert_error(create_store(dataset_url, "s", {"colour": "blue"}), 400, "INVALID_ARGUMENT")


# ---- custom verbs, metrics, operations --------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "path",
    ["dicomStores/s:frobnicate", "dicomStores/s:getdicomstoremetrics", "dicomStores/s:", "operations/1:frobnicate"],
)
def test_unknown_custom_verb_is_not_found(dataset_url: str, method: str, path: str) -> None:
    create_store(dataset_url, "s")
    assert_error(requests.request(method, f"{dataset_url}/{path}", timeout=30), 404, "NOT_FOUND")


def test_unknown_verb_on_dataset_is_not_found(dataset_url: str) -> None:
    assert_error(requests.get(f"{dataset_url}:frobnicate", timeout=30), 404, "NOT_FOUND")


def test_post_to_a_store_without_a_verb_is_rejected(dataset_url: str) -> None:
    create_store(dataset_url, "s")
    response = requests.post(f"{dataset_url}/dicomStores/s", json={}, timeout=30)
    assert response.status_code in (404, 405), response.text
    assert "error" in response.json()


def test_store_metrics_count_studies_series_and_instances(store: Store) -> None:
    metrics = requests.get(f"{store.url}:getDICOMStoreMetrics", timeout=30).json()
    assert metrics == {
        "name": store.name,
        "studyCount": "0",
        "seriesCount": "0",
        "instanceCount": "0",
        "blobStorageSizeBytes": "0",
        "structuredStorageSizeBytes": "0",
    }
    for name in ("CT_small.dcm", "MR_small.dcm"):
        data = dicom_file(name).read_bytes()
        requests.post(
            f"{store.dicomweb}/studies", data=data, headers={"Content-Type": "application/dicom"}, timeout=30
        ).raise_for_status()
    metrics = requests.get(f"{store.url}:getDICOMStoreMetrics", timeout=30).json()
    assert (metrics["studyCount"], metrics["seriesCount"], metrics["instanceCount"]) == ("2", "2", "2")
    sizes = dicom_file("CT_small.dcm").stat().st_size + dicom_file("MR_small.dcm").stat().st_size
    assert metrics["blobStorageSizeBytes"] == str(sizes)
    assert int(metrics["structuredStorageSizeBytes"]) > 0


def test_other_requests_are_answered_while_a_store_delete_waits_for_the_index(store: Store) -> None:
    """DELETE of a store runs in the thread pool, not on the event loop: while it waits for the index's write
    lock (held here, the way a long import would hold it), another connection is still served."""
    if store.server.database_url:
        pytest.skip("holds SQLite's write lock; the PostgreSQL server has no such file")
    boundary = "delete-boundary"
    parts = []
    for _ in range(50):
        ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer)
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue() + b"\r\n")
    stowed = requests.post(
        f"{store.dicomweb}/studies",
        data=b"".join(parts) + f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    assert stowed.status_code == 200, stowed.text
    address = urlsplit(store.server.url)
    deleting = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    lock = sqlite3.connect(store.server.data_dir / "index.sqlite", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        deleting.request("DELETE", urlsplit(store.url).path)
        # Blocked on the loop, the server would answer nothing until the delete gave up on the lock.
        dataset = requests.get(store.server.api(store.dataset_name), timeout=30)
        assert dataset.status_code == 200, dataset.text
        assert requests.get(store.url, timeout=30).status_code == 200  # the delete is still waiting
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    response = deleting.getresponse()
    assert (response.status, response.read()) == (200, b"{}")
    deleting.close()
    assert_error(requests.get(store.url, timeout=30), 404, "NOT_FOUND")


def test_delete_study_operation_is_listed_and_readable(store: Store) -> None:
    data = dicom_file("CT_small.dcm").read_bytes()
    requests.post(
        f"{store.dicomweb}/studies", data=data, headers={"Content-Type": "application/dicom"}, timeout=30
    ).raise_for_status()
    study = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    started = requests.delete(f"{store.dicomweb}/studies/{study}", timeout=30).json()
    assert started["metadata"]["apiMethodName"].endswith("DeleteStudy")
    operation = wait_done(store.server, started)
    assert operation["name"] == started["name"]
    assert operation["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    assert operation["metadata"]["counter"] == {"success": "1"}
    assert requests.get(f"{store.server.api(operation['name'])}", timeout=30).json() == operation
    listed = requests.get(store.server.api(f"{store.dataset_name}/operations"), timeout=30).json()
    assert operation in listed["operations"]


def test_operation_list_pages(store: Store) -> None:
    studies = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        data = dicom_file(name).read_bytes()
        requests.post(
            f"{store.dicomweb}/studies", data=data, headers={"Content-Type": "application/dicom"}, timeout=30
        ).raise_for_status()
        studies.append(pydicom.dcmread(dicom_file(name)).StudyInstanceUID)
    started = [requests.delete(f"{store.dicomweb}/studies/{s}", timeout=30).json() for s in studies]
    deletes = [wait_done(store.server, operation) for operation in started]
    url = store.server.api(f"{store.dataset_name}/operations")
    everything = requests.get(url, timeout=30).json()
    assert everything["operations"][-2:] == deletes  # after the dataset's own create operation
    assert "nextPageToken" not in everything
    pages, token = [], None
    while True:
        page = requests.get(url, params={"pageSize": 1, **({"pageToken": token} if token else {})}, timeout=30).json()
        pages += page["operations"]
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == everything["operations"]


def test_unknown_operation_is_not_found(store: Store) -> None:
    for operation in ("999999", "abc"):
        url = store.server.api(f"{store.dataset_name}/operations/{operation}")
        assert_error(requests.get(url, timeout=30), 404, "NOT_FOUND")


# ---- never a 500 --------------------------------------------------------------------------------


ODD_REQUESTS = [
    ("GET", "datasets?pageSize=99999999999999999999999"),
    ("GET", "datasets/{ds}/operations?pageSize=-5"),
    ("GET", "datasets/{ds}/operations?pageSize=0"),
    ("GET", "datasets/{ds}/dicomStores?filter="),
    ("GET", "datasets/{ds}/dicomStores?filter=%00"),
    ("POST", "datasets?datasetId=%00"),
    ("POST", "datasets/{ds}/dicomStores?dicomStoreId=%C3%28"),
    ("PATCH", "datasets/{ds}/dicomStores/s?updateMask=%2C%2C"),
    ("PATCH", "datasets/{ds}/dicomStores/missing?updateMask=labels"),
    ("DELETE", "datasets/{ds}/dicomStores/missing"),
    ("GET", "datasets/{ds}/operations/99999999999999999999999999"),
    ("POST", "datasets/{ds}/operations/1:cancel"),
    ("GET", "datasets/{ds}/dicomStores/s:getDICOMStoreMetrics?alt=proto"),
    ("GET", "datasets?pageSize=18446744073709551616"),
    ("GET", "datasets/{ds}/dicomStores?pageSize=18446744073709551616"),
    ("GET", "datasets/{ds}/operations?pageSize=18446744073709551616"),
    ("GET", "datasets/{ds}/dicomStores?pageSize=-1"),
    ("GET", "datasets/{ds}/dicomStores?pageSize=abc"),
    ("GET", "datasets/" + "d" * 300),
    ("DELETE", "datasets/" + "d" * 300),
    ("GET", "datasets/{ds}/dicomStores/" + "s" * 300),
    ("GET", "datasets/{ds}/operations/" + "o" * 300),
    ("GET", "datasets/%00%01%1f"),
    ("GET", "datasets/{ds}/dicomStores/%00"),
    ("DELETE", "datasets/{ds}/dicomStores/%00%7f"),
    ("GET", "datasets/{ds}/operations/%00"),
    ("GET", "datasets/{ds}/dicomStores/s/dicomWeb/studies/%00"),
    ("GET", "datasets/{ds}/dicomStores/s/dicomWeb/studies/" + "1" * 300 + "/series"),
    ("GET", "datasets/{ds}/dicomStores/s/dicomWeb/studies/1.2/series/%00%0a/instances/" + "9" * 300),
    ("GET", "datasets/{ds}/dicomStores/s/dicomWeb/studies/1.2/series/3.4/instances/%00/metadata"),
    ("DELETE", "datasets/{ds}/dicomStores/s/dicomWeb/studies/%00"),
    ("GET", "datasets/{ds}/dicomStores/s/dicomWeb/studies?limit=18446744073709551616"),
    ("GET", "datasets/{ds}/dicomStores/s/dicomWeb/instances?offset=18446744073709551616"),
    ("GET", "datasets/{ds}/dicomStores/s/dicomWeb/series?PatientID=%00"),
    ("GET", "datasets/{ds}/dicomStores/s/dicomWeb/studies?StudyInstanceUID=%00"),
    ("POST", "datasets/{ds}/dicomStores/s/dicomWeb/studies/%00"),
    ("GET", "datasets/{ds}/operations?filter=%00"),
    ("GET", "datasets/{ds}/operations?filter=done=%00"),
    ("GET", "/v1/projects/%00/locations/l/datasets"),
    ("GET", "/v1/projects/%00/logs"),
    ("GET", "/v1/projects/p/logs?filter=%00"),
]


@pytest.mark.parametrize(("method", "path"), ODD_REQUESTS)
def test_odd_requests_are_answered_without_a_server_error(server: Server, method: str, path: str) -> None:
    project, dataset = unique("proj"), unique("ds")
    dataset_url = create_dataset(server, "v1", project, dataset)
    create_store(dataset_url, "s")
    url = (
        server.url + path
        if path.startswith("/")
        else f"{location_url(server, 'v1', project)}/{path.format(ds=dataset)}"
    )
    response = requests.request(method, url, json={}, timeout=30)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"]["code"] == response.status_code


def test_operation_list_filters_by_state_method_and_time(store: Store) -> None:
    requests.post(
        f"{store.dicomweb}/studies",
        data=dicom_file("CT_small.dcm").read_bytes(),
        headers={"Content-Type": "application/dicom"},
        timeout=30,
    ).raise_for_status()
    study = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True).StudyInstanceUID
    deleted = wait_done(store.server, requests.delete(f"{store.dicomweb}/studies/{study}", timeout=30).json())
    url = store.server.api(f"{store.dataset_name}/operations")

    def names(filter_text: str) -> list[str]:
        response = requests.get(url, params={"filter": filter_text}, timeout=30)
        assert response.status_code == 200, response.text
        return [op["name"] for op in response.json().get("operations", [])]

    everything = names("")
    assert len(everything) == 2  # the dataset's create operation, then the delete
    assert names('metadata.apiMethodName="google.cloud.healthcare.v1.dicomweb.service.DeleteStudy"') == [
        deleted["name"]
    ]
    assert names('metadata.apiMethodName:"DeleteStudy" AND done=true') == [deleted["name"]]
    assert names("done=false") == []
    assert names(f'metadata.createTime>="{deleted["metadata"]["createTime"]}"') == [deleted["name"]]
    assert names('metadata.createTime<"2000-01-01T00:00:00Z"') == []


@pytest.mark.parametrize("bad", ["done=maybe", "name=x", 'metadata.apiMethodName~"x"', "done>true"])
def test_operation_list_refuses_an_unsupported_filter(store: Store, bad: str) -> None:
    response = requests.get(store.server.api(f"{store.dataset_name}/operations"), params={"filter": bad}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
