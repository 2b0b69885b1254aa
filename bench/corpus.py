"""Synthetic DICOM corpora for the benchmarks: real test files cloned into a seeded patient → study →
series → instance hierarchy with new UIDs under our own root, written as a bucket-shaped folder.

Speed comes from parsing each source file once: its elements are encoded into byte segments with gaps
for the attributes that change (UIDs, names, dates, numbers), and an instance is those segments joined
with freshly encoded values. Nothing is parsed or re-encoded per instance, so two cores write 100,000
instances in well under a minute instead of the ~300/s per core of a pydicom clone-and-modify."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from multiprocessing import Pool
from pathlib import Path

import pydicom
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import ExplicitVRLittleEndian

UID_ROOT = "1.2.826.0.1.3680043.10.1234."  # a private root for benchmark data
HIGHDICOM = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "highdicom"
SIZES = {"small": 1_000, "medium": 10_000, "large": 100_000}
LAYOUT = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"


@dataclass(frozen=True)
class Source:
    """A real file that series are cloned from: a name `get_testdata_file` finds offline (pydicom or
    pydicom-data) or `highdicom/NAME` in the shared test data. `kind` is single, compressed or multiframe."""

    name: str
    kind: str


# Little endian, not deflated, and all text ASCII: each patient's SpecificCharacterSet then applies
# to the whole instance without re-encoding the source's text.
SOURCES = (
    Source("CT_small.dcm", "single"),
    Source("MR_small.dcm", "single"),
    Source("MR_small_implicit.dcm", "single"),
    Source("highdicom/ct_image.dcm", "single"),
    Source("highdicom/dx_image.dcm", "single"),
    Source("MR_small_RLE.dcm", "compressed"),
    Source("MR_small_jpeg_ls_lossless.dcm", "compressed"),
    Source("MR_small_jp2klossless.dcm", "compressed"),
    Source("693_J2KI.dcm", "compressed"),
    Source("JPEG2000.dcm", "compressed"),
    Source("emri_small.dcm", "multiframe"),
    Source("emri_small_RLE.dcm", "multiframe"),
    Source("emri_small_jpeg_ls_lossless.dcm", "multiframe"),
    Source("emri_small_jpeg_2k_lossless.dcm", "multiframe"),
    Source("highdicom/sm_image.dcm", "multiframe"),
    Source("highdicom/sm_image_jpegls.dcm", "multiframe"),
)
CHARSET_FILES = (
    "chrArab.dcm",
    "chrFren.dcm",
    "chrGerm.dcm",
    "chrGreek.dcm",
    "chrH31.dcm",
    "chrH32.dcm",
    "chrHbrw.dcm",
    "chrI2.dcm",
    "chrJapMulti.dcm",
    "chrKoreanMulti.dcm",
    "chrRuss.dcm",
    "chrX1.dcm",
    "chrX2.dcm",
)
FAMILY_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Doe", "Dupont", "Martin", "Bernard", "Rossi", "Russo", "Ferrari", "Kowalski", "Nowak", "Nguyen",
    "Silva", "Santos", "Ivanova", "Petrov", "Jansen", "de Vries", "Andersson", "Nielsen", "Yamada", "Tanaka",
    "Kim", "Lee", "Schmidt", "Schneider", "Fischer", "Müller", "Núñez", "Søndergaard", "Öztürk", "Lefèvre",
)  # fmt: skip
GIVEN_NAMES = (
    "John", "Anna", "Maria", "James", "Mary", "Robert", "Linda", "Michael", "Sarah", "David",
    "Marie", "Jean", "Giulia", "Marco", "Jan", "Agnieszka", "Van", "Pedro", "Ana", "Olga",
    "Sven", "Ingrid", "Tarou", "Hanako", "Minjun", "Seoyeon", "Jürgen", "José", "Zoë", "Łukasz",
)  # fmt: skip
STUDY_DESCRIPTIONS = {
    "CT": ("CT CHEST W CONTRAST", "CT ABDOMEN PELVIS", "CT HEAD W/O CONTRAST", "CT ANGIO CHEST"),
    "MR": ("MR BRAIN W/WO CONTRAST", "MR KNEE LEFT", "MR LUMBAR SPINE", "MR CARDIAC FUNCTION"),
    "DX": ("XR CHEST PA AND LATERAL", "XR HAND RIGHT", "XR KNEE 3 VIEWS"),
    "NM": ("NM BONE SCAN WHOLE BODY", "NM THYROID UPTAKE"),
    "SM": ("SURGICAL PATHOLOGY", "FROZEN SECTION"),
}
SERIES_DESCRIPTIONS = {
    "CT": ("AXIAL 5MM", "CORONAL MPR", "SAGITTAL MPR", "SCOUT", "BONE WINDOW", "ARTERIAL PHASE"),
    "MR": ("T1 AX", "T2 SAG", "FLAIR AX", "DWI", "T1 POST GAD", "LOCALIZER"),
    "DX": ("PA", "LATERAL", "OBLIQUE"),
    "NM": ("ANTERIOR", "POSTERIOR", "WHOLE BODY"),
    "SM": ("H&E 20X", "H&E 40X", "IHC KI-67"),
}
FIRST_STUDY_DAY = datetime.date(2000, 1, 1)
LAST_STUDY_DAY = datetime.date(2024, 12, 31)


@dataclass(frozen=True)
class Patient:
    PatientID: str
    PatientName: str  # as pydicom decodes it
    name_bytes: bytes  # as written, in the patient's character set
    SpecificCharacterSet: str  # "" for the default repertoire; multiple values joined by backslashes
    PatientBirthDate: str
    PatientSex: str


@dataclass(frozen=True)
class Study:
    patient: Patient
    StudyInstanceUID: str
    StudyID: str
    StudyDate: str
    StudyTime: str
    AccessionNumber: str
    StudyDescription: str
    PatientAge: str


@dataclass(frozen=True)
class Series:
    """One series: every instance is cloned from `source`; `key` ("seed.study.series") makes its UIDs."""

    study: Study
    key: str
    source: str
    instances: int
    Modality: str
    SeriesNumber: int
    SeriesDate: str
    SeriesTime: str
    SeriesDescription: str

    @property
    def SeriesInstanceUID(self) -> str:
        return f"{UID_ROOT}5.{self.key}"

    @property
    def FrameOfReferenceUID(self) -> str:
        return f"{UID_ROOT}7.{self.key}"

    def sop_instance_uid(self, index: int) -> str:
        return f"{UID_ROOT}6.{self.key}.{index}"

    def path(self, index: int) -> str:
        """Where instance `index` lives inside a corpus folder (see LAYOUT)."""
        study = self.study
        return os.path.join(
            study.patient.PatientID,
            study.StudyInstanceUID,
            self.SeriesInstanceUID,
            self.sop_instance_uid(index) + ".dcm",
        )


@dataclass
class Manifest:
    """What a corpus folder holds; written beside it as manifest.json."""

    seed: int
    metadata_only: bool
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int
    broken: int
    layout: str = LAYOUT
    sources: dict[str, int] = field(default_factory=dict)  # instances cloned from each source file
    broken_files: list[str] = field(default_factory=list)


# ---- the plan: who, when, what ------------------------------------------------------------------


def plan(count: int, seed: int = 0, multiframe_share: float = 0.1, compressed_share: float = 0.15) -> list[Series]:
    """The series of a corpus of exactly `count` instances: patients with 1–3 studies of 1–4 series of
    1–60 instances (1–4 for multi-frame sources). The shares are the chance that a series is cloned
    from a multi-frame or a compressed source; the rest are small single-frame CT, MR and DX."""
    if count < 1 or seed < 0:
        raise ValueError("a corpus needs at least one instance and a non-negative seed")
    rng = random.Random(seed)
    names = _charset_names()
    sources = _available_sources()
    result: list[Series] = []
    remaining, study_index, patient_index = count, 0, 0
    while True:
        patient = _patient(rng, seed, patient_index, names)
        patient_index += 1
        born = datetime.date.fromisoformat(patient.PatientBirthDate)
        for _ in range(rng.randint(1, 3)):
            day = _day(rng, max(born, FIRST_STUDY_DAY), LAST_STUDY_DAY)
            study_seconds = rng.randrange(7 * 3600, 20 * 3600)
            study_series: list[tuple[Source, int]] = []
            for _ in range(rng.randint(1, 4)):
                kind = _kind(rng, multiframe_share, compressed_share)
                candidates = [s for s in sources if s.kind == kind] or list(sources)
                if study_series:  # keep to the study's modality where that kind offers it
                    first = _template(study_series[0][0].name).modality
                    candidates = [s for s in candidates if _template(s.name).modality == first] or candidates
                source = rng.choice(candidates)
                size = rng.randint(1, 4) if source.kind == "multiframe" else rng.randint(1, 60)
                study_series.append((source, min(size, remaining)))
                remaining -= study_series[-1][1]
                if not remaining:
                    break
            modality = _template(study_series[0][0].name).modality
            study = Study(
                patient=patient,
                StudyInstanceUID=uid(4, seed, study_index),
                StudyID=str(rng.randint(1, 99999)),
                StudyDate=day.strftime("%Y%m%d"),
                StudyTime=_time(study_seconds),
                AccessionNumber=f"A{seed:03d}{study_index:08d}",
                StudyDescription=rng.choice(STUDY_DESCRIPTIONS[modality]),
                PatientAge=_age(born, day),
            )
            for number, (source, size) in enumerate(study_series):
                template = _template(source.name)
                next_day = rng.random() < 0.1  # a study that runs past midnight
                result.append(
                    Series(
                        study=study,
                        key=f"{seed}.{study_index}.{number}",
                        source=source.name,
                        instances=size,
                        Modality=template.modality,
                        SeriesNumber=number + 1,
                        SeriesDate=(day + datetime.timedelta(days=next_day)).strftime("%Y%m%d"),
                        SeriesTime=_time(study_seconds + 600 * number + rng.randrange(600)),
                        SeriesDescription=rng.choice(SERIES_DESCRIPTIONS[template.modality]),
                    )
                )
            study_index += 1
            if not remaining:
                return result


def _patient(rng: random.Random, seed: int, index: int, charset_names: list[tuple[str, bytes, str]]) -> Patient:
    if rng.random() < 0.15:
        charset, name_bytes, name = rng.choice(charset_names)
    else:
        name = f"{rng.choice(FAMILY_NAMES)}^{rng.choice(GIVEN_NAMES)}"
        charset, name_bytes = ("", name.encode("ascii")) if name.isascii() else ("ISO_IR 192", name.encode())
    born = _day(rng, datetime.date(1930, 1, 1), datetime.date(2020, 12, 31))
    return Patient(
        PatientID=f"P{seed:03d}{index:07d}",
        PatientName=name,
        name_bytes=name_bytes,
        SpecificCharacterSet=charset,
        PatientBirthDate=born.strftime("%Y%m%d"),
        PatientSex=rng.choices("FMO", weights=(48, 48, 4))[0],
    )


@cache
def _charset_names() -> list[tuple[str, bytes, str]]:
    """(SpecificCharacterSet, raw PatientName, decoded PatientName) from pydicom's character set files."""
    names = []
    for name in CHARSET_FILES:
        ds = pydicom.dcmread(get_charset_files(name)[0])
        raw = ds.get_item("PatientName").value.rstrip(b" ")
        charset = ds.SpecificCharacterSet
        charset = charset if isinstance(charset, str) else "\\".join(charset)
        names.append((charset, raw, str(ds.PatientName)))
    return names


