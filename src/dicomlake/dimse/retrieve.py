"""C-MOVE to a listed peer and C-GET on the requesting association: the instances an identifier names, read from
the blob store one at a time, each handed to pynetdicom as a C-STORE sub-operation.

What is sent: an instance goes in its stored transfer syntax whenever the receiver accepted that syntax for its
SOP class. pydicom keeps the elements it read as raw bytes and writes them back unchanged, so the data set
arrives as stored, with three exceptions pydicom makes when it writes: group length elements (gggg,0000), retired
since 2008, are left out; an element stored with VR UN whose tag the dictionary knows goes with its known VR; and
an element whose value pydicom cannot write fails that sub-operation. Otherwise the instance is transcoded (as
WADO-RS does, `dicom/pixels.py`) into a syntax the receiver accepted, and when none will do its sub-operation
fails: counted in the final response, never an error of the whole retrieve.

pynetdicom asks a C-MOVE handler for the destination before it asks for anything else, and opens the association
to it before it asks for the first status: an identifier that names no instances, or is invalid, is answered
after that association (see `move`)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext

from dicomlake.dicom import pixels, tags
from dicomlake.dicom.uids import InvalidUid, normalize_uid
from dicomlake.dimse.peers import Peers
from dicomlake.dimse.session import Session
from dicomlake.dimse.sop_classes import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    Verification,
)
from dicomlake.errors import NotFound
from dicomlake.services import Services
from dicomlake.store import instances, search
from dicomlake.store.catalog import StoreRef
from dicomlake.store.instances import InstanceRow

log = logging.getLogger("dicomlake.dimse")

# PS3.4 C.4.2.1.5 and C.4.3.1.4 statuses.
PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
# PS3.8 9.3.2.2: presentation context IDs are the odd numbers 1 to 255.
MAX_CONTEXTS = 128
# The syntaxes every storage SCP accepts (PS3.5 10.1: Implicit VR Little Endian is the default), offered for each
# SOP class next to its stored syntaxes so that an instance a destination refuses as stored can be transcoded.
_FALLBACK = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# The unique key of each level (PS3.4 C.6.1.1 and C.6.2.1), from the top.
_LEVEL_KEYS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("PatientID", "StudyInstanceUID"),
    "SERIES": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
_PATIENT_ID = tags.tag_key("PatientID") or ""
_PATIENT_ROOT = {PatientRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelGet}


class Refused(Exception):
    """An identifier that cannot be answered: the status and a comment for the final response."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass
class _Tally:
    """What one retrieve handed over, for its log line (the receiver's answers are counted by pynetdicom)."""

    matched: int = 0
    sent: int = 0
    transcoded: int = 0
    unsendable: int = 0
    cancelled: bool = False

    def line(self) -> str:
        text = f"{self.matched} matched, {self.sent} sent ({self.transcoded} transcoded), {self.unsendable} not sent"
        if self.cancelled:
            text += ", cancelled"
        return text


def move(services: Services, session: Session, peers: Peers, event: evt.Event) -> Iterator[Any]:
    """pynetdicom's C-MOVE handler: the destination (a listed peer), the number of sub-operations, then a pending
    status and a dataset per instance."""
    store = session.store
    destination = _text(event.move_destination)
    peer = peers.get(destination)
    if peer is None:
        log.warning(
            "C-MOVE by %s from %s refused: destination %r is not a listed peer",
            session.calling,
            session.called,
            destination,
        )
        yield None, None  # pynetdicom answers 0xA801, move destination unknown
        return
    who = f"C-MOVE by {session.calling} from {session.called} to {destination}"
    rows = _rows(services, store, event, who)
    if isinstance(rows, Refused):
        log.warning("%s refused: %s", who, rows.comment)
        # pynetdicom opens an association to the destination before it asks for a status, and a failure status is
        # only taken after one sub-operation is announced: the smallest association, then the failure.
        yield peer.host, peer.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield _failure(rows)
        return
    receiver = _Receiver()
    handlers = [(evt.EVT_ESTABLISHED, receiver.established)]
    yield peer.host, peer.port, {"contexts": contexts_for(rows), "evt_handlers": handlers}
    yield len(rows)
    yield from _sub_operations(services, rows, event, receiver, who)


