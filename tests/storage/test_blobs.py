"""The blob store behind its one interface: a local directory (the default) and a URL-addressed store;
keys that cannot leave the root, and what a STOW writes into it."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest
import requests

from conftest import Store, dicom_file
from dicomlake.storage.blobs import BlobStore, NotFoundError, UnsafeKey, check_key
from dicomlake.storage.journal import Journal


@pytest.fixture(params=["local", "memory"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    url = (tmp_path / "root" / "blobs").as_uri() if request.param == "local" else "memory:///"
    return BlobStore(url, Journal(tmp_path / "journal"))


def test_objects_round_trip_byte_exact(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 4099
    blobs.put("1/study/series/sop.abc.dcm", data)
    assert blobs.get("1/study/series/sop.abc.dcm") == data
    assert b"".join(blobs.stream("1/study/series/sop.abc.dcm", chunk_size=1000)) == data


def test_a_batch_of_objects_is_written_whole_in_new_and_existing_folders(blobs: BlobStore) -> None:
    items = [
        (f"1/{study}/{series}/{n}.x.dcm", bytes([n]) * (n + 1)) for study in "ab" for series in "cd" for n in range(3)
    ]
    blobs.put("1/a/c/first.x.dcm", b"already there")

    blobs.put_many(items)

    assert [blobs.get(key) for key, _ in items] == [data for _, data in items]


def test_relaxed_store_round_trips_too(tmp_path: Path) -> None:
    blobs = BlobStore((tmp_path / "blobs").as_uri(), Journal(tmp_path / "journal"), durable=False)
    blobs.put_many([("1/a/b/c.u.dcm", b"one"), ("1/a/b/d.u.dcm", b"two")])
    assert blobs.get("1/a/b/c.u.dcm") + blobs.get("1/a/b/d.u.dcm") == b"onetwo"


def test_missing_objects_are_not_found_and_deleting_them_is_harmless(blobs: BlobStore) -> None:
    with pytest.raises(NotFoundError):
        blobs.get("nope.dcm")
    with pytest.raises(NotFoundError):
        blobs.stream("nope.dcm")
    blobs.delete("nope.dcm")
    blobs.put("k.dcm", b"x")
    blobs.discard("k.dcm")
    with pytest.raises(NotFoundError):
        blobs.get("k.dcm")


def test_discard_removes_what_an_interrupted_local_write_left(tmp_path: Path) -> None:
    blobs = BlobStore((tmp_path / "blobs").as_uri(), Journal(tmp_path / "journal"))
    blobs.put("1/a/b/c.u.dcm", b"whole")
    staged = tmp_path / "blobs" / "1" / "a" / "b" / "c.u.dcm#3"
    staged.write_bytes(b"part")
    blobs.discard("1/a/b/c.u.dcm")
    assert list((tmp_path / "blobs" / "1" / "a" / "b").iterdir()) == []


UNSAFE_KEYS = {
    "empty": "",
    "absolute": "/tmp/x.dcm",
    "parent": "1/../../../x.dcm",
    "only parent": "..",
    "dot segment": "1/./x.dcm",
    "empty segment": "1//x.dcm",
    "trailing slash": "1/x/",
    "backslash": "1\\..\\..\\x.dcm",
    "NUL": "1/x\x00.dcm",
    "newline": "1/x\n.dcm",
    "escape": "1/x\x1b.dcm",
    "delete": "1/x\x7f.dcm",
}


@pytest.mark.parametrize("case", UNSAFE_KEYS)
def test_unsafe_keys_are_refused_by_every_operation_and_create_nothing(
    blobs: BlobStore, tmp_path: Path, case: str
) -> None:
    key = UNSAFE_KEYS[case]
    with pytest.raises(UnsafeKey):
        check_key(key)
    for call in (
        lambda: blobs.put(key, b"x"),
        lambda: blobs.put_many([("1/fine.dcm", b"x"), (key, b"x")]),
        lambda: blobs.get(key),
        lambda: blobs.stream(key),
        lambda: blobs.delete(key),
        lambda: blobs.discard(key),
    ):
        with pytest.raises(UnsafeKey):
            call()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "journal" not in p.parts]
    assert not Path("/tmp/x.dcm").exists()


@pytest.mark.parametrize("key", ["1/2.3/4.5/6.7.0123abcd.dcm", "a", "x..y/z.dcm", "1/.hidden"])
def test_plain_relative_keys_are_safe(key: str) -> None:
    assert check_key(key) == key


# ---- what a STOW writes ------------------------------------------------------------------------


def stow_and_find_blob(store: Store, name: str) -> tuple[pydicom.Dataset, Path]:
    """STOW a test file to the server's local blob directory (the same for either index, so SQLite only);
    its data set and the one blob file the STOW added."""
    if store.server.database_url:
        pytest.skip("the local blob directory is the same whichever index the server uses")
    blobs = store.server.data_dir / "blobs"
    before = set(blobs.rglob("*.dcm"))
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=dicom_file(name).read_bytes(),
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (blob,) = set(blobs.rglob("*.dcm")) - before
    return pydicom.dcmread(dicom_file(name)), blob


def test_a_stored_instance_is_kept_under_its_uids_and_a_random_128_bit_suffix(store: Store) -> None:
    ds, blob = stow_and_find_blob(store, "CT_small.dcm")

    pk, study, series, name = blob.relative_to(store.server.data_dir / "blobs").parts
    assert pk.isdigit() and (study, series) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert re.fullmatch(re.escape(ds.SOPInstanceUID) + r"\.[0-9a-f]{32}\.dcm", name)
    assert not list((store.server.data_dir / "tmp").glob(f"*{ds.SOPInstanceUID}*"))


def test_an_instance_whose_blob_is_gone_answers_404_not_500(store: Store) -> None:
    ds, blob = stow_and_find_blob(store, "MR_small.dcm")
    blob.unlink()
    study = f"{store.dicomweb}/studies/{ds.StudyInstanceUID}"
    instance = f"{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

    for url, accept in [
        (instance, "application/dicom; transfer-syntax=*"),
        (instance, "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"),
        (f"{instance}/frames/1", "application/octet-stream; transfer-syntax=*"),
        (f"{instance}/rendered", "image/png"),
        (study, 'multipart/related; type="application/dicom"; transfer-syntax=*'),
        (f"{study}/series/{ds.SeriesInstanceUID}", 'multipart/related; type="application/dicom"; transfer-syntax=*'),
        (instance, 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'),
    ]:
        response = requests.get(url, headers={"Accept": accept}, timeout=30)
        assert response.status_code == 404, (url, accept, response.status_code, response.text[:200])
        assert response.json()["error"]["status"] == "NOT_FOUND"
        assert "missing" in response.json()["error"]["message"]
