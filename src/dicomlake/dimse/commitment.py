"""Storage Commitment Push Model (PS3.4 Annex J): an N-ACTION asks whether instances are held; the answer is an
N-EVENT-REPORT, sent later from a thread of its own.

The N-ACTION is answered at once (success means "request taken", not "all held"). The report goes on the same
association when the SCU still holds it open, otherwise on a new association to the calling AE as the peers file
lists it (J.3.3). An SCU that will not wait for the report on its association releases it as soon as the N-ACTION
is answered, so the report waits a moment for that release before it chooses: sent into a release, it would be
ignored by the SCU, and the association's thread would wait a DIMSE timeout for an answer that never comes.

Held means: an instance with that SOP Instance UID is in this store, with that SOP class."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.sop_class import StorageCommitmentPushModelInstance

from dicomlake.dicom import tags
from dicomlake.dicom.uids import InvalidUid, normalize_uid
from dicomlake.dimse.peers import Peers
from dicomlake.dimse.session import Session
from dicomlake.dimse.sop_classes import StorageCommitmentPushModel
from dicomlake.services import Services
from dicomlake.store import search
from dicomlake.store.catalog import StoreRef

log = logging.getLogger("dicomlake.dimse")

# PS3.7 C.4 N-ACTION statuses.
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
INVALID_ARGUMENT_VALUE = 0x0115
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123
# PS3.3 C.14.1.1 Failure Reason values.
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
# PS3.4 J.3.2 and J.3.3.
REQUEST_STORAGE_COMMITMENT = 1
ALL_HELD = 1
FAILURES_EXIST = 2
# How long the report waits for the N-ACTION response to be sent, and then for an SCU to release (see above).
RESPONSE_TIMEOUT = 30.0
RELEASE_GRACE = 0.2
# SOP Instance UIDs looked up per query (a bound parameter each).
LOOKUP_BATCH = 500


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Request:
    """A storage commitment request, as the report needs it once the N-ACTION has been answered."""

    transaction_uid: str
    references: list[Reference]
    calling: str
    called: str


def action(services: Services, session: Session, peers: Peers, event: evt.Event) -> tuple[int, Dataset | None]:
    """pynetdicom's N-ACTION handler: success at once when the request is well formed; the report follows."""
    store = session.store
    if event.action_type != REQUEST_STORAGE_COMMITMENT:
        log.warning("N-ACTION by %s with action type %s refused", session.calling, event.action_type)
        return NO_SUCH_ACTION, None
    try:
        request = _request(event.action_information, session.calling, session.called)
    except _Malformed as exc:
        log.warning("storage commitment request by %s refused: %s", session.calling, exc)
        return exc.status, None
    except Exception:  # an action information pydicom cannot decode
        log.warning("storage commitment request by %s refused: undecodable action information", session.calling)
        return INVALID_ARGUMENT_VALUE, None
    responded = threading.Event()
    message_id = event.request.MessageID

    def sent(sent_event: evt.Event) -> None:
        message = sent_event.message
        if isinstance(message, N_ACTION_RSP) and message.command_set.MessageIDBeingRespondedTo == message_id:
            responded.set()

    event.assoc.bind(evt.EVT_DIMSE_SENT, sent)
    thread = threading.Thread(
        target=_report,
        args=(services, store, peers, event.assoc, request, responded, sent),
        name=f"storage-commitment {request.transaction_uid}",
        daemon=True,
    )
    thread.start()
    return SUCCESS, None


