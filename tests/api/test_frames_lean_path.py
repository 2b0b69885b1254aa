"""The lean path of single-instance WADO-RS: the one-query instance lookup answers as the general one did
(what is missing is named the same way), frames are sliced from the stored bytes, and rendered images come
from a per-process cache that never serves pixels an instance no longer has, even with several servers
sharing one index and blob store."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from conftest import Server, Store, dicom_file, make_store, start_server, stow
from dicomlake.dicom import pixels
from dicomlake.store.frames import Rendering, rendered_cache

FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def _instance_url(store: Store, ds: pydicom.Dataset) -> str:
    return f"{store.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _inverted(ds: pydicom.Dataset) -> bytes:
    """The same instance (same UIDs) with other pixels."""
    copy = pydicom.dcmread(io.BytesIO(_bytes(ds)))
    arr = copy.pixel_array
    copy.PixelData = (arr.max() - arr).astype(arr.dtype).tobytes()
    return _bytes(copy)


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _png(address: str) -> np.ndarray:
    response = requests.get(address + "/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _frame(address: str) -> bytes:
    response = requests.get(address + "/frames/1", headers={"Accept": "application/octet-stream"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def _error(response: requests.Response, code: int) -> str:
    assert response.status_code == code, response.text
    return str(response.json()["error"]["message"])


def test_rendered_image_follows_an_instance_deleted_and_stored_again(store: Store) -> None:
    original = pydicom.dcmread(dicom_file("MR_small.dcm"))
    stow(store, dicom_file("MR_small.dcm").read_bytes())
    address = _instance_url(store, original)
    first = _png(address)
    assert np.array_equal(_png(address), first)  # the second answer, from the cache, is the same image

    assert requests.delete(address, timeout=30).status_code == 200
    assert "not found" in _error(requests.get(address + "/rendered", timeout=30), 404)

    inverted = _inverted(original)
    stow(store, inverted)
    again = _png(address)
    assert not np.array_equal(again, first)
    assert np.array_equal(again, np.asarray(Image.open(io.BytesIO(pixels.render(inverted, 1, "image/png")))))


def test_servers_sharing_one_index_never_serve_a_stale_rendering(server: Server, store: Store) -> None:
    other = start_server(server.data_dir, server.database_url)
    try:
        original = pydicom.dcmread(dicom_file("MR_small.dcm"))
        stow(store, dicom_file("MR_small.dcm").read_bytes())
        here = _instance_url(store, original)
        there = here.replace(server.url, other.url)
        first = _png(there)
        assert np.array_equal(_png(there), first)  # cached by the other server now
        first_frame = _frame(there)

        assert requests.delete(here, timeout=30).status_code == 200
        _error(requests.get(there + "/rendered", timeout=30), 404)
        stow(store, _inverted(original))

        assert not np.array_equal(_png(there), first)
        assert np.array_equal(_png(there), _png(here))
        assert _frame(there) != first_frame and _frame(there) == _frame(here)
    finally:
        other.stop()


def test_missing_dataset_store_or_instance_named_as_by_the_general_lookup(store: Store) -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    stow(store, dicom_file("CT_small.dcm").read_bytes())
    address = _instance_url(store, ds)
    no_dataset = address.replace(f"/datasets/{store.dataset}/", "/datasets/nope/")
    no_store = address.replace(f"/dicomStores/{store.store}/", "/dicomStores/nope/")
    no_instance = address.rsplit("/", 1)[0] + "/1.2.3"
    for suffix in ("", "/frames/1", "/rendered", "/bulkdata/7FE00010"):
        assert "dataset" in _error(requests.get(no_dataset + suffix, timeout=30), 404)
        assert "DICOM store" in _error(requests.get(no_store + suffix, timeout=30), 404)
        assert "instance" in _error(requests.get(no_instance + suffix, timeout=30), 404)
        bad_uid = address.rsplit("/", 1)[0] + "/not-a-uid" + suffix
        assert "invalid URL" in _error(requests.get(bad_uid, timeout=30), 400)
        # A missing store is reported before a malformed UID, as on the routes that never took the lean path.
        assert "DICOM store" in _error(requests.get(no_store.rsplit("/", 1)[0] + "/x" + suffix, timeout=30), 404)


def test_frames_of_a_multiframe_instance_sliced_as_stored(store: Store) -> None:
    ds = pydicom.dcmread(dicom_file("emri_small.dcm"))
    stow(store, dicom_file("emri_small.dcm").read_bytes())
    response = requests.get(_instance_url(store, ds) + "/frames/10,1,5", headers={"Accept": FRAMES}, timeout=30)
    assert response.status_code == 200, response.text
    boundary = response.headers["content-type"].split("boundary=")[1].encode()
    payloads = [part.split(b"\r\n\r\n", 1)[1] for part in response.content.split(b"--" + boundary)[1:-1]]
    frames = [np.frombuffer(p.removesuffix(b"\r\n"), dtype="<u2").reshape(64, 64) for p in payloads]
    for frame, index in zip(frames, (9, 0, 4), strict=True):
        assert np.array_equal(frame, ds.pixel_array[index])


def test_rendered_cache_is_bounded_in_bytes_least_recent_out_first() -> None:
    cache = rendered_cache(max_bytes=1000)
    rendering = Rendering("image/jpeg", None, 90)
    for n in range(20):
        cache.put((f"key{n}", 1, rendering), bytes(60))
        assert cache.size <= 1000
    assert cache.size == 960 and len(cache) == 16
    assert cache.get(("key0", 1, rendering)) is None
    assert cache.get(("key4", 1, rendering)) is not None  # now the most recent
    cache.put(("key20", 1, rendering), bytes(60))
    assert cache.get(("key4", 1, rendering)) is not None and cache.get(("key5", 1, rendering)) is None
    cache.put(("huge", 1, rendering), bytes(100))  # over a sixteenth of the bound: not kept
    assert cache.get(("huge", 1, rendering)) is None


@pytest.mark.parametrize("viewport", ["32,32", "128,100"])
def test_rendered_cache_keeps_each_rendering_apart(store: Store, viewport: str) -> None:
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    other = make_store(store.server)
    stow(store, dicom_file("MR_small.dcm").read_bytes())
    stow(other, _inverted(ds))
    for target in (store, other):
        address = _instance_url(target, ds) + "/rendered"
        sized = requests.get(address, params={"viewport": viewport}, headers={"Accept": "image/png"}, timeout=30)
        plain = requests.get(address, headers={"Accept": "image/png"}, timeout=30)
        width, height = (int(v) for v in viewport.split(","))
        assert max(Image.open(io.BytesIO(sized.content)).size) == min(width, height)
        assert Image.open(io.BytesIO(plain.content)).size == (64, 64)
    assert not np.array_equal(_png(_instance_url(store, ds)), _png(_instance_url(other, ds)))


def test_an_instance_whose_blob_is_lost_is_404_on_every_instance_route(store: Store) -> None:
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1234.99.1"
    stow(store, _bytes(ds))
    (blob,) = (store.server.data_dir / "blobs").rglob(f"*{ds.SOPInstanceUID}.*.dcm")
    blob.unlink()
    address = _instance_url(store, ds)
    for suffix, accept in [
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=*'),
        ("", "application/dicom; transfer-syntax=*"),
        ("/frames/1", FRAMES),
        ("/rendered", "image/jpeg"),
    ]:
        assert "missing" in _error(requests.get(address + suffix, headers={"Accept": accept}, timeout=30), 404)
