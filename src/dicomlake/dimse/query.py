"""C-FIND in the Patient Root and Study Root models, answered from the index with QIDO's matching.

A C-FIND identifier is translated into QIDO parameters and run by `store.search`, so that DIMSE and
DICOMweb match alike (wildcards, date ranges, UID lists, person names) from one implementation:
- the QueryRetrieveLevel picks QIDO's level: STUDY, SERIES and IMAGE are its study, series and instance
  searches; PATIENT (Patient Root only) is the distinct patients of the matching studies;
- every element with a value is a matching key. The unique keys of the levels above (PatientID,
  StudyInstanceUID, SeriesInstanceUID) are matching keys like any other, which is what restricts a
  hierarchical search. A key QIDO cannot match at that level (StudyTime, a sequence, ...) is answered as a
  return key only and every answer then carries 0xFF01, the standard's "optional keys were not supported
  for matching" (PS3.4 C.4.1.1.4);
- every element of the identifier is a return key: answered with the stored value, or empty when the
  store does not hold one; QueryRetrieveLevel, RetrieveAETitle (the called AE title, which names the
  store) and the stored SpecificCharacterSet are added;
- QIDO answers a page at a time; the pages are read until one comes back short, so nothing is cut off and
  no more than a page is held while the answers go out.
A bad identifier is one failure status with an ErrorComment saying what is wrong; nothing raises into
pynetdicom, which would answer 0xC311 and log a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pynetdicom import evt

from dicomlake.dimse.session import Session
from dicomlake.dimse.sop_classes import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from dicomlake.errors import InvalidArgument
from dicomlake.storage.db import Database
from dicomlake.store import search
from dicomlake.store.catalog import StoreRef

log = logging.getLogger("dicomlake.dimse")

# PS3.4 C.4.1.1.4 and PS3.7 C: the C-FIND statuses used here.
SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_KEYS_NOT_SUPPORTED = 0xFF01
CANCELLED = 0xFE00
SOP_CLASS_NOT_SUPPORTED = 0x0122
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

# QueryRetrieveLevel -> QIDO level, per information model.
_STUDY_ROOT = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
MODELS: dict[str, dict[str, str]] = {
    PatientRootQueryRetrieveInformationModelFind: {"PATIENT": "study", **_STUDY_ROOT},
    StudyRootQueryRetrieveInformationModelFind: _STUDY_ROOT,
}
# Results asked of QIDO at once: a page of answers in memory, and few enough round trips to the index.
PAGE_SIZE = 1000

_LEVEL = Tag("QueryRetrieveLevel")
_CHARSET = Tag("SpecificCharacterSet")
_RETRIEVE_AE = Tag("RetrieveAETitle")
# Elements that steer the query or are added to every answer: never matching keys, never looked up.
_CONTROL = frozenset({_LEVEL, _CHARSET, _RETRIEVE_AE, Tag("QueryRetrieveView")})
_PATIENT_GROUP = 0x0010
_PATIENT_COUNTS = {
    "00201200": "studies",  # NumberOfPatientRelatedStudies
    "00201202": "series",  # NumberOfPatientRelatedSeries
    "00201204": "instances",  # NumberOfPatientRelatedInstances
}
_STUDY_SERIES_COUNT, _STUDY_INSTANCE_COUNT = "00201206", "00201208"


class Refused(Exception):
    """An identifier this SCP will not run: a failure status and what to tell the SCU."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.offending = offending

    def answer(self) -> Dataset:
        answer = Dataset()
        answer.Status = self.status
        answer.ErrorComment = self.comment[:64]  # LO
        if self.offending is not None:
            answer.OffendingElement = [self.offending]
        return answer


@dataclass
class FindRequest:
    """A C-FIND identifier, understood: what to ask QIDO and what each answer must hold."""

    level: str  # the QueryRetrieveLevel
    query: search.Query
    return_keys: list[DataElement]
    unmatched: bool  # a matching key was given that QIDO cannot match


