"""C-FIND from pynetdicom and DCMTK's findscu: the answers are QIDO's answers to the same query, in the Patient
Root and Study Root models at every level, with cancel and bad identifiers answered by the standard's statuses."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dimse_helpers import AeStore, DimseServer, ae_store, dcmtk, needs_dcmtk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PATIENT_ROOT,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT,
)

from conftest import Store, dicom_file

JSON = {"Accept": "application/dicom+json"}
PENDING, PENDING_WARNING, CANCELLED, SUCCESS, NO_MATCH_FOR_SOP_CLASS = 0xFF00, 0xFF01, 0xFE00, 0x0000, 0xA900
MODELS = {"patient root": PATIENT_ROOT, "study root": STUDY_ROOT}

# label: (PatientName, PatientID, PatientBirthDate, StudyDate, source file, [(modality, instances) per series])
CORPUS = {
    "A": ("Doe^John", "PID-1", "19700101", "20200115", "CT_small.dcm", [("CT", 2), ("MR", 1)]),
    "B": ("Doe^John", "PID-1", "19700101", "20210301", "MR_small.dcm", [("MR", 1)]),
    "C": ("Doe^Jane", "PID-2", "19800202", "20210610", "CT_small.dcm", [("CT", 1)]),
    "D": ("Smith^Anna", "PID-3", "19900303", "20191231", "rtplan.dcm", [("RTPLAN", 1)]),
    "E": ("Müller^Jürgen", "PID-4", "20000404", "20220301", "MR_small.dcm", [("MR", 1)]),
}
STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances")
IMAGE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows")


@dataclass
class Corpus:
    target: AeStore
    studies: dict[str, str]  # label -> StudyInstanceUID
    series: dict[str, list[str]] = field(default_factory=dict)  # label -> SeriesInstanceUIDs

    @property
    def store(self) -> Store:
        return self.target.store


# ---- storing and asking ----------------------------------------------------------------------------


def to_bytes(ds: Dataset) -> bytes:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def post_many(store: Store, instances: list[bytes]) -> None:
    """One multipart STOW request for many instances."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + data + b"\r\n" for data in instances) + f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = requests.post(
        f"{store.dicomweb}/studies", data=body, timeout=120, headers={"Content-Type": content_type, **JSON}
    )
    assert response.status_code == 200, response.text[:2000]


@pytest.fixture(scope="module")
def corpus(dimse: DimseServer) -> Corpus:
    """Five studies of four patients, cloned from real files with new UIDs and known attributes."""
    target = ae_store(dimse)
    corpus = Corpus(target, {})
    instances = []
    for label, (name, patient_id, birth, date, source, plan) in CORPUS.items():
        corpus.studies[label] = generate_uid()
        corpus.series[label] = []
        for number, (modality, count) in enumerate(plan, start=1):
            series_uid = generate_uid()
            corpus.series[label].append(series_uid)
            for instance_number in range(1, count + 1):
                ds = pydicom.dcmread(dicom_file(source))
                ds.SpecificCharacterSet = "ISO_IR 100"
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
                    corpus.studies[label],
                    series_uid,
                    generate_uid(),
                )
                ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.StudyDate = name, patient_id, birth, date
                ds.AccessionNumber, ds.StudyDescription = f"ACC-{label}", f"Study {label}"
                ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, number, instance_number
                instances.append(to_bytes(ds))
    post_many(target.store, instances)
    return corpus


def identifier(level: str, keys: tuple[str, ...], **values: Any) -> Dataset:
    """A C-FIND identifier: every key of `keys` as a return key, those in `values` with that value."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in dict.fromkeys(keys + tuple(values)):
        setattr(ds, keyword, values.get(keyword))
    return ds


@dataclass
class Found:
    answers: list[Dataset]
    statuses: list[int]  # the pending ones, then the final one
    final: Dataset


def c_find(target: AeStore, model: str, ds: Dataset, port: int) -> Found:
    ae = AE("FINDSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=target.ae_title)
    assert assoc.is_established
    try:
        return collect(assoc.send_c_find(ds, model))
    finally:
        assoc.release()


def collect(responses) -> Found:
    answers, statuses = [], []
    for status, answer in responses:
        statuses.append(status.Status)
        if answer is not None:
            answers.append(answer)
        final = status
    return Found(answers, statuses, final)


def qido(store: Store, path: str, params: list[tuple[str, str]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    response = requests.get(
        f"{store.dicomweb}/{path}", params=[*params, ("includefield", ",".join(keys))], headers=JSON, timeout=30
    )
    if response.status_code == 204:
        return []
    assert response.status_code == 200, response.text
    return response.json()


def value(ds: Dataset, keyword: str) -> Any:
    """An element's value as plain text, a list for several values, None when empty or absent."""
    if keyword not in ds or ds[keyword].value in (None, "", []):
        return None
    data = ds[keyword].value
    if isinstance(data, pydicom.multival.MultiValue | list):
        return [str(v) for v in data]
    return str(data)