def _available_sources() -> tuple[Source, ...]:
    """SOURCES, less the highdicom files when the shared test data is not beside this checkout."""
    return tuple(s for s in SOURCES if not s.name.startswith("highdicom/") or HIGHDICOM.is_dir())


def _kind(rng: random.Random, multiframe_share: float, compressed_share: float) -> str:
    draw = rng.random()
    if draw < multiframe_share:
        return "multiframe"
    return "compressed" if draw < multiframe_share + compressed_share else "single"


def _day(rng: random.Random, first: datetime.date, last: datetime.date) -> datetime.date:
    return datetime.date.fromordinal(rng.randint(first.toordinal(), max(first, last).toordinal()))


def _time(seconds: int) -> str:
    seconds = min(seconds, 86399)
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _age(born: datetime.date, day: datetime.date) -> str:
    months = (day.year - born.year) * 12 + day.month - born.month - (day.day < born.day)
    if months >= 24:
        return f"{months // 12:03d}Y"
    return f"{months:03d}M" if months >= 1 else f"{(day - born).days:03d}D"


# ---- templates: a source file as byte segments with gaps ----------------------------------------

_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_BULK_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
_PREAMBLE = b"\0" * 128 + b"DICM"
_SOP_INSTANCE_UID = 0x00080018
_INSTANCE_NUMBER = 0x00200013
# Set on every corpus instance, present in the source or not (FrameOfReferenceUID only where present).
_CORPUS_KEYWORDS = (
    "SpecificCharacterSet", "StudyDate", "SeriesDate", "ContentDate", "StudyTime", "SeriesTime", "ContentTime",
    "AccessionNumber", "StudyDescription", "SeriesDescription", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "StudyInstanceUID", "SeriesInstanceUID", "StudyID", "SeriesNumber",
)  # fmt: skip


