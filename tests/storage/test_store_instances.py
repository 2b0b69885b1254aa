"""`instances.store_instances` in process, on a real SQLite index and blob folder."""

from __future__ import annotations

import warnings
from pathlib import Path

from conftest import dicom_file
from dicomlake.config import load
from dicomlake.services import open_services
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
