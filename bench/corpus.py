"""Synthetic instances cloned from real test files with new, deterministic UIDs under our own root."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import Pool

import pydicom
from pydicom.data import get_testdata_file

UID_ROOT = "1.2.826.0.1.3680043.10.1234."  # a private root for benchmark data
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


@dataclass(frozen=True)
class Spec:
    """Which instance to make: its place in the study/series hierarchy."""

    study: int
    series: int
    instance: int
    source: str = "MR_small.dcm"


def uid(*parts: int) -> str:
    return UID_ROOT + ".".join(str(p) for p in parts)


def _make(spec: Spec) -> bytes:
    ds = _source(spec.source)
    rng = random.Random(spec.study)
    ds.StudyInstanceUID = uid(1, spec.study)
    ds.SeriesInstanceUID = uid(2, spec.study, spec.series)
    ds.SOPInstanceUID = uid(3, spec.study, spec.series, spec.instance)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = f"{rng.choice(NAMES)}{spec.study % 997}"
    ds.PatientID = f"PID{spec.study % 5003:05d}"
    ds.AccessionNumber = f"ACC{spec.study:08d}"
    ds.StudyDate = f"{2000 + spec.study % 25}{1 + spec.study % 12:02d}{1 + spec.study % 28:02d}"
    ds.Modality = MODALITIES[(spec.study + spec.series) % len(MODALITIES)]
    ds.SeriesNumber = spec.series + 1
    ds.InstanceNumber = spec.instance + 1
    ds.StudyDescription = f"Study {spec.study}"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_SOURCES: dict[str, pydicom.Dataset] = {}


def _source(name: str) -> pydicom.Dataset:
    if name not in _SOURCES:
        _SOURCES[name] = pydicom.dcmread(get_testdata_file(name))
    return _SOURCES[name]


def make(specs: list[Spec], processes: int = 2) -> list[bytes]:
    with Pool(processes) as pool:
        return pool.map(_make, specs, chunksize=256)


def studies(count: int, start: int = 0) -> list[Spec]:
    """One single-instance study each: many studies, cheaply."""
    return [Spec(start + n, 0, 0) for n in range(count)]


def series(study: int, instances: int) -> list[Spec]:
    return [Spec(study, 0, n) for n in range(instances)]


def batches(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