def get(services: Services, session: Session, event: evt.Event) -> Iterator[Any]:
    """pynetdicom's C-GET handler: the number of sub-operations, then a pending status and a dataset per instance,
    sent back on the requesting association in the storage contexts it accepted with the SCP role."""
    store = session.store
    who = f"C-GET by {session.calling} from {session.called}"
    rows = _rows(services, store, event, who)
    if isinstance(rows, Refused):
        log.warning("%s refused: %s", who, rows.comment)
        yield 1
        yield _failure(rows)
        return
    yield len(rows)
    yield from _sub_operations(services, rows, event, _Receiver(event.assoc), who)


def _rows(services: Services, store: StoreRef, event: evt.Event, who: str) -> list[InstanceRow] | Refused:
    try:
        return select(services, store, event)
    except Refused as refused:
        return refused
    except Exception:
        log.exception("%s: the instances could not be looked up", who)
        return Refused(UNABLE_TO_PROCESS, "the instances could not be looked up")


# ---- which instances ----------------------------------------------------------------------------


def select(services: Services, store: StoreRef, event: evt.Event) -> list[InstanceRow]:
    """The instances a C-MOVE or C-GET identifier names (without their metadata), in a stable order; Refused if
    the identifier lacks its level's unique key or holds an invalid one."""
    try:
        identifier = event.identifier
        level = _text(identifier.get("QueryRetrieveLevel", "")).upper()
        patient_root = event.request.AffectedSOPClassUID in _PATIENT_ROOT
        values = {keyword: identifier.get(keyword) for keyword in _LEVEL_KEYS["IMAGE"]}
    except Exception as exc:  # a request pydicom cannot decode
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, f"the identifier cannot be read: {exc}"[:64]) from None
    if level not in _LEVEL_KEYS or (level == "PATIENT" and not patient_root):
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, f"QueryRetrieveLevel {level!r} is not one of this model's")
    if level == "PATIENT":
        return _patient(services, store, values["PatientID"])
    studies = _uids(values, "StudyInstanceUID", many=level == "STUDY")
    series = _uids(values, "SeriesInstanceUID", many=level == "SERIES") if level in ("SERIES", "IMAGE") else None
    sops = set(_uids(values, "SOPInstanceUID", many=True)) if level == "IMAGE" else None
    rows: list[InstanceRow] = []
    for study in dict.fromkeys(studies):
        # One query per study; the series and instances asked for are picked from it.
        for row in _find(services, store, study):
            if (series is None or row.series_uid in series) and (sops is None or row.sop_uid in sops):
                rows.append(row)
    return rows


def _patient(services: Services, store: StoreRef, value: Any) -> list[InstanceRow]:
    patient_id = _text(value)
    if not patient_id or any(ch in patient_id for ch in "*?\\"):
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, "PATIENT level needs one PatientID, without wildcards")
    query = search.Query(level="study", filters={_PATIENT_ID: patient_id}, limit=search.MAX_LIMIT["study"])
    found = search.search(services.db, store, query)
    rows: list[InstanceRow] = []
    for study in found:
        rows += _find(services, store, study[tags.STUDY_UID]["Value"][0])
    return rows


def _find(services: Services, store: StoreRef, study: str) -> list[InstanceRow]:
    try:
        return instances.find(services.db, store, study, with_metadata=False)
    except NotFound:
        return []


def _uids(values: dict[str, Any], keyword: str, many: bool) -> list[str]:
    """The UIDs of a unique key: a list at the retrieve level, one value above it (PS3.4 C.4.2.2.1)."""
    value = values.get(keyword)
    texts = list(value) if isinstance(value, (list, MultiValue)) else _text(value).split("\\")
    texts = [t for t in (_text(t) for t in texts) if t]
    if not texts:
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, f"{keyword} is missing")
    if len(texts) > 1 and not many:
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, f"{keyword} must be one UID above the retrieve level")
    try:
        return [normalize_uid(t, keyword) for t in texts]
    except InvalidUid as exc:
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, str(exc)[:64]) from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip(" \x00")


def _failure(refused: Refused) -> tuple[Dataset, None]:
    status = Dataset()
    status.Status = refused.status
    status.ErrorComment = refused.comment[:64]  # LO
    return status, None


