"""The blob store behind its one interface: a local directory (the default) and a URL-addressed store."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomlake.storage.blobs import BlobStore, NotFoundError
from dicomlake.storage.journal import Journal


@pytest.fixture(params=["local", "memory"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    url = (tmp_path / "blobs").as_uri() if request.param == "local" else "memory:///"
    return BlobStore(url, Journal(tmp_path / "journal"))


def test_objects_round_trip_byte_exact(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 4099
    blobs.put("1/study/series/sop.abc.dcm", data)
    assert blobs.get("1/study/series/sop.abc.dcm") == data
    assert b"".join(blobs.stream("1/study/series/sop.abc.dcm", chunk_size=1000)) == data


def test_missing_objects_are_not_found_and_deleting_them_is_harmless(blobs: BlobStore) -> None:
    with pytest.raises((NotFoundError, FileNotFoundError)):
        blobs.get("nope.dcm")
    blobs.delete("nope.dcm")
    blobs.put("k.dcm", b"x")
    blobs.discard("k.dcm")
    with pytest.raises((NotFoundError, FileNotFoundError)):
        blobs.get("k.dcm")


def test_discard_removes_what_an_interrupted_local_write_left(tmp_path: Path) -> None:
    blobs = BlobStore((tmp_path / "blobs").as_uri(), Journal(tmp_path / "journal"))
    blobs.put("1/a/b/c.u.dcm", b"whole")
    staged = tmp_path / "blobs" / "1" / "a" / "b" / "c.u.dcm#3"
    staged.write_bytes(b"part")
    blobs.discard("1/a/b/c.u.dcm")
    assert list((tmp_path / "blobs" / "1" / "a" / "b").iterdir()) == []
