"""STOW-RS with raw HTTP: single-part and multipart bodies, JSON and XML responses, duplicates, bad parts,
malformed requests (always a 4xx in Google's shape, never a 500, never a loss) and large bodies."""

from __future__ import annotations

import hashlib
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import Store, dicom_file

JSON = {"Accept": "application/dicom+json"}
BOUNDARY = "dicomlake-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000

CT = "CT_small.dcm"
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def multipart(*payloads: bytes, boundary: str = BOUNDARY, part_type: str = "application/dicom") -> bytes:
    body = b""
    for payload in payloads:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + payload + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def post(
    store: Store,
    body: bytes,
    content_type: str = MULTIPART,
    path: str = "/studies",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.post(
        f"{store.dicomweb}{path}",
        data=body,
        headers={"Content-Type": content_type, **(JSON if headers is None else headers)},
        timeout=120,
    )


def instance_url(store: Store, study: str, series: str, sop: str) -> str:
    return f"{store.dicomweb}/studies/{study}/series/{series}/instances/{sop}"


def retrieve_as_stored(store: Store, study: str, series: str, sop: str) -> requests.Response:
    return requests.get(
        instance_url(store, study, series, sop), headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=120
    )


def instance_count(store: Store) -> int:
    metrics = requests.get(f"{store.url}:getDICOMStoreMetrics", timeout=30).json()
    return int(metrics["instanceCount"])


def values(item: dict, tag: str) -> list:
    return item.get(tag, {}).get("Value", [])


def failures(response: requests.Response) -> list[dict]:
    return values(response.json(), "00081198")


def referenced(response: requests.Response) -> list[dict]:
    return values(response.json(), "00081199")


def encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_new_uids(name: str, study: str | None = None) -> bytes:
    ds = pydicom.dcmread(dicom_file(name))
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return encode(ds)


def uid_less_instance() -> bytes:
    ds = pydicom.dcmread(dicom_file(CT))
    del ds.SOPInstanceUID
    return encode(ds)


# ---- storing ----------------------------------------------------------------------------------


def test_single_part_application_dicom_body_is_stored_byte_exact(store: Store) -> None:
    data = dicom_file(CT).read_bytes()

    response = post(store, data, "application/dicom")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    (item,) = referenced(response)
    assert values(item, "00081150") == ["1.2.840.10008.5.1.4.1.1.2"]
    assert values(item, "00081155") == [CT_SOP]
    assert values(item, "00081190") == [instance_url(store, CT_STUDY, CT_SERIES, CT_SOP)]
    assert values(response.json(), "00081190") == [f"{store.dicomweb}/studies/{CT_STUDY}"]
    assert "00081198" not in response.json()
    assert (
        requests.get(
            values(item, "00081190")[0], headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30
        ).content
        == data
    )


def test_multipart_body_with_several_parts_stores_every_instance(store: Store) -> None:
    names = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "rtplan.dcm", "chrH31.dcm"]
    datasets = [pydicom.dcmread(dicom_file(n)) for n in names]

    response = post(store, multipart(*[dicom_file(n).read_bytes() for n in names]))

    assert response.status_code == 200, response.text
    assert [values(i, "00081155")[0] for i in referenced(response)] == [ds.SOPInstanceUID for ds in datasets]
    # Several studies: no single study RetrieveURL at the top level.
    assert "00081190" not in response.json()
    for name, ds in zip(names, datasets, strict=True):
        got = retrieve_as_stored(store, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert got.content == dicom_file(name).read_bytes()
    assert instance_count(store) == 5


def test_multipart_parts_without_content_type_or_with_extra_headers_are_stored(store: Store) -> None:
    first, second = with_new_uids(CT), with_new_uids(CT)
    body = (
        f"--{BOUNDARY}\r\n\r\n".encode()
        + first
        + f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\nContent-Length: {len(second)}\r\n"
        f"Content-Location: x.dcm\r\n\r\n".encode()
        + second
        + f"\r\n--{BOUNDARY}--".encode()
    )

    response = post(store, body, f'multipart/related; type=application/dicom; boundary="{BOUNDARY}"')

    assert response.status_code == 200, response.text
    assert len(referenced(response)) == 2


def test_default_stow_response_is_dicom_xml(store: Store) -> None:
    response = post(store, multipart(dicom_file(CT).read_bytes(), dicom_file("rtplan.dcm").read_bytes()), headers={})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+xml"
    root = ET.fromstring(response.content)
    assert root.tag == "NativeDicomModel"
    (sequence,) = root.findall("DicomAttribute[@keyword='ReferencedSOPSequence']")
    assert sequence.get("tag") == "00081199" and sequence.get("vr") == "SQ"
    items = sequence.findall("Item")
    assert [i.get("number") for i in items] == ["1", "2"]
    sops = [i.find("DicomAttribute[@tag='00081155']/Value").text for i in items]
    assert sops == [CT_SOP, "1.2.777.777.77.7.7777.7777.20030903150023"]
    url = items[0].find("DicomAttribute[@keyword='RetrieveURL']/Value[@number='1']").text
    assert url == instance_url(store, CT_STUDY, CT_SERIES, CT_SOP)
    assert not root.findall("DicomAttribute[@keyword='FailedSOPSequence']")


def test_stow_to_a_study_url_stores_instances_of_that_study(store: Store) -> None:
    response = post(store, multipart(dicom_file(CT).read_bytes()), path=f"/studies/{CT_STUDY}")

    assert response.status_code == 200, response.text
    assert [values(i, "00081155")[0] for i in referenced(response)] == [CT_SOP]


def test_stow_to_a_study_url_rejects_an_instance_of_another_study(store: Store) -> None:
    mr = pydicom.dcmread(dicom_file("MR_small.dcm"))

    response = post(
        store,
        multipart(dicom_file("MR_small.dcm").read_bytes(), dicom_file(CT).read_bytes()),
        path=f"/studies/{CT_STUDY}",
    )

    assert response.status_code == 409
    (failure,) = failures(response)
    assert values(failure, "00081155") == [mr.SOPInstanceUID]
    assert values(failure, "00081197") and values(failure, "00081197") != [0]
    detail = values(failure, "00091097")[0]
    assert mr.StudyInstanceUID in detail and CT_STUDY in detail
    assert [values(i, "00081155")[0] for i in referenced(response)] == [CT_SOP]
    assert retrieve_as_stored(store, mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID).status_code == 404


# ---- duplicates and bad instances -------------------------------------------------------------


@pytest.mark.parametrize("second", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"])
def test_stow_of_existing_uid_triple_answers_409_and_keeps_stored_copy(store: Store, second: str) -> None:
    original = dicom_file("MR_small.dcm").read_bytes()
    other = dicom_file(second).read_bytes()
    ds, ds2 = pydicom.dcmread(io.BytesIO(original)), pydicom.dcmread(io.BytesIO(other))
    triple = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert triple == (ds2.StudyInstanceUID, ds2.SeriesInstanceUID, ds2.SOPInstanceUID) and original != other
    assert post(store, original, "application/dicom").status_code == 200

    response = post(store, other, "application/dicom")

    assert response.status_code == 409
    assert "00081199" not in response.json()
    (failure,) = failures(response)
    assert values(failure, "00081197") == [PROCESSING_FAILURE]
    assert values(failure, "00081155") == [ds.SOPInstanceUID]
    assert "already exists" in values(failure, "00091097")[0]
    assert retrieve_as_stored(store, *triple).content == original
    assert instance_count(store) == 1


def test_duplicate_in_xml_response_carries_failure_detail(store: Store) -> None:
    data = dicom_file(CT).read_bytes()
    post(store, data, "application/dicom")

    response = post(store, multipart(data), headers={"Accept": "application/dicom+xml"})

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/dicom+xml"
    root = ET.fromstring(response.content)
    (item,) = root.findall("DicomAttribute[@keyword='FailedSOPSequence']/Item")
    assert item.find("DicomAttribute[@keyword='FailureReason']/Value").text == str(PROCESSING_FAILURE)
    detail = item.find("DicomAttribute[@tag='00090097']")
    assert detail.get("vr") == "LT"
    assert "already exists" in detail.find("Value").text


def test_the_same_instance_twice_in_one_request_stores_it_once(store: Store) -> None:
    data = dicom_file(CT).read_bytes()

    response = post(store, multipart(data, data))

    assert response.status_code == 409
    assert len(referenced(response)) == 1
    assert [values(f, "00081197") for f in failures(response)] == [[PROCESSING_FAILURE]]
    assert instance_count(store) == 1


def test_mixed_request_stores_the_good_instance_and_reports_each_bad_part(store: Store) -> None:
    good = dicom_file(CT).read_bytes()
    half = dicom_file("MR_small.dcm").read_bytes()
    garbage = b"this is not DICOM at all \x00\x01\x02" * 40
    parts = [garbage, good, dicom_file("MR_truncated.dcm").read_bytes(), half[: len(half) // 2], uid_less_instance()]

    response = post(store, multipart(*parts))

    assert response.status_code == 409
    assert [values(i, "00081155")[0] for i in referenced(response)] == [CT_SOP]
    bad = failures(response)
    assert len(bad) == 4
    for failure in bad:
        assert values(failure, "00081197") == [CANNOT_UNDERSTAND]
        assert len(values(failure, "00091097")[0]) > 10
    details = [values(f, "00091097")[0].lower() for f in bad]
    assert "not a dicom file" in details[0]
    assert "truncated" in details[1] and "truncated" in details[2]
    assert "sopinstanceuid" in details[3]
    assert instance_count(store) == 1
    assert retrieve_as_stored(store, CT_STUDY, CT_SERIES, CT_SOP).content == good
    mr = pydicom.dcmread(io.BytesIO(half))
    assert retrieve_as_stored(store, mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID).status_code == 404


def with_uid(name: str, keyword: str, value: str) -> bytes:
    """A test file with new UIDs, then `keyword` set to `value` whether or not it is a valid UID."""
    ds = pydicom.dcmread(io.BytesIO(with_new_uids(name)))
    with pydicom.config.disable_value_validation():
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
        return encode(ds)


TRAVERSAL = "../../../../tmp/x"
UID_KEYWORDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
BAD_UIDS = {
    "traversal": TRAVERSAL,
    "deep traversal": "../" * 24 + "tmp/dicomlake-stow-x",
    "300 characters": "1." * 149 + "12",
    "letters": "1.2.840.abc",
    "empty component": "1.2..3",
}


def escaped_files(*roots: Path) -> set[Path]:
    """What a write steered by one of BAD_UIDS' traversals would have created."""
    return {p for root in roots for p in root.rglob("*") if p.name.startswith(("x.", "dicomlake-stow-x"))}


@pytest.mark.parametrize("keyword", UID_KEYWORDS)
@pytest.mark.parametrize("bad", BAD_UIDS)
def test_invalid_uid_fails_only_its_own_part(store: Store, keyword: str, bad: str) -> None:
    good = with_new_uids(CT)
    value = BAD_UIDS[bad]
    before = set(Path("/tmp").glob("x*")) | set(Path("/tmp").glob("dicomlake-stow-x*"))
    data_dir = store.server.data_dir

    response = post(store, multipart(with_uid("MR_small.dcm", keyword, value), good))

    assert response.status_code == 409, response.text
    (failure,) = failures(response)
    assert values(failure, "00081197") == [CANNOT_UNDERSTAND]
    detail = values(failure, "00091097")[0]
    assert keyword in detail and ("not a UID" in detail or "at most 64" in detail), detail
    assert "/" not in "".join(values(failure, "00081155"))
    assert [values(i, "00081155")[0] for i in referenced(response)] == [
        pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID
    ]
    assert instance_count(store) == 1
    assert set(Path("/tmp").glob("x*")) | set(Path("/tmp").glob("dicomlake-stow-x*")) == before
    assert not escaped_files(data_dir, data_dir.parent)


def test_a_request_of_only_invalid_uids_is_409_and_stores_nothing(store: Store) -> None:
    parts = [with_uid(CT, keyword, TRAVERSAL) for keyword in UID_KEYWORDS]

    response = post(store, multipart(*parts), headers={"Accept": "application/dicom+xml"})

    assert response.status_code == 409
    root = ET.fromstring(response.content)
    items = root.findall("DicomAttribute[@keyword='FailedSOPSequence']/Item")
    assert len(items) == 3
    for item, keyword in zip(items, UID_KEYWORDS, strict=True):
        assert item.find("DicomAttribute[@keyword='FailureReason']/Value").text == str(CANNOT_UNDERSTAND)
        assert keyword in item.find("DicomAttribute[@tag='00090097']/Value").text
    assert not root.findall("DicomAttribute[@keyword='ReferencedSOPSequence']")
    assert instance_count(store) == 0


def test_single_part_with_a_300_character_sop_instance_uid_is_409(store: Store) -> None:
    response = post(store, with_uid(CT, "SOPInstanceUID", BAD_UIDS["300 characters"]), "application/dicom")

    assert response.status_code == 409, response.text
    (failure,) = failures(response)
    assert "300 characters" in values(failure, "00091097")[0]
    assert values(failure, "00081155") == []
    assert instance_count(store) == 0


def test_uid_components_with_leading_zeros_are_stored_as_sent(store: Store) -> None:
    sop = "1.2.826.0.1.3680043.8.498.0012.03"
    data = with_uid(CT, "SOPInstanceUID", sop)
    ds = pydicom.dcmread(io.BytesIO(data))

    response = post(store, data, "application/dicom")

    assert response.status_code == 200, response.text
    assert [values(i, "00081155")[0] for i in referenced(response)] == [sop]
    assert retrieve_as_stored(store, ds.StudyInstanceUID, ds.SeriesInstanceUID, sop).content == data


def test_part_of_another_media_type_is_a_failure_entry(store: Store) -> None:
    body = f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n".encode() + multipart(
        dicom_file(CT).read_bytes()
    )

    response = post(store, body)

    assert response.status_code == 409
    assert len(referenced(response)) == 1
    (failure,) = failures(response)
    assert "application/json" in values(failure, "00091097")[0]


# ---- malformed requests -----------------------------------------------------------------------


def _good_body() -> bytes:
    return multipart(with_new_uids(CT))


MALFORMED = {
    "no boundary": ('multipart/related; type="application/dicom"', _good_body),
    "wrong boundary": ('multipart/related; type="application/dicom"; boundary=another', _good_body),
    "boundary too long": (f'multipart/related; type="application/dicom"; boundary={"b" * 300}', _good_body),
    "missing closing delimiter": (MULTIPART, lambda: _good_body()[: -len(f"\r\n--{BOUNDARY}--\r\n")]),
    "body ends inside part headers": (MULTIPART, lambda: f"--{BOUNDARY}\r\nContent-Type: appl".encode()),
    "garbage part headers": (
        MULTIPART,
        lambda: (
            f"--{BOUNDARY}\r\n\x00\xff\x10garbage\r\n\r\n".encode("latin-1")
            + with_new_uids(CT)
            + f"\r\n--{BOUNDARY}--".encode()
        ),
    ),
    "huge part headers": (
        MULTIPART,
        lambda: (
            f"--{BOUNDARY}\r\nX-Pad: ".encode()
            + b"a" * 200_000
            + b"\r\n\r\n"
            + with_new_uids(CT)
            + f"\r\n--{BOUNDARY}--".encode()
        ),
    ),
    "text/plain": ("text/plain", lambda: with_new_uids(CT)),
    "application/json": ("application/json", lambda: b'[{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}]'),
    "dicom+json parts": (
        'multipart/related; type="application/dicom+json"; boundary=' + BOUNDARY,
        lambda: multipart(b"[{}]", part_type="application/dicom+json"),
    ),
    "no content type": ("", _good_body),
    "empty single part": ("application/dicom", lambda: b""),
    "empty multipart": (MULTIPART, lambda: b""),
    "only the closing delimiter": (MULTIPART, lambda: f"--{BOUNDARY}--\r\n".encode()),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_stow_is_a_4xx_error_envelope_and_loses_nothing(store: Store, case: str) -> None:
    assert post(store, dicom_file(CT).read_bytes(), "application/dicom").status_code == 200
    content_type, body = MALFORMED[case]

    response = post(store, body(), content_type)

    assert 400 <= response.status_code < 500, response.text
    assert response.status_code != 409
    error = response.json()["error"]
    assert error["code"] == response.status_code
    assert error["status"] == "INVALID_ARGUMENT"
    assert len(error["message"]) > 10
    assert instance_count(store) == 1
    assert retrieve_as_stored(store, CT_STUDY, CT_SERIES, CT_SOP).content == dicom_file(CT).read_bytes()


def test_body_broken_after_a_stored_part_reports_the_stored_instance(store: Store) -> None:
    good = dicom_file(CT).read_bytes()
    body = multipart(good)[: -len("--\r\n")] + b"\r\nContent-Type: application/dicom\r\n\r\nDICM-cut-off"

    response = post(store, body)

    assert response.status_code == 409
    assert [values(i, "00081155")[0] for i in referenced(response)] == [CT_SOP]
    (failure,) = failures(response)
    assert "closing boundary" in values(failure, "00091097")[0]
    assert retrieve_as_stored(store, CT_STUDY, CT_SERIES, CT_SOP).content == good


# ---- large bodies -----------------------------------------------------------------------------


def test_fifty_instances_in_one_chunked_multipart_body_are_all_stored(store: Store) -> None:
    study = generate_uid()
    parts = [with_new_uids(CT, study) for _ in range(50)]
    body = multipart(*parts)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8191):
            yield body[start : start + 8191]

    response = requests.post(
        f"{store.dicomweb}/studies", data=chunks(), timeout=120, headers={"Content-Type": MULTIPART, **JSON}
    )

    assert response.status_code == 200, response.text
    assert len(referenced(response)) == 50
    found = requests.get(f"{store.dicomweb}/studies/{study}/instances", params={"limit": 100}, timeout=30).json()
    assert len(found) == 50
    assert instance_count(store) == 50


def test_instance_larger_than_the_in_memory_limit_streams_and_stores_byte_exact(store: Store) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 2048, 2048, 10
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(7).integers(0, 256, 2048 * 2048 * 10, dtype=np.uint8).tobytes()
    data = encode(ds)
    assert len(data) > 40 * 1024 * 1024

    response = post(store, multipart(data))

    assert response.status_code == 200, response.text
    got = retrieve_as_stored(store, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