# ---- what is sent -------------------------------------------------------------------------------


def contexts_for(rows: list[InstanceRow]) -> list[PresentationContext]:
    """Presentation contexts for sending `rows`: one per SOP class and stored transfer syntax (one context
    carries one accepted syntax), then one per SOP class with the uncompressed syntaxes to transcode into."""
    stored: dict[tuple[str, str], None] = {}
    for row in rows:
        if row.sop_class_uid:
            stored[(row.sop_class_uid, row.transfer_syntax_uid)] = None
    contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in stored]
    for sop_class in dict.fromkeys(sop_class for sop_class, _ in stored):
        contexts.append(build_context(sop_class, list(_FALLBACK)))
    return contexts[:MAX_CONTEXTS] or [build_context(Verification)]


class _Receiver:
    """The association the instances go over, and the syntaxes it accepted for each SOP class in the role of the
    storage SCU (ours): the requesting association for C-GET, the one pynetdicom opens to a C-MOVE destination."""

    def __init__(self, assoc: Any = None) -> None:
        self.assoc = assoc
        self._accepted: dict[str, list[str]] | None = None

    def established(self, event: evt.Event) -> None:
        self.assoc = event.assoc

    def accepted(self, sop_class: str) -> list[str]:
        if self._accepted is None:
            self._accepted = {}
            for context in self.assoc.accepted_contexts if self.assoc is not None else []:
                if context.as_scu:
                    syntaxes = self._accepted.setdefault(context.abstract_syntax, [])
                    syntaxes.append(context.transfer_syntax[0])
        return self._accepted.get(sop_class, [])


def _sub_operations(
    services: Services, rows: list[InstanceRow], event: evt.Event, receiver: _Receiver, who: str
) -> Iterator[tuple[int, Dataset | None]]:
    tally = _Tally(matched=len(rows))
    try:
        for row in rows:
            if event.is_cancelled:
                tally.cancelled = True
                yield CANCEL, None
                return
            # Read here, as pynetdicom asks for it: one instance in memory at a time.
            yield PENDING, _dataset(services, row, receiver, tally)
    finally:
        # Also when pynetdicom stops asking (a cancel, an abort): the generator is closed then.
        log.info("%s: %s", who, tally.line())


def _dataset(services: Services, row: InstanceRow, receiver: _Receiver, tally: _Tally) -> Dataset:
    """The instance as it is to be sent; one that cannot be sent is a dataset without file meta, which pynetdicom
    cannot send and counts as a failed sub-operation under its SOP Instance UID."""
    accepted = receiver.accepted(row.sop_class_uid or "")
    try:
        data = services.blobs.get(row.blob_key)
        syntax = row.transfer_syntax_uid
        if syntax not in accepted:
            data, syntax = _transcoded(row, data, accepted)
            tally.transcoded += 1
        dataset = pydicom.dcmread(io.BytesIO(data))
        dataset.file_meta.TransferSyntaxUID = UID(syntax)
    except Exception as exc:  # a lost blob, an instance that cannot be transcoded or read: one failed sub-operation
        log.warning("instance %s not sent (a failed sub-operation): %s", row.sop_uid, exc)
        tally.unsendable += 1
        stub = Dataset()
        stub.SOPClassUID = row.sop_class_uid or ""
        stub.SOPInstanceUID = row.sop_uid
        return stub
    tally.sent += 1
    return dataset


class Unsendable(Exception):
    """An instance the receiver accepted no transfer syntax for, and that no accepted syntax can carry."""


def _transcoded(row: InstanceRow, data: bytes, accepted: list[str]) -> tuple[bytes, str]:
    if not accepted:
        raise Unsendable(f"the receiver accepted no presentation context for SOP class {row.sop_class_uid}")
    # Uncompressed first: every instance can be decompressed, and none loses anything on the way.
    preferred = [s for s in _FALLBACK if s in accepted] + [s for s in dict.fromkeys(accepted) if s not in _FALLBACK]
    errors = []
    for syntax in preferred:
        try:
            return pixels.transcode(data, syntax), syntax
        except pixels.PixelError as exc:
            errors.append(str(exc))
    raise Unsendable(f"cannot transcode from {row.transfer_syntax_uid} to an accepted syntax: {'; '.join(errors)}")