def by_uid(answers: list[Dataset], uid_keyword: str, keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {str(ds[uid_keyword].value): {k: value(ds, k) for k in keys} for ds in answers}


# ---- C-FIND answers equal QIDO's -------------------------------------------------------------------


# (level, keys, matching values for C-FIND, QIDO path, QIDO params), UIDs written as "{A}" or "{A0}" (series).
CASES = {
    "wildcard name": ("STUDY", STUDY_KEYS, {"PatientName": "Doe^*"}, "studies", [("PatientName", "Doe^*")]),
    "question mark": ("STUDY", STUDY_KEYS, {"PatientName": "Doe^J?ne"}, "studies", [("PatientName", "Doe^J?ne")]),
    "date range": (
        "STUDY",
        STUDY_KEYS,
        {"StudyDate": "20200101-20211231"},
        "studies",
        [("StudyDate", "20200101-20211231")],
    ),
    "open date range": ("STUDY", STUDY_KEYS, {"StudyDate": "-20200115"}, "studies", [("StudyDate", "-20200115")]),
    "uid list": ("STUDY", STUDY_KEYS, {"StudyInstanceUID": "{A}\\{D}"}, "studies", [("StudyInstanceUID", "{A},{D}")]),
    "modality in study": ("STUDY", STUDY_KEYS, {"ModalitiesInStudy": "MR"}, "studies", [("ModalitiesInStudy", "MR")]),
    "exact patient id": ("STUDY", STUDY_KEYS, {"PatientID": "PID-1"}, "studies", [("PatientID", "PID-1")]),
    "series of a study": (
        "SERIES",
        SERIES_KEYS,
        {"StudyInstanceUID": "{A}"},
        "studies/{A}/series",
        [],
    ),
    "series by modality": (
        "SERIES",
        SERIES_KEYS,
        {"StudyInstanceUID": "{A}\\{B}\\{C}", "Modality": "MR"},
        "series",
        [("StudyInstanceUID", "{A},{B},{C}"), ("Modality", "MR")],
    ),
    "images of a series": (
        "IMAGE",
        IMAGE_KEYS,
        {"StudyInstanceUID": "{A}", "SeriesInstanceUID": "{A0}"},
        "studies/{A}/series/{A0}/instances",
        [],
    ),
    "images by number": (
        "IMAGE",
        IMAGE_KEYS,
        {"StudyInstanceUID": "{A}", "InstanceNumber": "2"},
        "studies/{A}/instances",
        [("InstanceNumber", "2")],
    ),
}
UID_OF_LEVEL = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


def fill(text: str, corpus: Corpus) -> str:
    names = {label: uid for label, uid in corpus.studies.items()}
    for label, uids in corpus.series.items():
        names.update({f"{label}{n}": uid for n, uid in enumerate(uids)})
    return text.format(**names)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", CASES)
def test_c_find_answers_are_the_qido_answers(corpus: Corpus, dimse: DimseServer, model: str, case: str) -> None:
    level, keys, matching, path, params = CASES[case]
    matching = {k: fill(v, corpus) for k, v in matching.items()}
    if model == "patient root" and level != "STUDY":
        # The unique key of the patient level restricts the lower levels in the Patient Root model.
        matching["PatientID"] = "PID-1"
        params = [*params, ("PatientID", "PID-1")]
    found = c_find(corpus.target, MODELS[model], identifier(level, keys, **matching), dimse.port)
    results = qido(corpus.store, fill(path, corpus), [(k, fill(v, corpus)) for k, v in params], keys)
    assert results, "the case must match something"
    assert found.final.Status == SUCCESS
    assert set(found.statuses[:-1]) == {PENDING}
    expected = by_uid([Dataset.from_json(r) for r in results], UID_OF_LEVEL[level], keys)
    assert by_uid(found.answers, UID_OF_LEVEL[level], keys) == expected
    for answer in found.answers:
        assert answer.QueryRetrieveLevel == level
        assert answer.RetrieveAETitle == corpus.target.ae_title
        assert answer.SpecificCharacterSet == "ISO_IR 100"
        assert set(keys) <= {elem.keyword for elem in answer}


def test_study_level_answers_hold_the_stored_values(corpus: Corpus, dimse: DimseServer) -> None:
    found = c_find(corpus.target, STUDY_ROOT, identifier("STUDY", STUDY_KEYS, PatientID="PID-4"), dimse.port)
    [answer] = found.answers
    assert str(answer.PatientName) == "Müller^Jürgen"  # sent in ISO_IR 100, as stored
    assert answer.StudyInstanceUID == corpus.studies["E"]
    assert answer.StudyDate == "20220301"
    assert answer.ModalitiesInStudy == "MR"
    assert answer.NumberOfStudyRelatedInstances == 1


def test_patient_level_answers_distinct_patients_with_their_counts(corpus: Corpus, dimse: DimseServer) -> None:
    keys = (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    )
    found = c_find(corpus.target, PATIENT_ROOT, identifier("PATIENT", keys, PatientName="Doe*"), dimse.port)
    assert found.final.Status == SUCCESS
    patients = by_uid(found.answers, "PatientID", keys)
    assert patients == {
        "PID-1": {
            "PatientName": "Doe^John",
            "PatientID": "PID-1",
            "PatientBirthDate": "19700101",
            "NumberOfPatientRelatedStudies": "2",
            "NumberOfPatientRelatedSeries": "3",
            "NumberOfPatientRelatedInstances": "4",
        },
        "PID-2": {
            "PatientName": "Doe^Jane",
            "PatientID": "PID-2",
            "PatientBirthDate": "19800202",
            "NumberOfPatientRelatedStudies": "1",
            "NumberOfPatientRelatedSeries": "1",
            "NumberOfPatientRelatedInstances": "1",
        },
    }
    assert {a.QueryRetrieveLevel for a in found.answers} == {"PATIENT"}
    # Then down the Patient Root hierarchy: the studies of one patient.
    studies = c_find(corpus.target, PATIENT_ROOT, identifier("STUDY", STUDY_KEYS, PatientID="PID-1"), dimse.port)
    assert {a.StudyInstanceUID for a in studies.answers} == {corpus.studies["A"], corpus.studies["B"]}


def test_a_key_the_store_does_not_hold_is_answered_empty(corpus: Corpus, dimse: DimseServer) -> None:
    ds = identifier("IMAGE", IMAGE_KEYS, StudyInstanceUID=corpus.studies["C"])
    ds.PatientReligiousPreference = ""
    ds.add_new(0x00091010, "LO", "")  # a private element
    ds.ReferencedStudySequence = []
    found = c_find(corpus.target, STUDY_ROOT, ds, dimse.port)
    [answer] = found.answers
    assert answer.PatientReligiousPreference == ""
    assert answer[0x00091010].value in (None, "")
    assert list(answer.ReferencedStudySequence) == []
    assert answer.Rows == 128  # what CT_small.dcm holds
    # At the study level the store keeps only the study's attributes: an instance attribute comes back empty.
    found = c_find(corpus.target, STUDY_ROOT, identifier("STUDY", ("Manufacturer",), PatientID="PID-2"), dimse.port)
    [answer] = found.answers
    assert "Manufacturer" in answer and answer.Manufacturer in (None, "")


def test_a_matching_key_qido_cannot_match_is_a_pending_warning(corpus: Corpus, dimse: DimseServer) -> None:
    plain = c_find(corpus.target, STUDY_ROOT, identifier("STUDY", STUDY_KEYS, PatientName="Doe*"), dimse.port)
    timed = c_find(
        corpus.target,
        STUDY_ROOT,
        identifier("STUDY", STUDY_KEYS, PatientName="Doe*", StudyTime="0800-1200"),
        dimse.port,
    )
    assert set(plain.statuses[:-1]) == {PENDING}
    assert set(timed.statuses[:-1]) == {PENDING_WARNING}
    assert timed.final.Status == SUCCESS
    keys = ("StudyInstanceUID",)
    assert by_uid(timed.answers, "StudyInstanceUID", keys) == by_uid(plain.answers, "StudyInstanceUID", keys)


# ---- DCMTK ---------------------------------------------------------------------------------------------


def findscu(dimse: DimseServer, target: AeStore, out: Path, model: str, *keys: str) -> list[Dataset]:
    out.mkdir()
    args = ["findscu", "-P" if model == "patient root" else "-S", "-X", "-od", str(out), "-aec", target.ae_title]
    for key in keys:
        args += ["-k", key]
    result = dcmtk(*args, "127.0.0.1", str(dimse.port))
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@needs_dcmtk
def test_findscu_gets_the_answers_pynetdicom_gets(corpus: Corpus, dimse: DimseServer, tmp_path: Path) -> None:
    keys = ("PatientID", "StudyDate", "StudyInstanceUID")
    dcmtk_answers = findscu(
        dimse,
        corpus.target,
        tmp_path / "study",
        "study root",
        "QueryRetrieveLevel=STUDY",
        "PatientName=Doe*",
        "StudyDate=20200101-20211231",
        "PatientID",
        "StudyInstanceUID",
    )
    ours = c_find(
        corpus.target,
        STUDY_ROOT,
        identifier("STUDY", keys, PatientName="Doe*", StudyDate="20200101-20211231"),
        dimse.port,
    )
    assert len(dcmtk_answers) == 3
    assert by_uid(dcmtk_answers, "StudyInstanceUID", keys) == by_uid(ours.answers, "StudyInstanceUID", keys)

    patient_keys = ("PatientName", "PatientID", "NumberOfPatientRelatedStudies")
    dcmtk_patients = findscu(
        dimse,
        corpus.target,
        tmp_path / "patient",
        "patient root",
        "QueryRetrieveLevel=PATIENT",
        "PatientName",
        "PatientID",
        "NumberOfPatientRelatedStudies",
    )
    our_patients = c_find(corpus.target, PATIENT_ROOT, identifier("PATIENT", patient_keys), dimse.port)
    assert len(dcmtk_patients) == 4
    assert by_uid(dcmtk_patients, "PatientID", patient_keys) == by_uid(our_patients.answers, "PatientID", patient_keys)


# ---- cancel --------------------------------------------------------------------------------------------


def tiny_instance(study: str, series: str, number: int) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number
    ds.PatientName, ds.PatientID, ds.Modality = "Many^Images", "MANY", "OT"
    return to_bytes(ds)


def test_c_cancel_stops_the_answers(dimse: DimseServer) -> None:
    target = ae_store(dimse)
    study, series, total = generate_uid(), generate_uid(), 1500
    post_many(target.store, [tiny_instance(study, series, n) for n in range(1, total + 1)])
    ae = AE("FINDSCU")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=target.ae_title)
    try:
        ds = identifier("IMAGE", ("SOPInstanceUID", "InstanceNumber"), StudyInstanceUID=study)
        responses = assoc.send_c_find(ds, STUDY_ROOT, msg_id=7)
        status, first = next(responses)
        assert status.Status == PENDING and first is not None
        assoc.send_c_cancel(7, query_model=STUDY_ROOT)
        rest = collect(responses)
        assert rest.final.Status == CANCELLED
        assert 1 + len(rest.answers) < total
        # The association goes on: the whole answer, every page of it, to the next query.
        everything = collect(assoc.send_c_find(ds, STUDY_ROOT, msg_id=8))
    finally:
        assoc.release()
    assert everything.final.Status == SUCCESS
    assert len(everything.answers) == total
    assert sorted(a.InstanceNumber for a in everything.answers) == list(range(1, total + 1))


