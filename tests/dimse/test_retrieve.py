"""C-MOVE and C-GET from DCMTK's tools and from pynetdicom: every instance an identifier names arrives as it is
stored, at a listed destination (DCMTK's storescp) or on the requesting association, with the right counts."""

from __future__ import annotations

import io
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from dimse_helpers import DimseServer, ae_store, dcmtk, needs_dcmtk, start_dimse_server, wait_listening
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_preamble
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from conftest import Store, dicom_file, free_port

# Explicit VR little and big endian, implicit VR, JPEG 2000, RLE and JPEG baseline; three SOP classes.
FILES = (
    "MR_small.dcm",
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
)
PENDING, SUCCESS, WARNING, CANCEL = 0xFF00, 0x0000, 0xB000, 0xFE00
MOVE_DESTINATION_UNKNOWN = 0xA801


@dataclass
class Study:
    uid: str
    series: list[str]
    # SOPInstanceUID -> the stored Part 10 bytes (as WADO-RS returns them)
    stored: dict[str, bytes]


@pytest.fixture(scope="module")
def storescp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def dimse(tmp_path_factory: pytest.TempPathFactory, storescp_port: int) -> Iterator[DimseServer]:
    peers = [("STORESCP", "127.0.0.1", storescp_port), ("NOBODY", "127.0.0.1", free_port())]
    srv = start_dimse_server(tmp_path_factory.mktemp("retrieve"), peers=peers)
    yield srv
    srv.server.stop()


@pytest.fixture
def storescp(tmp_path: Path, storescp_port: int) -> Iterator[Path]:
    """DCMTK's storescp as the C-MOVE destination, keeping what it receives bit for bit; the folder it writes."""
    folder = tmp_path / "received"
    folder.mkdir()
    process = subprocess.Popen(
        ["storescp", "+B", "+xa", "-aet", "STORESCP", "-od", str(folder), str(storescp_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(storescp_port)
        yield folder
    finally:
        process.terminate()
        process.wait(timeout=10)


def _part10(path: Path, study: str, series: str, number: int) -> bytes:
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = f"P-{study[-8:]}"
    ds.InstanceNumber = number
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _stow(store: Store, parts: list[bytes]) -> None:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts
    )
    response = requests.post(
        f"{store.dicomweb}/studies",
        data=body + f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    response.raise_for_status()


def _stored(store: Store, study: str) -> dict[str, bytes]:
    found = requests.get(f"{store.dicomweb}/studies/{study}/instances", timeout=30).json()
    stored = {}
    for item in found:
        series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
        response = requests.get(
            f"{store.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'application/dicom; transfer-syntax="*"'},
            timeout=30,
        )
        response.raise_for_status()
        stored[sop] = response.content
    return stored


def _make_study(store: Store, files: tuple[str, ...] = FILES, series_count: int = 2) -> Study:
    study = generate_uid()
    series = [generate_uid() for _ in range(series_count)]
    parts = [_part10(dicom_file(name), study, series[i % series_count], i + 1) for i, name in enumerate(files)]
    _stow(store, parts)
    return Study(study, series, _stored(store, study))


def dataset_part(data: bytes) -> bytes:
    """A Part 10 file's bytes after its file meta group: what a C-STORE carries."""
    f = io.BytesIO(data)
    read_preamble(f, False)
    pydicom.filereader._read_file_meta_info(f)
    return data[f.tell() :]


def _received(folder: Path) -> dict[str, bytes]:
    """What storescp wrote, by SOP Instance UID."""
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.read_bytes() for p in folder.iterdir()}


def _assert_byte_exact(stored: dict[str, bytes], received: dict[str, bytes]) -> None:
    assert set(received) == set(stored)
    for sop, data in stored.items():
        assert dataset_part(received[sop]) == dataset_part(data), sop


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _associate(dimse: DimseServer, called: str, ae: AE | None = None, **kwargs):
    if ae is None:
        ae = AE("MOVESCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=called, **kwargs)
    assert assoc.is_established
    return assoc


def _move(assoc, identifier: Dataset, destination: str = "STORESCP", model=StudyRootQueryRetrieveInformationModelMove):
    """Every response of a C-MOVE: (status, the response's status dataset)."""
    return [(status.get("Status"), status) for status, _ in assoc.send_c_move(identifier, destination, model)]


# ---- C-MOVE ---------------------------------------------------------------------------------------


@needs_dcmtk
def test_movescu_moves_a_study_byte_exact_into_storescp(dimse: DimseServer, storescp: Path) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store)
    result = dcmtk(
        "movescu", "-S", "-aet", "MOVESCU", "-aec", target.ae_title, "-aem", "STORESCP",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}",
        "127.0.0.1", str(dimse.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_byte_exact(study.stored, _received(storescp))


@needs_dcmtk
def test_a_pynetdicom_move_of_a_study_reports_pending_and_final_counts(dimse: DimseServer, storescp: Path) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store)
    assoc = _associate(dimse, target.ae_title)
    try:
        responses = _move(assoc, _identifier("STUDY", StudyInstanceUID=study.uid))
    finally:
        assoc.release()
    pending = [r for status, r in responses if status == PENDING]
    assert len(pending) == len(FILES)
    assert [r.NumberOfRemainingSuboperations for r in pending] == list(range(len(FILES) - 1, -1, -1))
    final_status, final = responses[-1]
    assert final_status == SUCCESS
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (len(FILES), 0)
    assert final.NumberOfWarningSuboperations == 0
    _assert_byte_exact(study.stored, _received(storescp))


@needs_dcmtk
def test_a_move_of_a_series_or_of_instances_sends_only_those(dimse: DimseServer, storescp: Path) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store)
    in_series = sorted(sop for sop, data in study.stored.items() if _series_of(data) == study.series[1])
    assoc = _associate(dimse, target.ae_title)
    try:
        series = _identifier("SERIES", StudyInstanceUID=study.uid, SeriesInstanceUID=study.series[1])
        status, final = _move(assoc, series)[-1]
        assert (status, final.NumberOfCompletedSuboperations) == (SUCCESS, len(in_series))
        _assert_byte_exact({sop: study.stored[sop] for sop in in_series}, _received(storescp))
        for path in storescp.iterdir():
            path.unlink()
        # Patient Root at IMAGE level: one UID for each level above, a list of instances.
        image = _identifier("IMAGE", PatientID=f"P-{study.uid[-8:]}", StudyInstanceUID=study.uid)
        image.SeriesInstanceUID = study.series[1]
        image.SOPInstanceUID = in_series[:2]
        status, final = _move(assoc, image, model=PatientRootQueryRetrieveInformationModelMove)[-1]
        assert (status, final.NumberOfCompletedSuboperations) == (SUCCESS, 2)
        _assert_byte_exact({sop: study.stored[sop] for sop in in_series[:2]}, _received(storescp))
    finally:
        assoc.release()


def _series_of(data: bytes) -> str:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesInstanceUID


@needs_dcmtk
def test_a_patient_level_move_sends_every_study_of_the_patient(dimse: DimseServer, storescp: Path) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store, FILES[:2], series_count=1)
    assoc = _associate(dimse, target.ae_title)
    try:
        responses = _move(
            assoc,
            _identifier("PATIENT", PatientID=f"P-{study.uid[-8:]}"),
            model=PatientRootQueryRetrieveInformationModelMove,
        )
    finally:
        assoc.release()
    assert responses[-1][0] == SUCCESS
    _assert_byte_exact(study.stored, _received(storescp))


