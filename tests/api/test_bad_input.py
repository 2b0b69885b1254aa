"""No input makes the server answer 5xx: bad bodies, parameters and paths are a 4xx in Google's error shape,
an error the server did not foresee is a 500 in the same shape, and either way the keep-alive connection
stays usable for the client's next request."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import requests

from conftest import Server, Store, dicom_file

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


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
    # A real broken condition: the index names a blob that someone removed from the object store.
    (blob,) = store.server.data_dir.glob(f"blobs/**/{CT_SOP}.*.dcm")
    blob.unlink()
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
