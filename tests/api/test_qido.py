"""QIDO-RS as the Cloud Healthcare conformance statement describes it (spec §2.9, §2.10, §6): matching,
wildcards, person names in every script, dates, UID lists, fuzzy matching, includefield, the attributes
returned per level, computed attributes, limit/offset and the media types of the answer."""

from __future__ import annotations

import io
import itertools
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from conftest import Server, Store, dicom_file, make_store
from dicomlake.dicom import tags

JSON = {"Accept": "application/dicom+json"}
STANDARD_PARAMS = {"alt": "json", "prettyPrint": "false", "fields": "x", "key": "k", "$.xgafv": "2", "quotaUser": "u"}
COMPUTED_STUDY = {tags.MODALITIES_IN_STUDY, tags.STUDY_SERIES_COUNT, tags.STUDY_INSTANCE_COUNT}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


# ---- building and storing instances -------------------------------------------------------------


def to_bytes(ds: Dataset) -> bytes:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def tiny_instance(study: str, series: str, number: int, **attributes: Any) -> bytes:
    """A small Secondary Capture instance without pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = number
    ds.Modality = "OT"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return to_bytes(ds)


def post(store: Store, data: bytes, session: requests.Session | None = None) -> None:
    response = (session or requests).post(
        f"{store.dicomweb}/studies", data=data, headers={"Content-Type": "application/dicom", **JSON}, timeout=60
    )
    assert response.status_code == 200, response.text


def post_many(store: Store, instances: list[bytes]) -> None:
    """One multipart STOW request for many instances: the cheap way to fill a store."""
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in instances
        )
        + f"--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = requests.post(
        f"{store.dicomweb}/studies", data=body, timeout=300, headers={"Content-Type": content_type, **JSON}
    )
    assert response.status_code == 200, response.text[:2000]
    assert len(response.json()["00081199"]["Value"]) == len(instances)


def search(
    store: Store, path: str, params: dict[str, Any] | str | None = None, headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.get(f"{store.dicomweb}/{path}", params=params, headers=headers or JSON, timeout=60)


def found(store: Store, path: str, params: dict[str, Any] | str | None = None) -> list[dict[str, Any]]:
    """The results of a search that must succeed; [] for 204."""
    response = search(store, path, params)
    if response.status_code == 204:
        assert response.content == b""
        return []
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    return response.json()


def value(result: dict[str, Any], keyword: str) -> Any:
    element = result.get(tags.tag_key(keyword) or "")
    return element["Value"][0] if element and element.get("Value") else None


def uids(results: list[dict[str, Any]], keyword: str) -> set[str]:
    return {value(r, keyword) for r in results}


def study_uids(store: Store, params: dict[str, Any] | str | None = None, path: str = "studies") -> set[str]:
    return uids(found(store, path, params), "StudyInstanceUID")


# ---- the main corpus --------------------------------------------------------------------------------


@dataclass
class Series:
    uid: str
    modality: str
    sops: list[str] = field(default_factory=list)


@dataclass
class Study:
    uid: str
    patient_name: str
    patient_id: str
    study_date: str
    accession: str
    source: str
    series: list[Series] = field(default_factory=list)

    @property
    def sops(self) -> list[str]:
        return [sop for s in self.series for sop in s.sops]


@dataclass
class Corpus:
    store: Store
    studies: dict[str, Study]

    def uid(self, *labels: str) -> set[str]:
        return {self.studies[label].uid for label in labels}


# label: (PatientName, PatientID, StudyDate, AccessionNumber, source file, [(modality, instances) per series])
CORPUS = {
    "A": ("Doe^John", "PID-A", "20200115", "ACC-001", "CT_small.dcm", [("CT", 2), ("MR", 1)]),
    "B": ("Doe^Jane", "PID-B", "20210610", "ACC-002", "CT_small.dcm", [("CT", 1)]),
    "C": ("Johnson^Bob", "pid-a", "20191231", "XYZ-17", "MR_small.dcm", [("MR", 1)]),
    "D": ("MacDonald^Ronald^^^", "PID-D", "20220301", "ACC-100", "CT_small.dcm", [("OT", 1)]),
    "E": ("Müller^Jürgen", "PID-E", "20200116", "ACC_3", "MR_small.dcm", [("MR", 1)]),
}


@pytest.fixture(scope="module")
def corpus(server: Server) -> Corpus:
    """Five studies cloned from real files with new UIDs and known patient/study attributes."""
    store = make_store(server)
    studies = {}
    with requests.Session() as session:
        for label, (name, patient_id, date, accession, source, series_plan) in CORPUS.items():
            study = Study(generate_uid(), name, patient_id, date, accession, source)
            for modality, count in series_plan:
                series = Series(generate_uid(), modality)
                for number in range(1, count + 1):
                    ds = pydicom.dcmread(dicom_file(source))
                    ds.SpecificCharacterSet = "ISO_IR 100"
                    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.uid, series.uid
                    ds.SOPInstanceUID = generate_uid()
                    ds.PatientName, ds.PatientID, ds.StudyDate, ds.AccessionNumber = name, patient_id, date, accession
                    ds.Modality, ds.InstanceNumber = modality, number
                    ds.ReferringPhysicianName = "Smith^Anna" if label == "A" else "Jones^Tom"
                    post(store, to_bytes(ds), session)
                    series.sops.append(ds.SOPInstanceUID)
                study.series.append(series)
            studies[label] = study
    return Corpus(store, studies)


# ---- levels and paths ---------------------------------------------------------------------------


def test_every_path_form_returns_its_level(corpus: Corpus) -> None:
    store, a = corpus.store, corpus.studies["A"]
    all_series = {s.uid for st in corpus.studies.values() for s in st.series}
    all_sops = {sop for st in corpus.studies.values() for sop in st.sops}

    assert study_uids(store) == corpus.uid(*CORPUS)
    assert uids(found(store, "series"), "SeriesInstanceUID") == all_series
    assert uids(found(store, "instances"), "SOPInstanceUID") == all_sops
    assert uids(found(store, f"studies/{a.uid}/series"), "SeriesInstanceUID") == {s.uid for s in a.series}
    assert uids(found(store, f"studies/{a.uid}/instances"), "SOPInstanceUID") == set(a.sops)
    first = a.series[0]
    in_series = found(store, f"studies/{a.uid}/series/{first.uid}/instances")
    assert [value(r, "SOPInstanceUID") for r in in_series] == first.sops
    assert {value(r, "StudyInstanceUID") for r in in_series} == {a.uid}
    assert {value(r, "SeriesInstanceUID") for r in in_series} == {first.uid}


def test_paths_with_unknown_uids_find_nothing(corpus: Corpus) -> None:
    store, a = corpus.store, corpus.studies["A"]
    for path in ("studies/1.2.3/series", "studies/1.2.3/instances", f"studies/{a.uid}/series/1.2.3/instances"):
        response = search(store, path)
        assert (response.status_code, response.content) == (204, b"")


def test_study_search_is_scoped_to_its_store(corpus: Corpus, store: Store) -> None:
    assert search(store, "studies").status_code == 204
    post(store, dicom_file("CT_small.dcm").read_bytes())
    assert study_uids(store) == {pydicom.dcmread(dicom_file("CT_small.dcm")).StudyInstanceUID}
    assert store.url != corpus.store.url


# ---- exact and wildcard matching ----------------------------------------------------------------


def test_exact_match_on_patient_id_is_case_sensitive(corpus: Corpus) -> None:
    assert study_uids(corpus.store, {"PatientID": "PID-A"}) == corpus.uid("A")
    assert study_uids(corpus.store, {"PatientID": "pid-a"}) == corpus.uid("C")
    assert study_uids(corpus.store, {"00100020": "PID-B"}) == corpus.uid("B")
    assert search(corpus.store, "studies", {"PatientID": "PID"}).status_code == 204


def test_exact_match_on_accession_number(corpus: Corpus) -> None:
    assert study_uids(corpus.store, {"AccessionNumber": "ACC-001"}) == corpus.uid("A")
    assert study_uids(corpus.store, {"AccessionNumber": "ACC_3"}) == corpus.uid("E")


def test_star_and_question_mark_wildcards_on_strings(corpus: Corpus) -> None:
    store = corpus.store
    assert study_uids(store, {"AccessionNumber": "ACC-*"}) == corpus.uid("A", "B", "D")
    assert study_uids(store, {"AccessionNumber": "ACC-00?"}) == corpus.uid("A", "B")
    assert study_uids(store, {"AccessionNumber": "*-1*"}) == corpus.uid("C", "D")
    assert study_uids(store, {"AccessionNumber": "ACC??"}) == corpus.uid("E")
    assert study_uids(store, {"PatientID": "PID-?"}) == corpus.uid("A", "B", "D", "E")


def test_sql_wildcard_characters_are_literal(corpus: Corpus) -> None:
    assert study_uids(corpus.store, {"AccessionNumber": "ACC%"}) == set()
    assert study_uids(corpus.store, {"AccessionNumber": "ACC_001"}) == set()
    assert study_uids(corpus.store, {"AccessionNumber": "ACC_*"}) == corpus.uid("E")


def test_empty_value_and_lone_star_are_universal_matching(corpus: Corpus) -> None:
    everything = corpus.uid(*CORPUS)
    for params in (
        {"PatientName": ""},
        {"PatientName": "*"},
        {"AccessionNumber": ""},
        {"PatientID": "*"},
        {"StudyDate": ""},
        {"StudyInstanceUID": ""},
    ):
        assert study_uids(corpus.store, params) == everything, params


def test_series_and_instance_attributes_match_at_their_levels(corpus: Corpus) -> None:
    store, a, c = corpus.store, corpus.studies["A"], corpus.studies["C"]
    ct_series = {s.uid for st in corpus.studies.values() for s in st.series if s.modality == "CT"}
    assert uids(found(store, "series", {"Modality": "CT"}), "SeriesInstanceUID") == ct_series
    mr_sops = set(a.series[1].sops + c.sops + corpus.studies["E"].sops)
    assert uids(found(store, "instances", {"Modality": "MR"}), "SOPInstanceUID") == mr_sops
    assert uids(found(store, "instances", {"InstanceNumber": "2"}), "SOPInstanceUID") == {a.series[0].sops[1]}
    assert uids(found(store, "instances", {"SeriesInstanceUID": a.series[0].uid}), "SOPInstanceUID") == set(
        a.series[0].sops
    )
    assert uids(found(store, "instances", {"PatientName": "Doe^Jane"}), "SOPInstanceUID") == set(
        corpus.studies["B"].sops
    )
    assert uids(found(store, "series", {"PatientID": "pid-a"}), "SeriesInstanceUID") == {c.series[0].uid}


def test_modalities_in_study_matches_any_series_modality(corpus: Corpus) -> None:
    assert study_uids(corpus.store, {"ModalitiesInStudy": "MR"}) == corpus.uid("A", "C", "E")
    assert study_uids(corpus.store, {"ModalitiesInStudy": "OT"}) == corpus.uid("D")


def test_modalities_in_study_filters_series_and_instances_by_their_study(corpus: Corpus) -> None:
    store, a, b = corpus.store, corpus.studies["A"], corpus.studies["B"]
    with_ct = [a, b]  # A holds a CT and an MR series, B a CT series; C and E are MR only, D is OT
    every_series = {s.uid for st in with_ct for s in st.series}
    assert uids(found(store, "series", {"ModalitiesInStudy": "CT"}), "SeriesInstanceUID") == every_series
    assert uids(found(store, f"studies/{a.uid}/series", {"ModalitiesInStudy": "CT"}), "SeriesInstanceUID") == {
        s.uid for s in a.series
    }
    assert found(store, f"studies/{corpus.studies['C'].uid}/series", {"ModalitiesInStudy": "CT"}) == []
    assert uids(found(store, "instances", {"ModalitiesInStudy": "CT"}), "SOPInstanceUID") == set(a.sops + b.sops)
    assert uids(found(store, f"studies/{a.uid}/instances", {"ModalitiesInStudy": "CT"}), "SOPInstanceUID") == set(
        a.sops
    )
    # With a series attribute too, the instance query joins series: the study's other series still count.
    mr_of_ct_studies = found(store, "instances", {"ModalitiesInStudy": "CT", "Modality": "MR"})
    assert uids(mr_of_ct_studies, "SOPInstanceUID") == set(a.series[1].sops)
    assert uids(found(store, "series", {"ModalitiesInStudy": "CT", "Modality": "MR"}), "SeriesInstanceUID") == {
        a.series[1].uid
    }


def test_referring_physician_name_matches(corpus: Corpus) -> None:
    assert study_uids(corpus.store, {"ReferringPhysicianName": "Smith^Anna"}) == corpus.uid("A")
    assert study_uids(corpus.store, {"ReferringPhysicianName": "jones*"}) == corpus.uid("B", "C", "D", "E")


# ---- person names -------------------------------------------------------------------------------


def test_patient_name_exact_match_ignores_case(corpus: Corpus) -> None:
    for query in ("Doe^John", "doe^john", "DOE^JOHN", "dOe^JoHn"):
        assert study_uids(corpus.store, {"PatientName": query}) == corpus.uid("A"), query


def test_patient_name_exact_match_needs_the_whole_name(corpus: Corpus) -> None:
    for query in ("Doe", "John", "Doe^Jo", "oe^John"):
        assert search(corpus.store, "studies", {"PatientName": query}).status_code == 204, query


def test_patient_name_ignores_trailing_empty_components(corpus: Corpus) -> None:
    for query in ("MacDonald^Ronald", "macdonald^ronald^", "MacDonald^Ronald^^^^"):
        assert study_uids(corpus.store, {"PatientName": query}) == corpus.uid("D"), query
    assert study_uids(corpus.store, {"PatientName": "Doe^John^^"}) == corpus.uid("A")


def test_patient_name_accents_are_ignored(corpus: Corpus) -> None:
    for query in ("Müller^Jürgen", "muller^jurgen", "MULLER^JÜRGEN"):
        assert study_uids(corpus.store, {"PatientName": query}) == corpus.uid("E"), query


def test_patient_name_wildcards(corpus: Corpus) -> None:
    cases = {
        "Doe*": {"A", "B"},
        "doe^j*": {"A", "B"},
        "*^Jane": {"B"},
        "Do?^Jo?n": {"A"},
        "J*": {"C"},
        "*n*": {"A", "B", "C", "D", "E"},
        "Mac*^Ronald": {"D"},
        "M?ller*": {"E"},
        "??e^????": {"A", "B"},
        "???^????": {"A", "B"},
        "Do": set(),
    }
    for query, labels in cases.items():
        assert study_uids(corpus.store, {"PatientName": query}) == corpus.uid(*labels), query


def test_fuzzy_matching_matches_word_prefixes(corpus: Corpus) -> None:
    store = corpus.store
    # The spec's examples: "jo", "Do" and "John Doe" match John^Doe, "ohn" does not.
    assert study_uids(store, {"PatientName": "jo", "fuzzymatching": "true"}) == corpus.uid("A", "C")
    assert study_uids(store, {"PatientName": "Do", "fuzzymatching": "true"}) == corpus.uid("A", "B")
    assert corpus.studies["A"].uid in study_uids(store, {"PatientName": "John Doe", "fuzzymatching": "true"})
    assert study_uids(store, {"PatientName": "John^Doe", "fuzzymatching": "true"}) == corpus.uid("A", "B", "C")
    assert search(store, "studies", {"PatientName": "ohn", "fuzzymatching": "true"}).status_code == 204
    assert study_uids(store, {"PatientName": "jurg", "fuzzymatching": "true"}) == corpus.uid("E")
    assert study_uids(store, {"PatientName": "RONALD", "fuzzymatching": "true"}) == corpus.uid("D")


def test_fuzzy_matching_false_is_exact(corpus: Corpus) -> None:
    assert search(corpus.store, "studies", {"PatientName": "jo", "fuzzymatching": "false"}).status_code == 204


# ---- dates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "labels"),
    [
        ("20200115", {"A"}),
        ("20200101-20201231", {"A", "E"}),
        ("20200115-20200115", {"A"}),
        ("-20200115", {"A", "C"}),
        ("20200116-", {"B", "D", "E"}),
        ("19000101-20991231", {"A", "B", "C", "D", "E"}),
        ("20210101-20200101", set()),
        ("20230101", set()),
    ],
)
def test_study_date_single_and_ranges(corpus: Corpus, query: str, labels: set[str]) -> None:
    assert study_uids(corpus.store, {"StudyDate": query}) == corpus.uid(*labels)


@pytest.mark.parametrize(
    "query",
    [
        "2020-01-15",
        "20201301",
        "20200230",
        "2020011",
        "abc",
        "20200101--20200102",
        "-",
        "20200101-2020",
        "2020*",
        "20200101,20200102",
        "020200115",
    ],
)
def test_malformed_study_date_is_400(corpus: Corpus, query: str) -> None:
    response = search(corpus.store, "studies", {"StudyDate": query})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


# ---- UID lists ----------------------------------------------------------------------------------


def test_uid_list_matching_with_commas_and_backslashes(corpus: Corpus) -> None:
    store, a, b, c = corpus.store, corpus.studies["A"], corpus.studies["B"], corpus.studies["C"]
    assert study_uids(store, {"StudyInstanceUID": f"{a.uid},{b.uid}"}) == {a.uid, b.uid}
    assert study_uids(store, {"StudyInstanceUID": f"{a.uid}\\{c.uid}"}) == {a.uid, c.uid}
    assert study_uids(store, {"0020000D": f"{b.uid},1.2.3"}) == {b.uid}
    series = found(store, "series", {"SeriesInstanceUID": f"{a.series[0].uid}\\{c.series[0].uid}"})
    assert uids(series, "SeriesInstanceUID") == {a.series[0].uid, c.series[0].uid}
    sops = [a.sops[0], b.sops[0], c.sops[0]]
    assert uids(found(store, "instances", {"SOPInstanceUID": ",".join(sops)}), "SOPInstanceUID") == set(sops)


# ---- percent-encoding and standard parameters ---------------------------------------------------


def test_query_values_are_percent_decoded(corpus: Corpus) -> None:
    store = corpus.store
    assert study_uids(store, "PatientName=Doe%5EJohn") == corpus.uid("A")
    assert study_uids(store, "PatientName=Doe%2A") == corpus.uid("A", "B")
    assert study_uids(store, "PatientName=Doe%5EJ%2A") == corpus.uid("A", "B")
    assert study_uids(store, "PatientName=Do%3F%5EJane") == corpus.uid("B")
    assert study_uids(store, "PatientName=M%C3%BCller%5EJ%C3%BCrgen") == corpus.uid("E")
    assert study_uids(store, "%50atientID=PID-A") == corpus.uid("A")
    # Decoded once only: %252D is the three characters "%2D", not "-".
    assert search(store, "studies", "PatientID=PID%252DA").status_code == 204


def test_standard_google_parameters_are_ignored(corpus: Corpus) -> None:
    for path in ("studies", "series", "instances"):
        assert found(corpus.store, path, {**STANDARD_PARAMS, "PatientID": "PID-B"}) == found(
            corpus.store, path, {"PatientID": "PID-B"}
        )


@pytest.mark.parametrize(
    "params",
    [
        {"NotAKeyword": "1"},
        {"PatientSex": "M"},
        {"includefield": "NotAKeyword"},
        {"fuzzymatching": "yes"},
        {"Modality": "CT"},
        {"SOPInstanceUID": "1.2"},
        {"00091001": "x"},
    ],
)
def test_unknown_or_unsupported_parameter_is_400(corpus: Corpus, params: dict[str, str]) -> None:
    response = search(corpus.store, "studies", params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400


@pytest.mark.parametrize(
    "params", [{"InstanceNumber": "abc"}, {"InstanceNumber": "99999999999999999999"}, {"PatientName": "a=b=c=d"}]
)
def test_invalid_values_are_400_not_500(corpus: Corpus, params: dict[str, str]) -> None:
    response = search(corpus.store, "instances", params)
    assert response.status_code == 400, response.text


def test_no_match_is_204_without_body(corpus: Corpus) -> None:
    for path in ("studies", "series", "instances"):
        response = search(corpus.store, path, {"PatientID": "nobody"})
        assert (response.status_code, response.content) == (204, b"")


# ---- returned attributes ------------------------------------------------------------------------


def keys_of(keywords: tuple[str, ...], ds: Dataset) -> set[str]:
    return {k for k in keywords if int(k, 16) in ds}


def test_study_default_attributes_are_the_spec_list(corpus: Corpus) -> None:
    a = corpus.studies["A"]
    (result,) = found(corpus.store, "studies", {"StudyInstanceUID": a.uid})
    ds = pydicom.dcmread(dicom_file(a.source), stop_before_pixels=True)
    expected = keys_of(tags.STUDY_DEFAULT, ds) | {tags.INSTANCE_AVAILABILITY}
    assert set(result) - COMPUTED_STUDY == expected
    assert value(result, "PatientName") == {"Alphabetic": "Doe^John"}
    assert value(result, "StudyDate") == "20200115"
    assert value(result, "InstanceAvailability") == "ONLINE"
    assert "00081030" not in result  # StudyDescription only comes with includefield


def test_series_default_attributes_are_the_spec_list(corpus: Corpus) -> None:
    a = corpus.studies["A"]
    (result,) = found(corpus.store, f"studies/{a.uid}/series", {"SeriesInstanceUID": a.series[0].uid})
    ds = pydicom.dcmread(dicom_file(a.source), stop_before_pixels=True)
    expected = keys_of(tags.SERIES_DEFAULT, ds)
    assert set(result) - {tags.STUDY_UID, tags.SERIES_INSTANCE_COUNT} == expected
    assert value(result, "StudyInstanceUID") == a.uid
    assert value(result, "Modality") == "CT"


def test_instance_default_attributes_are_the_spec_list(corpus: Corpus) -> None:
    a = corpus.studies["A"]
    (result,) = found(corpus.store, "instances", {"SOPInstanceUID": a.sops[0]})
    ds = pydicom.dcmread(dicom_file(a.source), stop_before_pixels=True)
    expected = keys_of(tags.INSTANCE_DEFAULT, ds) | {tags.INSTANCE_AVAILABILITY}
    assert set(result) - {tags.STUDY_UID, tags.SERIES_UID} == expected
    assert (value(result, "Rows"), value(result, "Columns"), value(result, "BitsAllocated")) == (
        ds.Rows,
        ds.Columns,
        ds.BitsAllocated,
    )
    assert value(result, "InstanceNumber") == 1


def test_matched_attributes_are_returned(corpus: Corpus) -> None:
    (series,) = found(corpus.store, "series", {"PatientID": "pid-a"})
    assert value(series, "PatientID") == "pid-a"
    (instance,) = found(corpus.store, "instances", {"AccessionNumber": "ACC-002"})
    assert value(instance, "AccessionNumber") == "ACC-002"


def test_includefield_by_keyword_and_by_tag(corpus: Corpus) -> None:
    a = corpus.studies["A"]
    ds = pydicom.dcmread(dicom_file(a.source), stop_before_pixels=True)
    for include in ("StudyDescription", "00081030", "00081030,StudyDescription"):
        (result,) = found(corpus.store, "studies", {"StudyInstanceUID": a.uid, "includefield": include})
        assert value(result, "StudyDescription") == ds.StudyDescription, include
    (result,) = found(
        corpus.store,
        "studies",
        [("StudyInstanceUID", a.uid), ("includefield", "InstitutionName"), ("includefield", "00081030")],
    )
    assert value(result, "InstitutionName") == ds.InstitutionName
    assert value(result, "StudyDescription") == ds.StudyDescription
    (result,) = found(corpus.store, "instances", {"SOPInstanceUID": a.sops[0], "includefield": "Manufacturer,00180050"})
    assert value(result, "Manufacturer") == ds.Manufacturer
    assert float(value(result, "SliceThickness")) == float(ds.SliceThickness)
    (series,) = found(
        corpus.store, f"studies/{a.uid}/series", {"SeriesInstanceUID": a.series[0].uid, "includefield": "PatientName"}
    )
    assert value(series, "PatientName") == {"Alphabetic": "Doe^John"}


def test_includefield_all_at_study_level_adds_the_spec_extra_list(corpus: Corpus) -> None:
    a = corpus.studies["A"]
    ds = pydicom.dcmread(dicom_file(a.source), stop_before_pixels=True)
    (result,) = found(corpus.store, "studies", {"StudyInstanceUID": a.uid, "includefield": "all"})
    expected = keys_of(tags.STUDY_DEFAULT + tags.STUDY_EXTRA, ds) | {tags.INSTANCE_AVAILABILITY}
    assert set(result) - COMPUTED_STUDY == expected
    assert keys_of(tags.STUDY_EXTRA, ds)  # the file does hold some of the extra attributes


def test_includefield_all_at_series_level_adds_the_spec_extra_list(corpus: Corpus) -> None:
    a = corpus.studies["A"]
    ds = pydicom.dcmread(dicom_file(a.source), stop_before_pixels=True)
    (result,) = found(
        corpus.store, f"studies/{a.uid}/series", {"SeriesInstanceUID": a.series[0].uid, "includefield": "all"}
    )
    expected = keys_of(tags.SERIES_DEFAULT + tags.SERIES_EXTRA, ds)
    assert set(result) - {tags.STUDY_UID, tags.SERIES_INSTANCE_COUNT} == expected
    assert value(result, "SeriesNumber") == int(ds.SeriesNumber)


def test_includefield_all_at_instance_level_returns_every_attribute(corpus: Corpus) -> None:
    a = corpus.studies["A"]
    (result,) = found(corpus.store, "instances", {"SOPInstanceUID": a.sops[0], "includefield": "all"})
    ds = pydicom.dcmread(dicom_file(a.source))
    expected = {f"{e.tag:08X}" for e in ds if e.VR not in BINARY_VRS}
    assert expected - set(result) == set()
    assert set(result) - expected <= {tags.INSTANCE_AVAILABILITY}
    assert "7FE00010" not in result
    assert value(result, "PatientName") == {"Alphabetic": "Doe^John"}
    assert value(result, "Manufacturer") == ds.Manufacturer
    assert "BulkDataURI" not in str(result)


def test_computed_study_and_series_attributes(corpus: Corpus) -> None:
    store = corpus.store
    expected = {"A": (["CT", "MR"], 2, 3), "B": (["CT"], 1, 1), "C": (["MR"], 1, 1), "D": (["OT"], 1, 1)}
    for label, (modalities, series_count, instance_count) in expected.items():
        (result,) = found(store, "studies", {"StudyInstanceUID": corpus.studies[label].uid})
        assert sorted(result[tags.MODALITIES_IN_STUDY]["Value"]) == modalities
        assert result[tags.STUDY_SERIES_COUNT]["Value"] == [series_count]
        assert result[tags.STUDY_INSTANCE_COUNT]["Value"] == [instance_count]
    a = corpus.studies["A"]
    counts = {
        value(r, "SeriesInstanceUID"): r[tags.SERIES_INSTANCE_COUNT]["Value"][0]
        for r in found(store, f"studies/{a.uid}/series")
    }
    assert counts == {a.series[0].uid: 2, a.series[1].uid: 1}


def test_computed_attributes_follow_deletions(server: Server) -> None:
    store = make_store(server)
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    instances = [
        tiny_instance(study, series[0], 1, Modality="CT"),
        tiny_instance(study, series[0], 2, Modality="CT"),
        tiny_instance(study, series[1], 1, Modality="MR"),
    ]
    for data in instances:
        post(store, data)
    sop = pydicom.dcmread(io.BytesIO(instances[2])).SOPInstanceUID
    requests.delete(
        f"{store.dicomweb}/studies/{study}/series/{series[1]}/instances/{sop}", timeout=30
    ).raise_for_status()
    (result,) = found(store, "studies")
    assert result[tags.MODALITIES_IN_STUDY]["Value"] == ["CT"]
    assert (result[tags.STUDY_SERIES_COUNT]["Value"], result[tags.STUDY_INSTANCE_COUNT]["Value"]) == ([1], [2])


# ---- media types --------------------------------------------------------------------------------


def multipart_parts(response: requests.Response) -> list[tuple[str, bytes]]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content
    )
    assert message.is_multipart()
    return [(part.get_content_type(), part.get_payload(decode=True)) for part in message.iter_parts()]


def test_xml_results_as_multipart_related(corpus: Corpus) -> None:
    store, a = corpus.store, corpus.studies["A"]
    headers = {"Accept": 'multipart/related; type="application/dicom+xml"'}
    response = search(store, f"studies/{a.uid}/instances", headers=headers)
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related") and "application/dicom+xml" in content_type
    parts = multipart_parts(response)
    assert [t for t, _ in parts] == ["application/dicom+xml"] * len(a.sops)
    sops = set()
    for _, payload in parts:
        root = ET.fromstring(payload)
        assert root.tag == "NativeDicomModel"
        attribute = root.find("DicomAttribute[@tag='00080018']")
        assert attribute is not None and attribute.get("keyword") == "SOPInstanceUID"
        sops.add(attribute.findtext("Value"))
    assert sops == set(a.sops)


def test_json_is_the_default_media_type(corpus: Corpus) -> None:
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        response = requests.get(f"{corpus.store.dicomweb}/studies", headers=headers, timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/dicom+json")


def test_unsupported_accept_is_406(corpus: Corpus) -> None:
    assert search(corpus.store, "studies", headers={"Accept": "image/png"}).status_code == 406


# ---- limit and offset ---------------------------------------------------------------------------

MANY_STUDIES = 120
BIG_SERIES = 900


@dataclass
class Many:
    store: Store
    studies: list[str]
    big_study: str
    big_series: str


@pytest.fixture(scope="module")
def many(server: Server) -> Many:
    """120 one-instance studies plus one study of 900 tiny instances: 121 studies, 1020 instances."""
    store = make_store(server)
    studies = [generate_uid() for _ in range(MANY_STUDIES)]
    big_study, big_series = generate_uid(), generate_uid()
    post_many(store, [tiny_instance(s, generate_uid(), 1, PatientID=f"P{i:03d}") for i, s in enumerate(studies)])
    post_many(store, [tiny_instance(big_study, big_series, n, PatientID="BIG") for n in range(1, BIG_SERIES + 1)])
    return Many(store, sorted(studies + [big_study]), big_study, big_series)


def test_default_limits_are_100_studies_100_series_1000_instances(many: Many) -> None:
    assert len(found(many.store, "studies")) == 100
    assert len(found(many.store, "series")) == 100
    assert len(found(many.store, "instances")) == 1000
    assert len(found(many.store, f"studies/{many.big_study}/series/{many.big_series}/instances")) == BIG_SERIES


def test_limits_up_to_the_maximum_return_everything(many: Many) -> None:
    assert len(found(many.store, "studies", {"limit": 5000})) == MANY_STUDIES + 1
    assert len(found(many.store, "series", {"limit": 5000})) == MANY_STUDIES + 1
    assert len(found(many.store, "instances", {"limit": 50000})) == MANY_STUDIES + BIG_SERIES
    # Above the maximum the limit is capped, not refused.
    assert len(found(many.store, "studies", {"limit": 5001})) == MANY_STUDIES + 1
    assert len(found(many.store, "instances", {"limit": 1_000_000})) == MANY_STUDIES + BIG_SERIES


def test_offset_and_limit_page_through_results_once_each(many: Many) -> None:
    pages = [found(many.store, "studies", {"limit": 50, "offset": offset}) for offset in (0, 50, 100)]
    assert [len(p) for p in pages] == [50, 50, 21]
    seen = [value(r, "StudyInstanceUID") for r in itertools.chain(*pages)]
    assert sorted(seen) == many.studies
    assert len(set(seen)) == len(seen)
    instances = [found(many.store, "instances", {"limit": 400, "offset": o}) for o in (0, 400, 800)]
    assert [len(p) for p in instances] == [400, 400, 220]
    assert len({value(r, "SOPInstanceUID") for r in itertools.chain(*instances)}) == MANY_STUDIES + BIG_SERIES


def test_offset_beyond_the_results_is_204(many: Many) -> None:
    assert search(many.store, "studies", {"offset": 121}).status_code == 204
    assert search(many.store, "studies", {"offset": 1_000_000}).status_code == 204


@pytest.mark.parametrize(
    "params",
    [
        {"offset": 1_000_001},
        {"offset": -1},
        {"offset": "x"},
        {"limit": -1},
        {"limit": "abc"},
        {"limit": "1.5"},
        {"limit": ""},
    ],
)
def test_bad_limit_or_offset_is_400(many: Many, params: dict[str, Any]) -> None:
    for path in ("studies", "instances"):
        response = search(many.store, path, params)
        assert response.status_code == 400, (path, params, response.text)


# ---- names in every character set ---------------------------------------------------------------

CHARSET_FILES = [
    "chrArab",
    "chrFren",
    "chrFrenMulti",
    "chrGerm",
    "chrGreek",
    "chrH31",
    "chrH32",
    "chrHbrw",
    "chrI2",
    "chrJapMulti",
    "chrJapMultiExplicitIR6",
    "chrKoreanMulti",
    "chrRuss",
    "chrSQEncoding",
    "chrX1",
    "chrX2",
]


@dataclass
class CharsetStudy:
    study: str
    name: pydicom.valuerep.PersonName


def native_name(name: pydicom.valuerep.PersonName) -> str:
    """The name in its own script: the Ideographic group where there is one, else the Alphabetic one."""
    return name.ideographic or name.alphabetic


@pytest.fixture(scope="module")
def charsets(server: Server) -> tuple[Store, dict[str, CharsetStudy]]:
    """Every charset file with fresh UIDs (some files share theirs). chrSQEncoding holds its name only in
    a sequence item with a character set of its own, so that name is also given to the top level."""
    store = make_store(server)
    out = {}
    with requests.Session() as session:
        for label in CHARSET_FILES:
            ds = pydicom.dcmread(dicom_file(f"{label}.dcm"))
            if label == "chrSQEncoding":
                ds.PatientName = ds.RequestedProcedureCodeSequence[0].PatientName
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.SOPInstanceUID = generate_uid()
            post(store, to_bytes(ds), session)
            name = pydicom.dcmread(io.BytesIO(to_bytes(ds))).PatientName
            out[label] = CharsetStudy(ds.StudyInstanceUID, name)
    return store, out


@pytest.mark.parametrize("label", CHARSET_FILES)
def test_patient_name_in_its_own_script_finds_the_study(
    charsets: tuple[Store, dict[str, CharsetStudy]], label: str
) -> None:
    store, studies = charsets
    expected = studies[label]
    query = native_name(expected.name)
    assert not query.isascii()  # each file's name is searched for in its own script
    results = found(store, "studies", {"PatientName": query})
    by_study = {value(r, "StudyInstanceUID"): r for r in results}
    assert expected.study in by_study, query
    returned = value(by_study[expected.study], "PatientName")
    groups = {
        "Alphabetic": expected.name.alphabetic,
        "Ideographic": expected.name.ideographic,
        "Phonetic": expected.name.phonetic,
    }
    assert returned == {k: v for k, v in groups.items() if v}


@pytest.mark.parametrize("label", CHARSET_FILES)
def test_patient_name_wildcard_in_its_own_script(charsets: tuple[Store, dict[str, CharsetStudy]], label: str) -> None:
    store, studies = charsets
    query = native_name(studies[label].name)
    first_component = query.split("^")[0]
    assert studies[label].study in study_uids(store, {"PatientName": first_component + "*"}), first_component
    assert studies[label].study in study_uids(store, {"PatientName": "*" + query[-1]}), query


def test_patient_name_wildcard_matches_within_one_component_group(
    charsets: tuple[Store, dict[str, CharsetStudy]],
) -> None:
    store, studies = charsets
    h31 = studies["chrH31"].study  # Yamada^Tarou=山田^太郎=やまだ^たろう
    assert h31 in study_uids(store, {"PatientName": "Yamada*"})
    assert h31 in study_uids(store, {"PatientName": "*太郎"})
    assert h31 in study_uids(store, {"PatientName": "山?^太郎"})
    assert h31 not in study_uids(store, {"PatientName": "Yamada*太郎"})
    assert h31 not in study_uids(store, {"PatientName": "*Tarou^山田*"})


def test_patient_name_with_several_groups_matches_group_by_group(
    charsets: tuple[Store, dict[str, CharsetStudy]],
) -> None:
    store, studies = charsets
    h31, h32 = studies["chrH31"].study, studies["chrH32"].study
    assert h31 in study_uids(store, {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"})
    assert {h31, h32} <= study_uids(store, {"PatientName": "=山田^太郎"})
    assert {h31, h32} <= study_uids(store, {"PatientName": "*=山田^太郎"})
    assert h31 not in study_uids(store, {"PatientName": "Yamada^Tarou=洪^吉洞"})


def test_fuzzy_matching_in_other_scripts(charsets: tuple[Store, dict[str, CharsetStudy]]) -> None:
    store, studies = charsets
    assert studies["chrGreek"].study in study_uids(store, {"PatientName": "διον", "fuzzymatching": "true"})
    assert studies["chrRuss"].study in study_uids(store, {"PatientName": "люк", "fuzzymatching": "true"})
    assert studies["chrI2"].study in study_uids(store, {"PatientName": "吉", "fuzzymatching": "true"})


def test_name_in_a_sequence_item_uses_the_items_character_set(charsets: tuple[Store, dict[str, CharsetStudy]]) -> None:
    store, studies = charsets
    (result,) = found(store, f"studies/{studies['chrSQEncoding'].study}/instances", {"includefield": "all"})
    (item,) = result["00321064"]["Value"]
    assert item["00100010"]["Value"] == [
        {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


def test_question_mark_matches_one_hangul_syllable(charsets: tuple[Store, dict[str, CharsetStudy]]) -> None:
    store, studies = charsets
    assert studies["chrKoreanMulti"].study in study_uids(store, {"PatientName": "?희중"})