@dataclass(frozen=True)
class _Template:
    modality: str
    implicit: bool
    date_tags: frozenset[int]  # the source's other top-level dates and times, set to the series' own
    has_frame_of_reference: bool
    # The data set in tag order: encoded elements, and the int tags of the elements supplied per instance.
    pieces: tuple[bytes | int, ...]
    meta_before: bytes  # file meta elements before and after MediaStorageSOPInstanceUID
    meta_after: bytes


_TEMPLATES: dict[tuple[str, bool, frozenset[int] | None], _Template] = {}


def _template(name: str, metadata_only: bool = False, variable: frozenset[int] | None = None) -> _Template:
    """The source file `name` as a template; `variable` are the tags filled per instance (default: the
    corpus attributes). Cached per process; workers forked after the plan inherit the cache."""
    key = (name, metadata_only, variable)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _build_template(name, metadata_only, variable)
    return _TEMPLATES[key]


def _build_template(name: str, metadata_only: bool, variable: frozenset[int] | None) -> _Template:
    ds = pydicom.dcmread(source_path(name))
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_little_endian or syntax.is_deflated:
        raise ValueError(f"{name}: corpus sources must be little endian and not deflated, not {syntax.name}")
    elements: dict[int, bytes] = {}
    date_tags: set[int] = set()
    for tag in sorted(ds.keys()):
        element = ds.get_item(tag)
        vr = element.VR or _dictionary_vr(tag)
        if tag.element == 0 or (metadata_only and (tag in _PIXEL_TAGS or vr in _BULK_VRS)):
            continue  # group lengths would go stale; bulk data goes in metadata-only corpora
        if tag.group in (0x0008, 0x0040) and vr in ("DA", "TM", "DT"):
            date_tags.add(int(tag))
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, syntax.is_implicit_VR
        write_data_element(fp, element)
        elements[int(tag)] = fp.getvalue()  # a plain int: pieces tell tags from bytes by type
    if metadata_only and syntax.is_encapsulated:
        syntax = ExplicitVRLittleEndian  # without pixel data the data set is plain explicit little endian
    if variable is None:
        variable = frozenset(
            {tag_for_keyword(k) for k in _CORPUS_KEYWORDS}
            | date_tags
            | ({tag_for_keyword("FrameOfReferenceUID")} if "FrameOfReferenceUID" in ds else set())
        )
    variable |= {_SOP_INSTANCE_UID, _INSTANCE_NUMBER}
    pieces = _bind([tag if tag in variable else elements[tag] for tag in sorted(set(elements) | variable)], {})
    sop_class = ds.SOPClassUID
    meta_before = _explicit(0x00020001, "OB", b"\0\1") + _explicit(0x00020002, "UI", _uid_bytes(sop_class))
    meta_after = (
        _explicit(0x00020010, "UI", _uid_bytes(syntax))
        + _explicit(0x00020012, "UI", _uid_bytes(uid(0, 1)))
        + _explicit(0x00020013, "SH", b"DICOMLAKE_BENCH ")
    )
    return _Template(
        modality=ds.Modality,
        implicit=syntax.is_implicit_VR,
        date_tags=frozenset(date_tags),
        has_frame_of_reference="FrameOfReferenceUID" in ds,
        pieces=pieces,
        meta_before=meta_before,
        meta_after=meta_after,
    )