class _Malformed(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _request(info: Dataset, calling: str, called: str) -> Request:
    if "TransactionUID" not in info or "ReferencedSOPSequence" not in info:
        raise _Malformed(MISSING_ATTRIBUTE, "TransactionUID and ReferencedSOPSequence are required")
    try:
        transaction = normalize_uid(info.TransactionUID, "TransactionUID")
    except InvalidUid as exc:
        raise _Malformed(INVALID_ARGUMENT_VALUE, str(exc)) from None
    references = []
    for item in info.ReferencedSOPSequence:
        # Kept as sent: a UID that is not one is reported back as not held, under the text the SCU sent.
        references.append(
            Reference(_text(item.get("ReferencedSOPClassUID")), _text(item.get("ReferencedSOPInstanceUID")))
        )
    if not references:
        raise _Malformed(INVALID_ARGUMENT_VALUE, "ReferencedSOPSequence is empty")
    return Request(transaction, references, calling, called)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip(" \x00")


# ---- the report ---------------------------------------------------------------------------------


def report(services: Services, store: StoreRef, request: Request) -> tuple[Dataset, int]:
    """The N-EVENT-REPORT's Event Information and Event Type ID for a request."""
    held = _held(services, store, {r.sop_instance_uid for r in request.references})
    committed, failed = Sequence(), Sequence()
    for reference in request.references:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        classes = held.get(reference.sop_instance_uid)
        if classes is not None and reference.sop_class_uid in classes:
            committed.append(item)
            continue
        item.FailureReason = NO_SUCH_OBJECT_INSTANCE if classes is None else CLASS_INSTANCE_CONFLICT
        failed.append(item)
    info = Dataset()
    info.TransactionUID = request.transaction_uid
    info.RetrieveAETitle = request.called
    if committed:
        info.ReferencedSOPSequence = committed
    if failed:
        info.FailedSOPSequence = failed
    return info, FAILURES_EXIST if failed else ALL_HELD


def _held(services: Services, store: StoreRef, sop_uids: set[str]) -> dict[str, set[str]]:
    """The SOP classes this store holds each of `sop_uids` as (a UID can be in two series)."""
    valid = []
    for uid in sop_uids:
        try:
            valid.append(normalize_uid(uid))
        except InvalidUid:
            continue
    held: dict[str, set[str]] = {}
    for start in range(0, len(valid), LOOKUP_BATCH):
        batch = valid[start : start + LOOKUP_BATCH]
        query = search.Query(
            level="instance", filters={tags.SOP_UID: "\\".join(batch)}, limit=search.MAX_LIMIT["instance"]
        )
        for found in search.search(services.db, store, query):
            sop_uid = found[tags.SOP_UID]["Value"][0]
            sop_class = found.get(_SOP_CLASS_UID, {}).get("Value", [""])[0]
            held.setdefault(sop_uid, set()).add(sop_class)
    return held


_SOP_CLASS_UID = tags.tag_key("SOPClassUID") or ""


def _report(
    services: Services,
    store: StoreRef,
    peers: Peers,
    assoc: Any,
    request: Request,
    responded: threading.Event,
    sent: Any,
) -> None:
    try:
        info, event_type = report(services, store, request)
    except Exception:
        log.exception("storage commitment %s: the instances could not be looked up", request.transaction_uid)
        info, event_type = _all_failed(request), FAILURES_EXIST
    responded.wait(RESPONSE_TIMEOUT)
    assoc.unbind(evt.EVT_DIMSE_SENT, sent)
    if responded.is_set() and _still_open(assoc) and _send(assoc, info, event_type):
        _log_sent(request, info, event_type, "on the same association")
        return
    peer = peers.get(request.calling)
    if peer is None:
        log.warning(
            "storage commitment %s: %s released its association and is not a listed peer; the report is not sent",
            request.transaction_uid,
            request.calling,
        )
        return
    ae = AE(request.called)
    ae.add_requested_context(StorageCommitmentPushModel)
    # J.3.3: the SCP opens this association, in the SCP role of Storage Commitment.
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    try:
        report_assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
    except Exception:
        log.exception("storage commitment %s: cannot associate with %s", request.transaction_uid, peer.ae_title)
        return
    if not report_assoc.is_established:
        log.warning(
            "storage commitment %s: %s at %s:%d refused the association; the report is not sent",
            request.transaction_uid,
            peer.ae_title,
            peer.host,
            peer.port,
        )
        return
    try:
        if _send(report_assoc, info, event_type):
            _log_sent(request, info, event_type, f"on a new association to {peer.host}:{peer.port}")
    finally:
        report_assoc.release()


def _still_open(assoc: Any) -> bool:
    deadline = time.monotonic() + RELEASE_GRACE
    while time.monotonic() < deadline:
        if not assoc.is_established:
            return False
        time.sleep(0.01)
    return bool(assoc.is_established)


def _send(assoc: Any, info: Dataset, event_type: int) -> bool:
    try:
        status, _ = assoc.send_n_event_report(
            info, event_type, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
    except Exception as exc:  # the association went meanwhile, or holds no storage commitment context
        log.warning("storage commitment report not sent: %s", exc)
        return False
    if status.get("Status") != SUCCESS:
        log.warning("storage commitment report answered with status %s", status.get("Status"))
        return "Status" in status  # answered: the SCU has the report, even if it did not like it
    return True


def _all_failed(request: Request) -> Dataset:
    info = Dataset()
    info.TransactionUID = request.transaction_uid
    failed = Sequence()
    for reference in request.references:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        item.FailureReason = PROCESSING_FAILURE
        failed.append(item)
    info.FailedSOPSequence = failed
    return info


def _log_sent(request: Request, info: Dataset, event_type: int, how: str) -> None:
    log.info(
        "storage commitment %s for %s: %d held, %d not (event type %d), reported %s",
        request.transaction_uid,
        request.calling,
        len(info.get("ReferencedSOPSequence", [])),
        len(info.get("FailedSOPSequence", [])),
        event_type,
        how,
    )