def find(db: Database, session: Session, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """pynetdicom's C-FIND handler: (0xFF00 or 0xFF01, identifier) per match, then success, 0xFE00 when
    cancelled, or one failure status."""
    store = session.store
    try:
        request = parse_identifier(event.request.AffectedSOPClassUID or "", _identifier(event))
        pending = PENDING_KEYS_NOT_SUPPORTED if request.unmatched else PENDING
        for answer in answers(db, store, request, session.called):
            if event.is_cancelled:
                yield CANCELLED, None
                return
            yield pending, answer
    except (Refused, InvalidArgument) as exc:
        # InvalidArgument: a value search.py will not match (a malformed date, a non-integer InstanceNumber, ...).
        refused = exc if isinstance(exc, Refused) else Refused(IDENTIFIER_DOES_NOT_MATCH, str(exc))
        # The comment is not logged: it may quote the identifier, which holds patients' data.
        log.info("C-FIND from %s refused with 0x%04X", session.calling, refused.status)
        yield refused.answer(), None
        return
    except Exception:
        log.exception("C-FIND from %s failed", session.calling)
        yield Refused(UNABLE_TO_PROCESS, "the query could not be run (see the server log)").answer(), None
        return
    yield SUCCESS, None


def _identifier(event: evt.Event) -> Dataset:
    """The request identifier with every element decoded (pydicom decodes lazily, so a bad one would
    otherwise fail later, in the middle of the answers)."""
    try:
        identifier = event.identifier
        for _elem in identifier:
            pass
    except Exception:
        raise Refused(UNABLE_TO_PROCESS, "the identifier could not be decoded") from None
    return identifier


# ---- the identifier ---------------------------------------------------------------------------


def parse_identifier(model: str, identifier: Dataset) -> FindRequest:
    """The identifier of a C-FIND in `model` as QIDO parameters and return keys; Refused says what is wrong,
    InvalidArgument what QIDO refuses."""
    levels = MODELS.get(model)
    if levels is None:
        raise Refused(SOP_CLASS_NOT_SUPPORTED, f"C-FIND in {model} is not supported")
    level = str(identifier.get("QueryRetrieveLevel") or "").strip()
    if not level:
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, "the identifier has no QueryRetrieveLevel", _LEVEL)
    if level not in levels:
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, f"QueryRetrieveLevel {level[:16]!r} is not in this model", _LEVEL)
    qido_level = levels[level]
    # Group lengths and the control elements are neither matched nor answered.
    return_keys = [e for e in identifier if e.tag.element != 0x0000 and e.tag not in _CONTROL]
    params: list[tuple[str, str]] = []
    unmatched = False
    for elem in return_keys:
        if not _has_value(elem):
            continue
        if elem.VR == "SQ" or not _matchable(level, qido_level, elem):
            unmatched = True
            continue
        params.append((f"{elem.tag:08X}", _text(elem)))
    params.append(("includefield", ",".join(f"{elem.tag:08X}" for elem in return_keys)))
    params.append(("limit", str(PAGE_SIZE)))
    return FindRequest(level, search.parse_query(qido_level, params), return_keys, unmatched)


def _matchable(level: str, qido_level: str, elem: DataElement) -> bool:
    """QIDO matches it at this level; at PATIENT level only patient attributes match, as in a hierarchical
    search (a study attribute there would make it relational)."""
    if level == "PATIENT" and elem.tag.group != _PATIENT_GROUP:
        return False
    return search.searchable(qido_level, f"{elem.tag:08X}")


def _has_value(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return any(_has_value(inner) for item in elem.value for inner in item)
    return _text(elem) != ""


def _text(elem: DataElement) -> str:
    """A matching key's value as QIDO takes it: a list (UIDs, modalities) backslash-separated, as in DIMSE."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \0")
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


# ---- the answers ------------------------------------------------------------------------------


def answers(db: Database, store: StoreRef, request: FindRequest, retrieve_ae: str) -> Iterator[Dataset]:
    """The answer identifiers, one per match, read from QIDO a page at a time."""
    results = _all_pages(db, store, request.query)
    if request.level == "PATIENT":
        results = _patients(results)
    for result in results:
        yield _answer(result, request, retrieve_ae)


def _all_pages(db: Database, store: StoreRef, query: search.Query) -> Iterator[dict[str, Any]]:
    """Every QIDO result, page after page, until a page comes back short. The offset is set directly: QIDO's
    MAX_OFFSET bounds what a URL may ask, not what the listener reads."""
    query.offset = 0
    while True:
        page = search.search(db, store, query)
        yield from page
        if len(page) < query.limit:
            return
        query.offset += query.limit


def _patients(studies: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The distinct patients (PatientID and PatientName) of study results, with their patient attributes
    (group 0010) as their first study holds them and their counts of studies, series and instances. The
    studies come in UID order, not by patient, so the patients are gathered before any is answered: one
    small entry per patient, not per study."""
    patients: dict[tuple[str, str], dict[str, Any]] = {}
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for study in studies:
        identity = (repr(study.get("00100020", {}).get("Value")), repr(study.get("00100010", {}).get("Value")))
        if identity not in patients:
            patients[identity] = {k: v for k, v in study.items() if k.startswith("0010") or k == "00080005"}
            counts[identity] = {"studies": 0, "series": 0, "instances": 0}
        count = counts[identity]
        count["studies"] += 1
        count["series"] += _count(study, _STUDY_SERIES_COUNT)
        count["instances"] += _count(study, _STUDY_INSTANCE_COUNT)
    for identity, patient in patients.items():
        for key, name in _PATIENT_COUNTS.items():
            patient[key] = {"vr": "IS", "Value": [counts[identity][name]]}
        yield patient


def _count(result: dict[str, Any], key: str) -> int:
    values = result.get(key, {}).get("Value") or [0]
    return int(values[0])


def _answer(result: dict[str, Any], request: FindRequest, retrieve_ae: str) -> Dataset:
    """One match as a C-FIND answer: each return key with its stored value, or empty."""
    wanted = {f"{elem.tag:08X}" for elem in request.return_keys} | {"00080005"}
    # Bulk data is never part of an answer (QIDO leaves it out too); such a key is answered empty.
    stored = Dataset.from_json({k: v for k, v in result.items() if k in wanted and "BulkDataURI" not in v})
    answer = Dataset()
    if _CHARSET in stored and stored[_CHARSET].value:
        answer.add(stored[_CHARSET])
    answer.QueryRetrieveLevel = request.level
    answer.RetrieveAETitle = retrieve_ae
    for elem in request.return_keys:
        if elem.tag in stored:
            answer.add(stored[elem.tag])
        else:
            answer.add(DataElement(elem.tag, elem.VR, [] if elem.VR == "SQ" else None))
    return answer