def test_a_destination_not_listed_or_not_listening_is_unknown_and_the_association_goes_on(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store, FILES[:1], series_count=1)
    assoc = _associate(dimse, target.ae_title)
    try:
        identifier = _identifier("STUDY", StudyInstanceUID=study.uid)
        assert _move(assoc, identifier, destination="NOT_A_PEER")[-1][0] == MOVE_DESTINATION_UNKNOWN
        # Listed, but nothing listens there.
        assert _move(assoc, identifier, destination="NOBODY")[-1][0] == MOVE_DESTINATION_UNKNOWN
        assert assoc.send_c_echo().Status == SUCCESS
    finally:
        assoc.release()


@needs_dcmtk
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_missing_or_invalid_key_is_a_failure_status(dimse: DimseServer, storescp: Path) -> None:
    target = ae_store(dimse)
    assoc = _associate(dimse, target.ae_title)
    try:
        for identifier in (
            _identifier("STUDY"),
            _identifier("STUDY", StudyInstanceUID="1.2.x"),
            _identifier("SERIES", StudyInstanceUID="1.2.3"),
            _identifier("WARD", StudyInstanceUID="1.2.3"),
        ):
            status, response = _move(assoc, identifier)[-1]
            assert status == 0xA900, identifier
            assert response.ErrorComment
        # Patient level belongs to the Patient Root model only.
        assert _move(assoc, _identifier("PATIENT", PatientID="X"))[-1][0] == 0xA900
        # A study that is not there: nothing to do, and success.
        status, response = _move(assoc, _identifier("STUDY", StudyInstanceUID=generate_uid()))[-1]
        assert (status, response.NumberOfCompletedSuboperations) == (SUCCESS, 0)
        assert assoc.send_c_echo().Status == SUCCESS
    finally:
        assoc.release()
    assert not list(storescp.iterdir())


