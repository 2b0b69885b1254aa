"""dicomStores.getDICOMStoreMetrics through google-api-python-client (the method is in the Healthcare v1
discovery document it ships): counts of studies, series and instances and the two sizes, as int64 strings,
following stores and deletes; other stores' instances are not counted."""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
import requests
from googleapiclient.errors import HttpError
from pydicom.uid import generate_uid

from conftest import Server, Store, dicom_file, make_store, stow, wait_all_done


def metrics(healthcare: Any, store: Store) -> dict[str, str]:
    return healthcare.projects().locations().datasets().dicomStores().getDICOMStoreMetrics(name=store.name).execute()


def another_instance(name: str) -> bytes:
    """A file's image as one more instance of its series."""
    ds = pydicom.dcmread(dicom_file(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_an_empty_store_has_zero_of_everything_as_strings(healthcare: Any, store: Store) -> None:
    assert metrics(healthcare, store) == {
        "name": store.name,
        "studyCount": "0",
        "seriesCount": "0",
        "instanceCount": "0",
        "structuredStorageSizeBytes": "0",
        "blobStorageSizeBytes": "0",
    }


def test_metrics_count_what_is_stored_and_what_is_deleted(healthcare: Any, server: Server, store: Store) -> None:
    files = [dicom_file("CT_small.dcm").read_bytes(), another_instance("CT_small.dcm")]
    files.append(dicom_file("MR_small.dcm").read_bytes())
    for data in files:
        stow(store, data)
    stow(make_store(server), another_instance("MR_small.dcm"))  # another store's instance counts there only

    found = metrics(healthcare, store)
    assert (found["studyCount"], found["seriesCount"], found["instanceCount"]) == ("2", "2", "3")
    assert found["blobStorageSizeBytes"] == str(sum(len(d) for d in files))
    # The structured size is that of the DICOM JSON kept for each instance: /metadata, without bulk data.
    structured = int(found["structuredStorageSizeBytes"])
    assert 3 * 1000 < structured < sum(len(d) for d in files)

    mr = pydicom.dcmread(dicom_file("MR_small.dcm")).StudyInstanceUID
    requests.delete(f"{store.dicomweb}/studies/{mr}", timeout=30).raise_for_status()
    wait_all_done(store)
    after = metrics(healthcare, store)
    assert (after["studyCount"], after["seriesCount"], after["instanceCount"]) == ("1", "1", "2")
    assert after["blobStorageSizeBytes"] == str(len(files[0]) + len(files[1]))
    assert 0 < int(after["structuredStorageSizeBytes"]) < structured


def test_metrics_of_a_missing_store_are_not_found(healthcare: Any, store: Store) -> None:
    with pytest.raises(HttpError) as raised:
        metrics(healthcare, Store(store.server, store.project, store.location, store.dataset, "missing"))
    assert raised.value.resp.status == 404


def test_metrics_are_a_get_only(store: Store) -> None:
    response = requests.post(f"{store.url}:getDICOMStoreMetrics", json={}, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"
