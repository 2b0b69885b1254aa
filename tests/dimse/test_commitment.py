"""Storage commitment (Push Model) from a pynetdicom SCU: the N-ACTION is answered at once, and the N-EVENT-REPORT
that follows names what the store holds and what it does not, on the same association while the SCU holds it
open, on a new one to the SCU as a listed peer once it has released."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pydicom
import pytest
from dimse_helpers import DimseServer, ae_store, start_dimse_server
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from conftest import dicom_file, free_port

SUCCESS = 0x0000
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REPORT_TIMEOUT = 15


@pytest.fixture(scope="module")
def listening_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def dimse(tmp_path_factory: pytest.TempPathFactory, listening_port: int) -> Iterator[DimseServer]:
    srv = start_dimse_server(tmp_path_factory.mktemp("commitment"), peers=[("COMMITSCU", "127.0.0.1", listening_port)])
    yield srv
    srv.server.stop()


def _scu(title: str) -> AE:
    ae = AE(title)
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(CTImageStorage)
    return ae


def _store_two(assoc) -> list[Dataset]:
    """An MR and a CT image with fresh UIDs, stored over `assoc`."""
    stored = []
    for name in ("MR_small.dcm", "CT_small.dcm"):
        ds = pydicom.dcmread(dicom_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        assert assoc.send_c_store(ds).Status == SUCCESS
        stored.append(ds)
    return stored


def _request(references: list[tuple[str, str]]) -> Dataset:
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        info.ReferencedSOPSequence.append(item)
    return info


def _commit(assoc, info: Dataset, action_type: int = 1) -> int:
    status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
    return status.Status


def _refs(report: Dataset, keyword: str) -> dict[str, tuple[str, int | None]]:
    return {
        item.ReferencedSOPInstanceUID: (item.ReferencedSOPClassUID, item.get("FailureReason"))
        for item in report.get(keyword, [])
    }


def test_the_report_comes_on_the_same_association_with_held_and_failed_instances(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    reports: queue.Queue = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put((event.event_type, event.event_information, event.assoc.is_requestor))
        return SUCCESS, None

    assoc = _scu("WAITINGSCU").associate(
        "127.0.0.1", dimse.port, ae_title=target.ae_title, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert assoc.is_established
    try:
        mr, ct = _store_two(assoc)
        unknown = generate_uid()
        info = _request(
            [
                (MRImageStorage, mr.SOPInstanceUID),
                (CTImageStorage, ct.SOPInstanceUID),
                (MRImageStorage, unknown),
                (MRImageStorage, ct.SOPInstanceUID),  # held, but as a CT image
            ]
        )
        assert _commit(assoc, info) == SUCCESS
        event_type, report, on_our_association = reports.get(timeout=REPORT_TIMEOUT)
        # The association goes on after the report: a second request, and its report.
        assert _commit(assoc, _request([(MRImageStorage, mr.SOPInstanceUID)])) == SUCCESS
        second_type, second, _ = reports.get(timeout=REPORT_TIMEOUT)
    finally:
        assoc.release()
    assert on_our_association
    assert event_type == 2  # failures exist
    assert report.TransactionUID == info.TransactionUID
    assert report.RetrieveAETitle == target.ae_title
    held = _refs(report, "ReferencedSOPSequence")
    assert held == {mr.SOPInstanceUID: (MRImageStorage, None), ct.SOPInstanceUID: (CTImageStorage, None)}
    failed = {(uid, value) for uid, value in _refs(report, "FailedSOPSequence").items()}
    assert failed == {
        (unknown, (MRImageStorage, NO_SUCH_OBJECT_INSTANCE)),
        (ct.SOPInstanceUID, (MRImageStorage, CLASS_INSTANCE_CONFLICT)),
    }
    assert second_type == 1  # all held
    assert _refs(second, "ReferencedSOPSequence") == {mr.SOPInstanceUID: (MRImageStorage, None)}
    assert "FailedSOPSequence" not in second


def test_a_request_sent_before_the_answer_to_a_report_is_served(dimse: DimseServer) -> None:
    """An SCU may send its next N-ACTION before it answers the report (from another thread): the server, waiting
    for that answer, must not take the request for it."""
    target = ae_store(dimse)
    reports: queue.Queue = queue.Queue()
    second_status: queue.Queue = queue.Queue()
    assoc = None
    answered: list[int] = []

    def on_report(event: evt.Event) -> tuple[int, None]:
        if not answered:
            mr_only = _request([(MRImageStorage, mr.SOPInstanceUID)])
            threading.Thread(target=lambda: second_status.put(_commit(assoc, mr_only)), daemon=True).start()
            time.sleep(0.5)  # the second N-ACTION-RQ goes out before this answer
        answered.append(event.event_type)
        reports.put(event.event_type)
        return SUCCESS, None

    assoc = _scu("EAGERSCU").associate(
        "127.0.0.1", dimse.port, ae_title=target.ae_title, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    assert assoc.is_established
    try:
        mr, ct = _store_two(assoc)
        assert _commit(assoc, _request([(CTImageStorage, ct.SOPInstanceUID)])) == SUCCESS
        assert reports.get(timeout=REPORT_TIMEOUT) == 1
        assert second_status.get(timeout=REPORT_TIMEOUT) == SUCCESS
        assert reports.get(timeout=REPORT_TIMEOUT) == 1
    finally:
        assoc.release()


def test_the_report_comes_on_a_new_association_once_the_scu_released(dimse: DimseServer, listening_port: int) -> None:
    target = ae_store(dimse)
    reports: queue.Queue = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put((event.event_type, event.event_information, event.assoc.requestor.ae_title))
        return SUCCESS, None

    listener = AE("COMMITSCU")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = listener.start_server(
        ("127.0.0.1", listening_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        assoc = _scu("COMMITSCU").associate("127.0.0.1", dimse.port, ae_title=target.ae_title)
        assert assoc.is_established
        try:
            mr, _ = _store_two(assoc)
            unknown = generate_uid()
            info = _request([(MRImageStorage, mr.SOPInstanceUID), (CTImageStorage, unknown)])
            assert _commit(assoc, info) == SUCCESS
        finally:
            assoc.release()
        event_type, report, reporter = reports.get(timeout=REPORT_TIMEOUT)
    finally:
        server.shutdown()
    assert reporter == target.ae_title
    assert event_type == 2
    assert report.TransactionUID == info.TransactionUID
    assert _refs(report, "ReferencedSOPSequence") == {mr.SOPInstanceUID: (MRImageStorage, None)}
    assert _refs(report, "FailedSOPSequence") == {unknown: (CTImageStorage, NO_SUCH_OBJECT_INSTANCE)}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_malformed_request_is_refused_and_the_association_goes_on(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    assoc = _scu("WAITINGSCU").associate("127.0.0.1", dimse.port, ae_title=target.ae_title)
    assert assoc.is_established
    try:
        no_transaction = _request([(MRImageStorage, generate_uid())])
        del no_transaction.TransactionUID
        assert _commit(assoc, no_transaction) == 0x0120  # missing attribute
        bad_transaction = _request([(MRImageStorage, generate_uid())])
        bad_transaction.TransactionUID = "1.2.x"
        assert _commit(assoc, bad_transaction) == 0x0115  # invalid argument value
        assert _commit(assoc, _request([(MRImageStorage, generate_uid())]), action_type=2) == 0x0123  # no such action
        assert _commit(assoc, _request([])) == 0x0115
    finally:
        assoc.release()
