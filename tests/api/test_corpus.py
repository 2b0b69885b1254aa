"""Every DICOM file that pydicom, pydicom-data and highdicom ship goes in through STOW and comes back
byte-exact, and its /metadata matches an independent DICOM JSON encoder (DCMTK's dcm2json, or
pydicom where DCMTK cannot convert the character set), bulk data aside."""

from __future__ import annotations

import io
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
import requests

from conftest import Store, all_dicom_files, make_store
from dicomlake.dicom.uids import InvalidUid, normalize_uid

# Files whose value lengths run past the end of the file: a correct store refuses them.
KNOWN_TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"}


def _expected_uids(path: Path) -> tuple[str, str, str] | None:
    """The UID triple pydicom reads from a storable file, or None for a file the store must refuse."""
    if path.name in KNOWN_TRUNCATED:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            uids = (ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID"))
        except Exception:
            return None
    if not all(uids):
        return None
    try:
        return tuple(normalize_uid(str(u)) for u in uids)  # type: ignore[return-value]
    except InvalidUid:
        return None  # bad_sequence.dcm has hex digests for UIDs


def _multipart(datas: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in datas)
        + f"--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.fixture(scope="module")
def corpus(server) -> tuple[Store, dict[Path, dict[str, Any]]]:  # type: ignore[no-untyped-def]
    """Store every file one request at a time, in a fixed order; record each file's outcome."""
    store = make_store(server)
    outcomes: dict[Path, dict[str, Any]] = {}
    for path in all_dicom_files():
        body, content_type = _multipart([path.read_bytes()])
        response = requests.post(
            f"{store.dicomweb}/studies",
            data=body,
            timeout=120,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
        assert response.status_code in (200, 409), (path.name, response.status_code, response.text)
        outcomes[path] = {"status": response.status_code, "body": response.json()}
    return store, outcomes


def test_every_storable_file_is_stored_once_and_others_fail_with_a_reason(corpus) -> None:  # type: ignore[no-untyped-def]
    _, outcomes = corpus
    first_owner: dict[tuple[str, str, str], Path] = {}
    stored = 0
    for path, outcome in outcomes.items():
        uids = _expected_uids(path)
        if uids is None:
            assert outcome["status"] == 409, path.name
            detail = outcome["body"]["00081198"]["Value"][0]["00091097"]["Value"][0]
            assert detail and "already exists" not in detail, (path.name, detail)
        elif uids in first_owner:
            assert outcome["status"] == 409, path.name
            detail = outcome["body"]["00081198"]["Value"][0]["00091097"]["Value"][0]
            assert "already exists" in detail
            assert outcome["body"]["00081198"]["Value"][0]["00081197"]["Value"] == [0x0110]
        else:
            assert outcome["status"] == 200, (path.name, outcome["body"])
            first_owner[uids] = path
            stored += 1
    assert stored > 150


def _first_copies(outcomes: dict[Path, dict[str, Any]]) -> Iterator[tuple[Path, tuple[str, str, str]]]:
    """Each stored file with its UID triple, skipping the later files that share a triple."""
    seen = set()
    for path in outcomes:
        uids = _expected_uids(path)
        if uids is not None and uids not in seen:
            seen.add(uids)
            yield path, uids


def test_stored_files_come_back_byte_exact(corpus) -> None:  # type: ignore[no-untyped-def]
    store, outcomes = corpus
    for path, uids in _first_copies(outcomes):
        url = f"{store.dicomweb}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
        response = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=60)
        assert response.status_code == 200, path.name
        assert response.content == path.read_bytes(), path.name


def _normalise(value: Any) -> Any:
    """Fold the differences DICOM JSON allows between encoders: bulk data form, empty values, number types,
    and surrounding spaces that some encoders keep."""
    if isinstance(value, dict):
        if "BulkDataURI" in value or "InlineBinary" in value or len(value.get("Value", [])) > 512:
            return "<bulk>"  # the conformance statement makes long numeric values bulk data
        out = {}
        for key, item in value.items():
            if key == "vr" and isinstance(item, str) and item == "UN":
                continue
            normal = _normalise(item)
            if normal not in (None, [], {}):
                out[key] = normal
        return out or None
    if isinstance(value, list):
        items = [_normalise(v) for v in value]
        return items if any(i is not None for i in items) else None
    if isinstance(value, str):
        text = value.strip(" \x00").rstrip("^")  # empty trailing person-name components
        if text:
            try:
                number = float(text)
                return int(number) if number.is_integer() else round(number, 6)
            except ValueError:
                return text
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 6)
    return value


def _reference_json(path: Path) -> dict[str, Any]:
    if shutil.which("dcm2json"):
        result = subprocess.run(["dcm2json", "-fc", str(path)], capture_output=True, timeout=60)
        if result.returncode == 0 and result.stdout.strip():
            reference = orjson.loads(result.stdout)
            # dcm2json converts text to UTF-8 and says so; the values are what we compare.
            reference.pop("00080005", None)
            return reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(path.read_bytes()), force=True)
        return ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _e: "bulk")


def _comparable(metadata: dict[str, Any]) -> dict[str, Any]:
    # Group 0002 belongs to the file, not the data set; group lengths describe an encoding; private
    # elements are opaque (UN) to us.
    return {
        k: v
        for k, v in metadata.items()
        if not k.startswith("0002") and not k.endswith("0000") and not int(k[:4], 16) % 2
    }


def test_metadata_equals_an_independent_encoder_element_for_element(corpus) -> None:  # type: ignore[no-untyped-def]
    store, outcomes = corpus
    compared = 0
    for path, uids in _first_copies(outcomes):
        url = f"{store.dicomweb}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}/metadata"
        ours = requests.get(url, timeout=60).json()[0]
        reference = _reference_json(path)
        if "00080005" not in reference:
            ours.pop("00080005", None)
        mine, theirs = _normalise(_comparable(ours)), _normalise(_comparable(reference))
        mine, theirs = mine or {}, theirs or {}
        differing = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        assert not differing, (
            path.name,
            [(k, str(mine.get(k))[:120], str(theirs.get(k))[:120]) for k in differing[:3]],
        )
        compared += 1
    assert compared > 150


def test_bulk_data_uris_in_metadata_resolve(corpus) -> None:  # type: ignore[no-untyped-def]
    store, outcomes = corpus
    for path in outcomes:
        if path.name != "CT_small.dcm":
            continue
        uids = _expected_uids(path)
        url = f"{store.dicomweb}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}/metadata"
        pixel = requests.get(url, timeout=60).json()[0]["7FE00010"]
        response = requests.get(pixel["BulkDataURI"], headers={"Accept": "application/octet-stream"}, timeout=60)
        assert response.status_code == 200
        assert response.content == pydicom.dcmread(path).PixelData