@needs_dcmtk
def test_a_cancelled_move_stops_with_fewer_completed(dimse: DimseServer, storescp: Path) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store, ("MR_small.dcm",) * 80, series_count=1)
    assoc = _associate(dimse, target.ae_title)
    try:
        responses = []
        for status, _ in assoc.send_c_move(
            _identifier("STUDY", StudyInstanceUID=study.uid),
            "STORESCP",
            StudyRootQueryRetrieveInformationModelMove,
            msg_id=5,
        ):
            responses.append(status)
            if len(responses) == 1:
                assoc.send_c_cancel(5, query_model=StudyRootQueryRetrieveInformationModelMove)
        assert assoc.send_c_echo().Status == SUCCESS
    finally:
        assoc.release()
    final = responses[-1]
    assert final.Status == CANCEL
    assert final.NumberOfCompletedSuboperations < len(study.stored)
    assert final.NumberOfRemainingSuboperations > 0
    assert len(list(storescp.iterdir())) == final.NumberOfCompletedSuboperations


# ---- C-GET ----------------------------------------------------------------------------------------


@needs_dcmtk
def test_getscu_gets_a_study_as_stored_or_decompressed_when_it_asks_so(dimse: DimseServer, tmp_path: Path) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store)
    result = dcmtk(
        "getscu", "-S", "+B", "-aet", "GETSCU", "-aec", target.ae_title,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}",
        "-od", str(tmp_path), "127.0.0.1", str(dimse.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    received = _received(tmp_path)
    assert set(received) == set(study.stored)
    # getscu accepts the uncompressed syntaxes only, explicit VR little endian first: what is stored so arrives
    # byte-exact, the rest is transcoded into it, with the same pixels.
    for sop, data in study.stored.items():
        stored, arrived = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(received[sop]))
        if stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian:
            assert dataset_part(received[sop]) == dataset_part(data), sop
        else:
            assert arrived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert (arrived.pixel_array == stored.pixel_array).all(), sop


def _getter(contexts: list[tuple[str, list[str]]]) -> tuple[AE, list]:
    ae = AE("GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(Verification)
    roles = []
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
        roles.append(build_role(sop_class, scp_role=True))
    return ae, roles


def _get(dimse: DimseServer, called: str, contexts, identifier: Dataset) -> tuple[list, dict[str, tuple[str, bytes]]]:
    """Every C-GET response, and what arrived: SOPInstanceUID -> (transfer syntax, data set bytes)."""
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event: evt.Event) -> int:
        received[event.request.AffectedSOPInstanceUID] = (
            event.context.transfer_syntax,
            event.request.DataSet.getvalue(),
        )
        return SUCCESS

    ae, roles = _getter(contexts)
    assoc = _associate(dimse, called, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        responses = [status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
        assert assoc.send_c_echo().Status == SUCCESS
    finally:
        assoc.release()
    return responses, received


def test_a_pynetdicom_get_receives_every_instance_byte_exact(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store)
    contexts = []
    for data in study.stored.values():
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        contexts.append((ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID]))
    responses, received = _get(dimse, target.ae_title, contexts, _identifier("STUDY", StudyInstanceUID=study.uid))
    assert [r.Status for r in responses[:-1]] == [PENDING] * len(FILES)
    assert responses[-1].Status == SUCCESS
    assert responses[-1].NumberOfCompletedSuboperations == len(FILES)
    assert set(received) == set(study.stored)
    for sop, data in study.stored.items():
        assert received[sop][0] == pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
        assert received[sop][1] == dataset_part(data), sop


def test_a_get_transcodes_for_a_requestor_of_one_syntax_and_counts_what_it_cannot_send(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    study = _make_study(target.store)
    # MR only, and only Implicit VR Little Endian: the CT and Secondary Capture images cannot go at all.
    responses, received = _get(
        dimse,
        target.ae_title,
        [(MRImageStorage, [ImplicitVRLittleEndian])],
        _identifier("STUDY", StudyInstanceUID=study.uid),
    )
    by_class = {}
    for sop, data in study.stored.items():
        by_class.setdefault(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPClassUID, set()).add(sop)
    mr = by_class[MRImageStorage]
    final = responses[-1]
    assert final.Status == WARNING
    assert final.NumberOfCompletedSuboperations == len(mr)
    assert final.NumberOfFailedSuboperations == len(FILES) - len(mr)
    assert set(received) == mr
    original = pydicom.dcmread(dicom_file("MR_small.dcm"))
    for sop in mr:
        syntax, body = received[sop]
        assert syntax == ImplicitVRLittleEndian
        ds = pydicom.filereader.read_dataset(io.BytesIO(body), is_implicit_VR=True, is_little_endian=True)
        assert ds.SOPInstanceUID == sop
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        assert (ds.pixel_array == original.pixel_array).all()


def test_pydicom_rewrites_what_it_read_unchanged_for_the_files_sent_here() -> None:
    """What the retrieve relies on, pinned on its own: a dataset read from bytes is encoded back to the same bytes
    (pynetdicom encodes what a handler yields with pydicom's writer)."""
    from pynetdicom.dsutils import encode

    for name in FILES:
        data = dicom_file(name).read_bytes()
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = ds.file_meta.TransferSyntaxUID
        assert encode(ds, syntax.is_implicit_VR, syntax.is_little_endian) == dataset_part(data), name
