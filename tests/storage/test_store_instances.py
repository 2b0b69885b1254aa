"""`instances.store_instances` in process, on a real SQLite index and blob folder."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import sqlalchemy as sa
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from conftest import dicom_file
from dicomlake.config import load
from dicomlake.services import open_services
from dicomlake.storage.db import instances as db_instances
from dicomlake.store import catalog, instances


def test_a_batch_of_duplicates_only_writes_nothing(tmp_path: Path) -> None:
    services = open_services(load(data_dir=tmp_path))
    try:
        dataset = catalog.create_dataset(services.db, "p", "l", "d")
        store = catalog.create_store(services.db, dataset, "s", {})
        data = dicom_file("CT_small.dcm").read_bytes()
        (first,) = instances.store_instances(services.db, services.blobs, store, [data])
        assert isinstance(first, instances.Stored)
        blobs = sorted((tmp_path / "blobs").rglob("*.dcm"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an INSERT of no rows warns (SAWarning) before failing
            again = instances.store_instances(services.db, services.blobs, store, [data, data])
        assert [r.duplicate for r in again] == [True, True]
        assert sorted((tmp_path / "blobs").rglob("*.dcm")) == blobs
    finally:
        services.close()


def test_instances_stored_at_once_by_several_threads_share_commits_and_keep_their_own_outcomes(
    tmp_path: Path, monkeypatch
) -> None:
    services = open_services(load(data_dir=tmp_path))
    try:
        dataset = catalog.create_dataset(services.db, "p", "l", "d")
        store = catalog.create_store(services.db, dataset, "s", {})
        datas = _fresh_mr_instances(160)
        datas[1] = datas[0]  # sent twice, by two threads: kept once
        datas[5] = b"not DICOM"
        batches = []
        store_instances = instances.store_instances

        def counted(*args, **kwargs):
            batches.append(len(args[3]))
            return store_instances(*args, **kwargs)

        monkeypatch.setattr(instances, "store_instances", counted)
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda data: instances.store_instance(services.db, services.blobs, store, data), datas)
            )
        assert sum(batches) == len(datas) and max(batches) > 1  # shared commits
        assert [type(r) for r in results].count(instances.Stored) == len(datas) - 2
        assert sorted(isinstance(r, instances.Failed) and r.duplicate for r in results[:2]) == [False, True]
        assert isinstance(results[5], instances.Failed) and results[5].reason == instances.CANNOT_UNDERSTAND
        with services.db.read() as conn:
            held = conn.execute(sa.select(sa.func.count()).select_from(db_instances)).scalar_one()
        assert held == len(datas) - 2
        assert len(list((tmp_path / "blobs").rglob("*.dcm"))) == held
    finally:
        services.close()


def test_an_instance_whose_store_raises_fails_alone_not_the_instances_batched_with_it(
    tmp_path: Path, monkeypatch
) -> None:
    services = open_services(load(data_dir=tmp_path))
    try:
        dataset = catalog.create_dataset(services.db, "p", "l", "d")
        store = catalog.create_store(services.db, dataset, "s", {})
        datas = _fresh_mr_instances(64)
        poisoned = datas[7]
        store_instances = instances.store_instances

        def failing(*args, **kwargs):
            if any(data is poisoned for data in args[3]):
                raise OSError("the disk went away for this one")
            return store_instances(*args, **kwargs)

        monkeypatch.setattr(instances, "store_instances", failing)

        def store_one(data: bytes) -> object:
            try:
                return instances.store_instance(services.db, services.blobs, store, data)
            except OSError as exc:
                return exc

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(store_one, datas))
        assert isinstance(results[7], OSError)
        assert all(isinstance(r, instances.Stored) for i, r in enumerate(results) if i != 7)
    finally:
        services.close()


def _fresh_mr_instances(count: int) -> list[bytes]:
    """`count` Part 10 copies of MR_small.dcm, each with a SOP Instance UID of its own."""
    source = pydicom.dcmread(dicom_file("MR_small.dcm"))
    datas = []
    for _ in range(count):
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        buffer = DicomBytesIO()
        source.save_as(buffer, enforce_file_format=True)
        datas.append(buffer.getvalue())
    return datas
