"""C-ECHO and C-STORE from DCMTK's tools and from pynetdicom: what a modality sends is stored exactly as STOW
stores it, into the store its called AE title names."""

from __future__ import annotations

import io

import pydicom
import pytest
import requests
from dimse_helpers import DimseServer, ae_store, dcmtk, needs_dcmtk
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, _config
from pynetdicom.sop_class import Verification

from conftest import all_dicom_files, dicom_file

MR = dicom_file("MR_small.dcm")


def _dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's bytes after its file meta group (preamble, DICM, group length element, group): what
    C-STORE carries."""
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def _retrieve(store, study: str, series: str, sop: str) -> bytes:
    response = requests.get(
        f"{store.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'application/dicom; transfer-syntax="*"'},
        timeout=30,
    )
    response.raise_for_status()
    return response.content


@needs_dcmtk
def test_echoscu_is_answered_by_a_store_title(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    result = dcmtk("echoscu", "-aec", target.ae_title, "127.0.0.1", str(dimse.port))
    assert result.returncode == 0, result.stderr


@needs_dcmtk
def test_a_called_title_that_names_no_store_is_rejected(dimse: DimseServer) -> None:
    result = dcmtk("echoscu", "-aec", "NO_SUCH_STORE", "127.0.0.1", str(dimse.port))
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr


@needs_dcmtk
def test_the_called_title_matches_the_label_in_any_case(dimse: DimseServer) -> None:
    target = ae_store(dimse, "Ct_Archive_Case")
    result = dcmtk("echoscu", "-aec", "ct_archive_case", "127.0.0.1", str(dimse.port))
    assert result.returncode == 0, result.stderr
    assert target.ae_title == "CT_ARCHIVE_CASE"


@needs_dcmtk
def test_storescu_stores_byte_exact_and_dicomweb_retrieves_it(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    result = dcmtk("storescu", "-aet", "MODALITY1", "-aec", target.ae_title, "127.0.0.1", str(dimse.port), str(MR))
    assert result.returncode == 0, result.stderr
    original = pydicom.dcmread(MR)
    stored = _retrieve(target.store, original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)
    # DCMTK drops the file's Dataset Trailing Padding (FFFC,FFFC), its last element, when it sends; the rest
    # arrives and is kept byte for byte.
    sent, received = _dataset_bytes(MR.read_bytes()), _dataset_bytes(stored)
    assert sent[len(received) :].startswith(b"\xfc\xff\xfc\xff")
    assert sent[: len(received)] == received
    meta = pydicom.dcmread(io.BytesIO(stored)).file_meta
    assert meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert meta.SourceApplicationEntityTitle == "MODALITY1"


@needs_dcmtk
def test_a_duplicate_is_success_and_keeps_the_first_copy(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    ds = pydicom.dcmread(MR)
    first = dcmtk("storescu", "-aec", target.ae_title, "127.0.0.1", str(dimse.port), str(MR))
    assert first.returncode == 0, first.stderr
    before = _retrieve(target.store, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    ds.PatientName = "Changed^Second"
    changed = io.BytesIO()
    ds.save_as(changed)
    assoc = _associate(dimse, target.ae_title)
    try:
        status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(changed.getvalue())))
    finally:
        assoc.release()
    assert status.Status == 0x0000
    after = _retrieve(target.store, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert after == before


def _associate(dimse: DimseServer, called: str, calling: str = "PYNETDICOM"):
    ae = AE(calling)
    ae.requested_contexts = StoragePresentationContexts[:127]
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=called)
    assert assoc.is_established
    return assoc


def test_a_pynetdicom_client_stores_every_test_file_it_can_send(
    dimse: DimseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every real test file that pydicom reads as a storage instance goes in by C-STORE and comes back by WADO."""
    # Send each file's own bytes after its file meta, as a modality sends what it made, not a re-encoding.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    target = ae_store(dimse)
    sent = []
    seen = set()  # several test files are one instance in other encodings: the first one stored is kept
    for path in all_dicom_files():
        try:
            ds = pydicom.dcmread(path)
        except Exception:
            continue
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds or "TransferSyntaxUID" not in ds.file_meta:
            continue
        if ds.SOPInstanceUID in seen:
            continue
        seen.add(ds.SOPInstanceUID)
        sent.append((path, ds))
    assert len(sent) > 50
    ae = AE("PYNETDICOM")
    stored = []
    for path, ds in sent:
        ae.requested_contexts = []
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", dimse.port, ae_title=target.ae_title)
        if not assoc.is_established:
            continue
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
        if status and status.Status == 0x0000:
            stored.append((path, ds))
    assert len(stored) > 40
    for path, ds in stored:
        data = _retrieve(target.store, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert _dataset_bytes(data) == _dataset_bytes(path.read_bytes()), path.name


def test_a_part_that_is_not_dicom_fails_with_a_reason_and_the_association_goes_on(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    ds = pydicom.dcmread(MR)
    ds.SOPInstanceUID = "1.2.3.not a uid"
    assoc = _associate(dimse, target.ae_title)
    try:
        status = assoc.send_c_store(ds)
        assert status.Status == 0xC000
        assert "SOPInstanceUID" in str(status.get("ErrorComment", ""))
        good = pydicom.dcmread(MR)
        good.SOPInstanceUID = generate_uid()
        assert assoc.send_c_store(good).Status == 0x0000
    finally:
        assoc.release()


@pytest.mark.parametrize("garbage", [b"\x01\x00\x00\x00\x00\x02hi", b"GET / HTTP/1.1\r\n\r\n", b"\xff" * 4096])
def test_garbage_is_refused_and_http_and_dimse_go_on(dimse: DimseServer, garbage: bytes) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", dimse.port), timeout=10) as sock:
        sock.sendall(garbage)
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    target = ae_store(dimse)
    assoc = _associate(dimse, target.ae_title)
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert requests.get(target.store.url, timeout=10).status_code == 200
    assert "Traceback" not in (dimse.server.data_dir / "server.log").read_text()


def _new_mr(patient: str = "Lean^Path") -> pydicom.Dataset:
    ds = pydicom.dcmread(MR)
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = patient
    return ds


def test_echoes_stores_and_duplicates_interleaved_on_one_association_are_each_answered(dimse: DimseServer) -> None:
    """C-STOREs are answered by the listener's own hot path and C-ECHOs by pynetdicom, on one association."""
    target = ae_store(dimse)
    first, second = _new_mr(), _new_mr()
    assoc = _associate(dimse, target.ae_title)
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(first).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(first).Status == 0x0000  # a duplicate
        assert assoc.send_c_store(second).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    for ds in (first, second):
        data = _retrieve(target.store, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == ds.SOPInstanceUID


def test_a_client_taking_only_small_pdus_is_answered_in_pdus_it_takes(dimse: DimseServer) -> None:
    """The listener's own answer is one PDU; a peer too small for it is answered by pynetdicom, fragmented."""
    target = ae_store(dimse)
    ds = _new_mr()
    ae = AE("SMALLPDU")
    ae.maximum_pdu_size = 128
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=target.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    assert _retrieve(target.store, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x09\x01\x03\x08\x00\x10\x00\xff\xff\xff",  # a command set that cannot be decoded
        b"\x00\x00\x00\x63\x01\x03\x00\x00",  # a PDV item longer than its PDU
        b"\x00\x00\x00\x06\x01\x00abcd",  # a data set fragment with no command before it
    ],
)
def test_a_bad_p_data_on_an_established_association_ends_it_cleanly(dimse: DimseServer, body: bytes) -> None:
    target = ae_store(dimse)
    assoc = _associate(dimse, target.ae_title)
    assert assoc.send_c_store(_new_mr()).Status == 0x0000
    assoc.dul.socket.send(b"\x04\x00" + len(body).to_bytes(4, "big") + body)
    assoc.dul.join(timeout=30)  # the listener aborts, or closes
    assert not assoc.is_established or assoc.send_c_echo() is not None
    assoc.abort()
    again = _associate(dimse, target.ae_title)
    try:
        assert again.send_c_store(_new_mr()).Status == 0x0000
    finally:
        again.release()
    assert "Traceback" not in (dimse.server.data_dir / "server.log").read_text()


def test_pdus_arriving_a_few_bytes_at_a_time_are_stored_and_answered(dimse: DimseServer) -> None:
    """A PDU's header and its PDV items may arrive split over any number of TCP segments."""
    import socket
    import time

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    target = ae_store(dimse)
    ds = _new_mr()
    ae = AE("SPLITTING")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=target.ae_title)
    assert assoc.is_established
    try:
        context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == ds.SOPClassUID)
        request = C_STORE()
        request.MessageID = 9
        request.AffectedSOPClassUID = ds.SOPClassUID
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 0
        part10 = io.BytesIO()
        ds.save_as(part10, enforce_file_format=True)
        request.DataSet = io.BytesIO(_dataset_bytes(part10.getvalue()))
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        data = b""
        for primitive in message.encode_msg(context.context_id, 4096):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            data += pdu.encode()
        raw = assoc.dul.socket.socket
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The answer is for this test to read, not for the client association's own loop (as in send_c_store).
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        try:
            for start in range(0, len(data), 1500):
                raw.sendall(data[start : start + 3])
                time.sleep(0.001)
                raw.sendall(data[start + 3 : start + 1500])
            _, answer = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        assert answer is not None
        assert answer.Status == 0x0000
        assert answer.MessageIDBeingRespondedTo == 9
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert _retrieve(target.store, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