# ---- bad identifiers -----------------------------------------------------------------------------------


def bad_identifiers() -> dict[str, tuple[str, Dataset, str]]:
    """case: (model, identifier, the name its ErrorComment must hold)."""
    no_level = Dataset()
    no_level.PatientName = "Doe*"
    return {
        "no level": (STUDY_ROOT, no_level, "QueryRetrieveLevel"),
        "unknown level": (STUDY_ROOT, identifier("FRAME", ("PatientName",)), "QueryRetrieveLevel"),
        "patient level in study root": (STUDY_ROOT, identifier("PATIENT", ("PatientName",)), "QueryRetrieveLevel"),
        "malformed date": (PATIENT_ROOT, identifier("STUDY", ("PatientName",), StudyDate="2020"), "StudyDate"),
        "impossible date": (STUDY_ROOT, identifier("SERIES", (), StudyDate="20201301-"), "StudyDate"),
    }


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_bad_identifiers_fail_and_everything_keeps_working(corpus: Corpus, dimse: DimseServer) -> None:
    ae = AE("FINDSCU")
    ae.add_requested_context(STUDY_ROOT)
    ae.add_requested_context(PATIENT_ROOT)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=corpus.target.ae_title)
    try:
        for case, (model, ds, named) in bad_identifiers().items():
            found = collect(assoc.send_c_find(ds, model))
            assert found.answers == [], case
            assert found.statuses == [NO_MATCH_FOR_SOP_CLASS], case
            assert named in found.final.ErrorComment, case
        good = collect(assoc.send_c_find(identifier("STUDY", STUDY_KEYS, PatientID="PID-3"), STUDY_ROOT))
        assert good.final.Status == SUCCESS
        assert [a.StudyInstanceUID for a in good.answers] == [corpus.studies["D"]]
    finally:
        assoc.release()
    response = requests.get(f"{corpus.store.dicomweb}/studies", params={"PatientID": "PID-3"}, headers=JSON, timeout=30)
    assert response.status_code == 200
    assert [r["0020000D"]["Value"][0] for r in response.json()] == [corpus.studies["D"]]