def _dictionary_vr(tag: int) -> str:
    """The VR an implicit VR source leaves unsaid; the first choice for "OB or OW" and the like."""
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:  # private, or unknown to pydicom
        return "UN"


def source_path(name: str) -> str:
    """The file behind a Source name."""
    if name.startswith("highdicom/"):
        return str(HIGHDICOM / name.removeprefix("highdicom/"))
    path = get_testdata_file(name, download=False)  # a missing name would otherwise go to the network
    if not isinstance(path, str):
        raise FileNotFoundError(f"{name} is not in pydicom's or pydicom-data's test files")
    return path


def _bind(pieces: Sequence[bytes | int], values: dict[int, bytes]) -> tuple[bytes | int, ...]:
    """Fill the gaps that `values` has (b"" leaves the element out) and join neighbouring bytes."""
    out: list[bytes | int] = []
    run: list[bytes] = []
    for piece in pieces:
        if type(piece) is int and piece not in values:
            if run:
                out.append(b"".join(run))
                run = []
            out.append(piece)
        else:
            run.append(values[piece] if type(piece) is int else piece)  # type: ignore[index,arg-type]
    if run:
        out.append(b"".join(run))
    return tuple(out)


def _explicit(tag: int, vr: str, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    if implicit:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value
    return _explicit(tag, vr, value)


def _uid_bytes(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _encode(template: _Template, values: dict[str, str | bytes]) -> dict[int, bytes]:
    """Elements for DICOM keyword → value (str in ASCII, or bytes as they are); "" leaves one out."""
    out = {}
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        raw = value if isinstance(value, bytes) else value.encode("ascii")
        out[tag] = _element(tag, dictionary_VR(tag), raw, template.implicit) if raw else b""
    return out


def _instance(template: _Template, pieces: tuple[bytes | int, ...], sop_instance_uid: str, number: int) -> bytes:
    """The Part 10 bytes of one instance from a template already bound to its series."""
    sop = _uid_bytes(sop_instance_uid)
    meta_sop = _explicit(0x00020003, "UI", sop)
    group_length = len(template.meta_before) + len(meta_sop) + len(template.meta_after)
    values = {
        _SOP_INSTANCE_UID: _element(_SOP_INSTANCE_UID, "UI", sop, template.implicit),
        _INSTANCE_NUMBER: _element(_INSTANCE_NUMBER, "IS", str(number).encode(), template.implicit),
    }
    return b"".join(
        (
            _PREAMBLE,
            struct.pack("<HH2sHL", 2, 0, b"UL", 4, group_length),
            template.meta_before,
            meta_sop,
            template.meta_after,
            *_bind(pieces, values),  # type: ignore[arg-type]
        )
    )


def series_instances(series: Series, metadata_only: bool = False) -> Iterator[bytes]:
    """The Part 10 bytes of every instance of `series`, in InstanceNumber order."""
    template = _template(series.source, metadata_only)
    study, patient = series.study, series.study.patient
    values: dict[str, str | bytes] = {
        "SpecificCharacterSet": patient.SpecificCharacterSet,
        "PatientName": patient.name_bytes,
        "PatientID": patient.PatientID,
        "PatientBirthDate": patient.PatientBirthDate,
        "PatientSex": patient.PatientSex,
        "PatientAge": study.PatientAge,
        "StudyInstanceUID": study.StudyInstanceUID,
        "StudyID": study.StudyID,
        "StudyDate": study.StudyDate,
        "StudyTime": study.StudyTime,
        "AccessionNumber": study.AccessionNumber,
        "StudyDescription": study.StudyDescription,
        "SeriesInstanceUID": series.SeriesInstanceUID,
        "SeriesNumber": str(series.SeriesNumber),
        "SeriesDate": series.SeriesDate,
        "SeriesTime": series.SeriesTime,
        "SeriesDescription": series.SeriesDescription,
        "ContentDate": series.SeriesDate,
        "ContentTime": series.SeriesTime,
    }
    if template.has_frame_of_reference:
        values["FrameOfReferenceUID"] = series.FrameOfReferenceUID
    elements = _encode(template, values)
    for tag in template.date_tags - elements.keys():
        vr = dictionary_VR(tag)
        value = {"DA": series.SeriesDate, "TM": series.SeriesTime}.get(vr, series.SeriesDate + series.SeriesTime)
        elements[tag] = _element(tag, vr, value.encode(), template.implicit)
    pieces = _bind(template.pieces, elements)
    for index in range(series.instances):
        yield _instance(template, pieces, series.sop_instance_uid(index), index + 1)


# ---- corpora: in memory, or written as a folder --------------------------------------------------


def instances(
    count: int,
    seed: int = 0,
    metadata_only: bool = False,
    multiframe_share: float = 0.1,
    compressed_share: float = 0.15,
) -> Iterator[bytes]:
    """The instances of the corpus `generate` writes with the same arguments, in plan order, in memory."""
    for series in plan(count, seed, multiframe_share, compressed_share):
        yield from series_instances(series, metadata_only)


def generate(
    size: str | int,
    out_dir: str | Path,
    seed: int = 0,
    metadata_only: bool = False,
    processes: int = 2,
    multiframe_share: float = 0.1,
    compressed_share: float = 0.15,
    broken: bool = True,
) -> Manifest:
    """Write a corpus of `size` instances ("small", "medium", "large" or a number) into `out_dir` as
    LAYOUT, a few broken files under broken/ (unless `broken` is false), and manifest.json."""
    count = SIZES[size] if isinstance(size, str) else size
    out = Path(out_dir)
    planned = plan(count, seed, multiframe_share, compressed_share)
    for name in {s.source for s in planned}:
        _template(name, metadata_only)  # built once here, inherited by the forked workers
    tasks, task, task_size = [], [], 0
    for s in planned:  # ~500 instances a task keeps both cores busy to the end
        task.append(s)
        task_size += s.instances
        if task_size >= 500:
            tasks.append((str(out), task, metadata_only))
            task, task_size = [], 0
    if task:
        tasks.append((str(out), task, metadata_only))
    out.mkdir(parents=True, exist_ok=True)
    if processes > 1:
        with Pool(processes) as pool:
            written = sum(pool.imap_unordered(_write_series, tasks))
    else:
        written = sum(map(_write_series, tasks))
    sources = Counter[str]()
    for s in planned:
        sources[s.source] += s.instances
    manifest = Manifest(
        seed=seed,
        metadata_only=metadata_only,
        patients=len({s.study.patient.PatientID for s in planned}),
        studies=len({s.study.StudyInstanceUID for s in planned}),
        series=len(planned),
        instances=count,
        bytes=written,
        broken=0,
        sources=dict(sorted(sources.items())),
    )
    if broken:
        first = next(series_instances(planned[0], metadata_only))
        manifest.broken_files = _write_broken(out / "broken", first)
        manifest.broken = len(manifest.broken_files)
    (out / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def _write_series(task: tuple[str, list[Series], bool]) -> int:
    out, planned, metadata_only = task
    written = 0
    for one in planned:
        folder = os.path.join(out, os.path.dirname(one.path(0)))
        os.makedirs(folder, exist_ok=True)
        for index, data in enumerate(series_instances(one, metadata_only)):
            with open(os.path.join(folder, one.sop_instance_uid(index) + ".dcm"), "wb") as f:
                f.write(data)
            written += len(data)
    return written


def _write_broken(folder: Path, instance: bytes) -> list[str]:
    """Files an import must refuse: copies of `instance` cut inside the file meta, inside an element
    header and inside the last value, a file that is not DICOM, and an empty file."""
    files = {
        "truncated_file_meta.dcm": instance[:140],
        "truncated_element_header.dcm": instance[: _data_set_start(instance) + 5],
        "truncated_value.dcm": instance[:-1],
        "not_dicom.dcm": b"This is a text file, not DICOM: a store must refuse it.\n",
        "empty.dcm": b"",
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [f"broken/{name}" for name in files]


def _data_set_start(instance: bytes) -> int:
    return 144 + struct.unpack_from("<L", instance, 140)[0]


# ---- the instances the STOW and QIDO benchmarks build by hand -----------------------------------

NAMES = [
    "Doe^John",
    "Smith^Anna",
    "Yamada^Tarou",
    "Müller^Jürgen",
    "Dupont^Marie",
    "Kowalski^Jan",
    "Rossi^Giulia",
    "Nguyen^Van",
    "Silva^Pedro",
    "Ivanova^Olga",
]
MODALITIES = ["CT", "MR", "US", "CR", "DX", "PT"]
_SPEC_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "AccessionNumber", "StudyDate", "Modality",
    "SeriesNumber", "StudyDescription", "StudyInstanceUID", "SeriesInstanceUID",
)  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """Which instance to make: its place in the study/series hierarchy."""

    study: int
    series: int
    instance: int
    source: str = "MR_small.dcm"


def uid(*parts: int) -> str:
    return UID_ROOT + ".".join(str(p) for p in parts)


def make(specs: list[Spec]) -> list[bytes]:
    """One instance per spec, cloned from `spec.source`; the attributes follow from the spec alone."""
    variable = frozenset(tag_for_keyword(k) for k in _SPEC_KEYWORDS)
    result = []
    for spec in specs:
        template = _template(spec.source, variable=variable)
        name = f"{random.Random(spec.study).choice(NAMES)}{spec.study % 997}"
        values: dict[str, str | bytes] = {
            "SpecificCharacterSet": "" if name.isascii() else "ISO_IR 192",
            "PatientName": name.encode(),
            "PatientID": f"PID{spec.study % 5003:05d}",
            "AccessionNumber": f"ACC{spec.study:08d}",
            "StudyDate": f"{2000 + spec.study % 25}{1 + spec.study % 12:02d}{1 + spec.study % 28:02d}",
            "Modality": MODALITIES[(spec.study + spec.series) % len(MODALITIES)],
            "SeriesNumber": str(spec.series + 1),
            "StudyDescription": f"Study {spec.study}",
            "StudyInstanceUID": uid(1, spec.study),
            "SeriesInstanceUID": uid(2, spec.study, spec.series),
        }
        pieces = _bind(template.pieces, _encode(template, values))
        result.append(_instance(template, pieces, uid(3, spec.study, spec.series, spec.instance), spec.instance + 1))
    return result


def studies(count: int, start: int = 0) -> list[Spec]:
    """One single-instance study each: many studies, cheaply."""
    return [Spec(start + n, 0, 0) for n in range(count)]


def series(study: int, instances: int) -> list[Spec]:
    return [Spec(study, 0, n) for n in range(instances)]


def batches(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---- command line -------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """`python -m bench corpus --size small|medium|large|N --out DIR [--seed S] [--metadata-only]`."""
    parser = argparse.ArgumentParser(prog="python -m bench corpus", description=main.__doc__)
    parser.add_argument("--size", required=True, help="small (1,000), medium (10,000), large (100,000) or a count")
    parser.add_argument("--out", required=True, type=Path, help="folder to write; must be empty or new")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metadata-only", action="store_true", help="leave out pixel data and other bulk data")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--multiframe-share", type=float, default=0.1, help="share of multi-frame series")
    parser.add_argument("--compressed-share", type=float, default=0.15, help="share of compressed series")
    args = parser.parse_args(argv)
    if args.size not in SIZES and not (args.size.isdigit() and int(args.size) > 0):
        parser.error(f"--size must be small, medium, large or a positive number, not {args.size!r}")
    if args.seed < 0:
        parser.error("--seed must not be negative")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"{args.out} exists and is not an empty folder")
    start = time.perf_counter()
    manifest = generate(
        args.size if args.size in SIZES else int(args.size),
        args.out,
        seed=args.seed,
        metadata_only=args.metadata_only,
        processes=args.processes,
        multiframe_share=args.multiframe_share,
        compressed_share=args.compressed_share,
    )
    seconds = time.perf_counter() - start
    print(json.dumps(asdict(manifest), indent=2))
    print(f"{manifest.instances} instances, {manifest.bytes / 2**20:.1f} MiB in {seconds:.1f} s: "
          f"{manifest.instances / seconds:.0f} instances/s")  # fmt: skip
