"""No input makes the server answer 5xx: bad bodies, parameters and paths are a 4xx in Google's error shape,
an error the server did not foresee is a 500 in the same shape, and either way the keep-alive connection
stays usable for the client's next request."""

from __future__ import annotations

import http.client
import io
import json
import uuid
from urllib.parse import urlsplit

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from conftest import Server, Store, dicom_file, make_store
from dicomlake.dicom.parse import MAX_SEQUENCE_DEPTH

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
JSON_ACCEPT = {"Accept": "application/dicom+json"}


class Connection:
    """One keep-alive HTTP connection; `same_socket` tells whether every request so far travelled on it."""

    def __init__(self, server: Server) -> None:
        address = urlsplit(server.url)
        self.conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        self.conn.connect()
        self.sock = self.conn.sock

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        self.conn.request(method, urlsplit(url)._replace(scheme="", netloc="").geturl(), body, headers or {})
        response = self.conn.getresponse()
        return response.status, response.read()

    @property
    def same_socket(self) -> bool:
        return self.conn.sock is self.sock

    def close(self) -> None:
        self.conn.close()


def error_of(status: int, body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    return error


def stow_ct(store: Store) -> None:
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=dicom_file("CT_small.dcm").read_bytes(),
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


# ---- unexpected errors ------------------------------------------------------------------------


def test_an_internal_error_answers_in_the_error_shape_and_keeps_the_connection(store: Store) -> None:
    stow_ct(store)
    # A real broken condition: where the index says the blob is, the object store holds a directory.
    (blob,) = store.server.data_dir.glob(f"blobs/**/{CT_SOP}.*.dcm")
    blob.unlink()
    blob.mkdir()
    conn = Connection(store.server)
    try:
        url = f"{store.dicomweb}/studies/{CT_STUDY}/series/{CT_SERIES}/instances/{CT_SOP}"
        status, body = conn.request("GET", url, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert status == 500
        assert error_of(status, body)["status"] == "INTERNAL"
        status, body = conn.request("GET", f"{store.dicomweb}/studies", headers={"Accept": "application/dicom+json"})
        assert status == 200
        assert [study["0020000D"]["Value"] for study in json.loads(body)] == [[CT_STUDY]]
        assert conn.same_socket
    finally:
        conn.close()


# ---- STOW ----------------------------------------------------------------------------------------

BOUNDARY = "bad-input-boundary"


def multipart(*payloads: bytes) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + payload + b"\r\n" for payload in payloads
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


def ct_with_nested_sequences(levels: int) -> tuple[bytes, str]:
    """CT_small as a new instance whose ContentSequence nests `levels` deep; (bytes, SOPInstanceUID)."""
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    inner = Dataset()
    inner.TextValue = "innermost"
    for _ in range(levels - 1):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = Sequence([inner])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue(), ds.SOPInstanceUID


def test_stow_part_nested_too_deep_fails_alone_and_the_other_parts_are_stored(store: Store) -> None:
    deep, deep_uid = ct_with_nested_sequences(150)
    fine, fine_uid = ct_with_nested_sequences(MAX_SEQUENCE_DEPTH)
    ct = dicom_file("CT_small.dcm").read_bytes()
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=multipart(ct, deep, fine),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    assert response.status_code == 409, response.text
    answer = response.json()
    (failed,) = answer["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert f"nested more than {MAX_SEQUENCE_DEPTH} levels deep" in failed["00091097"]["Value"][0]
    stored = {item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]}
    assert stored == {CT_SOP, fine_uid}
    found = requests.get(f"{store.dicomweb}/instances", headers={"Accept": "application/dicom+json"}, timeout=60)
    assert {item["00080018"]["Value"][0] for item in found.json()} == {CT_SOP, fine_uid}
    assert deep_uid not in found.text
    metadata = requests.get(
        f"{store.dicomweb}/studies/{CT_STUDY}/series/{CT_SERIES}/instances/{fine_uid}/metadata", timeout=60
    )
    assert metadata.status_code == 200
    item = metadata.json()[0]
    for _ in range(MAX_SEQUENCE_DEPTH - 1):
        item = item["0040A730"]["Value"][0]
    assert item["0040A730"]["Value"][0]["0040A160"]["Value"] == ["innermost"]
    full = requests.get(
        f"{store.dicomweb}/instances", params={"includefield": "all"}, headers={"Accept": "application/dicom+json"}
    )
    assert full.status_code == 200


# ---- JSON bodies --------------------------------------------------------------------------------

# (method, path under projects/P/locations/L/, with {ds} and {store} naming ones that exist, {new} a fresh ID)
BODY_ROUTES = {
    "datasets.create": ("POST", "datasets?datasetId={new}"),
    "dicomStores.create": ("POST", "datasets/{ds}/dicomStores?dicomStoreId={new}"),
    "dicomStores.patch": (
        "PATCH",
        "datasets/{ds}/dicomStores/{store}?updateMask=labels,streamConfigs,notificationConfig",
    ),
    "dicomStores.import": ("POST", "datasets/{ds}/dicomStores/{store}:import"),
    "dicomStores.export": ("POST", "datasets/{ds}/dicomStores/{store}:export"),
}


def nested_json(levels: int) -> bytes:
    """Within orjson's own limit of 1,024 levels but past what it can write back (255): was a 500 when stored."""
    return b'{"notificationConfig": ' + b'{"a": ' * levels + b"1" + b"}" * levels + b"}"


NOT_AN_OBJECT = {
    "not JSON": b"nope",
    "cut short": b'{"labels": ',
    "not UTF-8": b'{"labels": "\xff"}',
    "number": b"5",
    "array": b"[]",
    "string": b'"x"',
    "null": b"null",
    "10,000 nested [": b"[" * 10_000,
    "10,000 nested {": b'{"a":' * 10_000,
    "objects 100 deep": nested_json(100),
    "objects 600 deep": nested_json(600),
    "2 MiB": b'{"labels": {"a": "' + b"x" * (2 << 20) + b'"}}',
}

WRONG_FIELDS = {
    "dicomStores.create": [
        {"labels": 5},
        {"labels": []},
        {"labels": {"a": 5}},
        {"labels": {"a": None}},
        {"labels": {"A": "b"}},
        {"streamConfigs": {}},
        {"streamConfigs": [5]},
        {"streamConfigs": [{"bigqueryDestination": 5}]},
        {"streamConfigs": [{"bigqueryDestination": {"tableUri": 5}}]},
        {"streamConfigs": [{"bigqueryDestination": {"tableUri": "bq://p.d.t", "writeDisposition": 5}}]},
        {"notificationConfig": 5},
        {"notificationConfigs": 5},
        {"unknownField": 1},
    ],
    "dicomStores.import": [
        {},
        {"gcsSource": None},
        {"gcsSource": 5},
        {"gcsSource": {}},
        {"gcsSource": {"uri": 5}},
        {"gcsSource": {"uri": ["gs://b/*"]}},
        {"gcsSource": {"uri": None}},
        {"gcsSource": {"uri": "not-a-uri"}},
    ],
    "dicomStores.export": [
        {},
        {"gcsDestination": 5},
        {"gcsDestination": {"uriPrefix": 5}},
        {"gcsDestination": {"uriPrefix": None}},
        {"gcsDestination": {"uriPrefix": "gs://b/x", "mimeType": 5}},
        {"bigqueryDestination": 5},
        {"bigqueryDestination": {"tableUri": 5}},
        {"bigqueryDestination": {"tableUri": "bq://p.d.t", "force": "yes"}},
        {"gcsDestination": {"uriPrefix": "gs://b/x"}, "bigqueryDestination": {"tableUri": "bq://p.d.t"}},
    ],
}
WRONG_FIELDS["dicomStores.patch"] = [b for b in WRONG_FIELDS["dicomStores.create"] if "notificationConfigs" not in b]

JSON_BODY = {"Content-Type": "application/json"}
BODY_CASES = [
    pytest.param(route, body, id=f"{route}-{name}") for route in BODY_ROUTES for name, body in NOT_AN_OBJECT.items()
] + [
    pytest.param(route, json.dumps(body).encode(), id=f"{route}-{json.dumps(body)}")
    for route, bodies in WRONG_FIELDS.items()
    for body in bodies
]


@pytest.fixture(scope="module")
def body_target(server: Server) -> Store:
    return make_store(server)


@pytest.mark.parametrize(("route", "body"), BODY_CASES)
def test_a_bad_json_body_is_400_and_the_connection_stays(body_target: Store, route: str, body: bytes) -> None:
    method, path = BODY_ROUTES[route]
    target = body_target
    fresh = f"x{uuid.uuid4().hex[:12]}"
    base = target.server.api(f"projects/{target.project}/locations/{target.location}/")
    conn = Connection(target.server)
    try:
        status, answer = conn.request(
            method, base + path.format(ds=target.dataset, store=target.store, new=fresh), body, JSON_BODY
        )
        assert status in (400, 413), answer[:300]
        error_of(status, answer)
        status, answer = conn.request("GET", target.url)
        assert status == 200
        assert conn.same_socket
    finally:
        conn.close()
    # Nothing was created or changed by the refused request, and no operation started.
    assert requests.get(f"{base}datasets/{fresh}", timeout=30).status_code == 404
    assert requests.get(f"{base}datasets/{target.dataset}/dicomStores/{fresh}", timeout=30).status_code == 404
    assert requests.get(target.url, timeout=30).json() == {"name": target.name}
    operations = requests.get(target.server.api(f"{target.dataset_name}/operations"), timeout=30).json()
    assert [o["metadata"]["apiMethodName"].rsplit(".", 1)[1] for o in operations["operations"]] == ["CreateDataset"]


# ---- paths and parameters -----------------------------------------------------------------------

LONG = "1" * 300
# (method, path under the store's dicomWeb root or, starting with "~", under its dataset), each answered 4xx
BAD_REQUESTS = [
    ("GET", f"/studies/{LONG}/series"),
    ("GET", f"/studies/{CT_STUDY}/series/{LONG}/instances"),
    ("GET", f"/studies/{CT_STUDY}/series/{CT_SERIES}/instances/{LONG}"),
    ("GET", f"/studies/{CT_STUDY}/series/{CT_SERIES}/instances/{LONG}/metadata"),
    ("GET", "/studies/1.2.%00/metadata"),
    ("GET", "/studies/..%2F..%2Fetc/series"),
    ("DELETE", "/studies/%01%02"),
    ("POST", f"/studies/{LONG}"),
    ("GET", "/studies?PatientID=%00"),
    ("GET", "/studies?limit=abc"),
    ("GET", "/instances?offset=-1"),
    ("GET", "/instances?offset=18446744073709551616"),
    ("GET", "/studies?StudyDate=2020"),
    ("GET", "/studies?NotAKeyword=1"),
    ("GET", "~/dicomStores?filter=" + "(" * 200 + "labels.a=b" + ")" * 200),
    ("GET", "~/dicomStores?filter=" + "NOT%20" * 1000 + "labels.a=b"),
    ("GET", "~/dicomStores?pageSize=-1"),
    ("GET", "~/dicomStores?pageSize=abc"),
    ("GET", "~/operations?pageSize=abc"),
    ("GET", "~/dicomStores/" + "s" * 300),
    ("GET", "~/dicomStores/%00"),
    ("GET", "~/operations/" + "o" * 300),
    ("GET", "~/operations/%00%1f"),
]


def test_bad_paths_and_parameters_are_4xx_on_one_kept_connection(store: Store) -> None:
    stow_ct(store)
    dataset = store.server.api(store.dataset_name)
    conn = Connection(store.server)
    try:
        for method, path in BAD_REQUESTS:
            url = dataset + path[1:] if path.startswith("~") else store.dicomweb + path
            status, body = conn.request(method, url, headers={"Accept": "application/dicom+json"})
            assert 400 <= status < 500, (method, path, status, body[:200])
            error_of(status, body)
        # The 500s, now answered: huge page sizes are capped, ModalitiesInStudy matches at every level.
        status, body = conn.request("GET", dataset + "/dicomStores?pageSize=18446744073709551616")
        assert status == 200 and [s["name"] for s in json.loads(body)["dicomStores"]] == [store.name]
        for path in ("/series", f"/studies/{CT_STUDY}/series", f"/studies/{CT_STUDY}/instances", "/instances"):
            status, body = conn.request("GET", f"{store.dicomweb}{path}?ModalitiesInStudy=CT", headers=JSON_ACCEPT)
            assert status == 200, body[:200]
            assert [r["0020000D"]["Value"] for r in json.loads(body)] == [[CT_STUDY]]
            status, body = conn.request("GET", f"{store.dicomweb}{path}?ModalitiesInStudy=MR", headers=JSON_ACCEPT)
            assert (status, body) == (204, b"")
        assert conn.same_socket
    finally:
        conn.close()
