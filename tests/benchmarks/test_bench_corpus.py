"""The synthetic benchmark corpus: seeded, shaped like a real archive, valid DICOM that pydicom and our
parser read back with the planned attributes, plus broken files an import must refuse."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from bench import corpus
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicomlake.dicom.parse import DicomParseError, parse

# High shares so that a small corpus holds every kind of source.
SHARES = {"multiframe_share": 0.3, "compressed_share": 0.3}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    corpus.generate(600, out, seed=11, **SHARES)
    return out


def instance_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if "broken" not in p.parts)


def read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clone must read as cleanly as its source
        return pydicom.dcmread(io.BytesIO(data))


def test_same_seed_gives_identical_bytes_and_another_seed_does_not() -> None:
    first = list(corpus.instances(200, seed=7))
    assert first == list(corpus.instances(200, seed=7))
    assert len(first) == 200
    other = list(corpus.instances(200, seed=8))
    assert not set(first) & set(other)


def test_folder_is_the_same_whatever_the_number_of_processes(folder: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    corpus.generate(600, again, seed=11, processes=1, **SHARES)
    files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
    assert sorted(files) == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((folder / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_in_memory_instances_are_the_files_written(folder: Path) -> None:
    by_name = {p.name: p.read_bytes() for p in instance_files(folder)}
    for data in corpus.instances(600, seed=11, **SHARES):
        assert by_name.pop(read(data).SOPInstanceUID + ".dcm") == data
    assert not by_name


def test_hierarchy_stays_within_bounds() -> None:
    series = corpus.plan(20_000, seed=3)
    assert sum(s.instances for s in series) == 20_000
    studies_of, series_of = defaultdict(set), defaultdict(list)
    for s in series:
        studies_of[s.study.patient.PatientID].add(s.study.StudyInstanceUID)
        series_of[s.study.StudyInstanceUID].append(s)
        assert 1 <= s.instances <= 60
    assert all(1 <= len(studies) <= 3 for studies in studies_of.values())
    assert all(1 <= len(s) <= 4 for s in series_of.values())
    assert {len(s) for s in studies_of.values()} == {1, 2, 3}
    assert max(s.instances for s in series) == 60
    days = sorted(s.study.StudyDate for s in series)
    assert days[0][:4] <= "2001" and days[-1][:4] >= "2023"  # ~25 years of studies


def test_files_read_back_with_the_planned_attributes(folder: Path) -> None:
    planned = {s.sop_instance_uid(n): (s, n) for s in corpus.plan(600, seed=11, **SHARES) for n in range(s.instances)}
    files = instance_files(folder)
    assert len(files) == len(planned) == 600
    for path in files:
        data = path.read_bytes()
        ds = read(data)
        series, index = planned[ds.SOPInstanceUID]
        study, patient = series.study, series.study.patient
        assert path.relative_to(folder) == Path(series.path(index))
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        meta_end = 132 + 12 + struct.unpack_from("<L", data, 140)[0]
        assert struct.unpack_from("<H", data, meta_end)[0] == 0x0008  # the group length ends the file meta exactly
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (study.StudyInstanceUID, series.SeriesInstanceUID)
        assert str(ds.PatientName) == patient.PatientName
        assert (ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == (
            patient.PatientID,
            patient.PatientBirthDate,
            patient.PatientSex,
        )
        assert (ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyDescription, ds.PatientAge) == (
            study.StudyDate,
            study.StudyTime,
            study.AccessionNumber,
            study.StudyDescription,
            study.PatientAge,
        )
        assert (ds.SeriesDate, ds.ContentDate, ds.SeriesNumber, ds.SeriesDescription) == (
            series.SeriesDate,
            series.SeriesDate,
            series.SeriesNumber,
            series.SeriesDescription,
        )
        assert ds.InstanceNumber == index + 1
        assert ds.Modality == series.Modality
        parsed = parse(data)
        assert (parsed.study_uid, parsed.series_uid, parsed.sop_uid) == (
            study.StudyInstanceUID,
            series.SeriesInstanceUID,
            ds.SOPInstanceUID,
        )
        assert parsed.number_of_frames == int(ds.get("NumberOfFrames", 1))


def test_series_are_homogeneous_and_mix_kinds_of_source(folder: Path) -> None:
    by_series = defaultdict(set)
    syntaxes, frames = set(), set()
    for path in instance_files(folder):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_series[ds.SeriesInstanceUID].add((ds.SOPClassUID, ds.file_meta.TransferSyntaxUID, ds.Modality))
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        frames.add(int(ds.get("NumberOfFrames", 1)))
    assert all(len(kinds) == 1 for kinds in by_series.values())
    assert any(UID(s).is_compressed for s in syntaxes) and any(not UID(s).is_compressed for s in syntaxes)
    assert max(frames) > 1


def test_uids_are_unique_valid_and_under_our_root() -> None:
    series = corpus.plan(5_000, seed=2)
    sops = [s.sop_instance_uid(n) for s in series for n in range(s.instances)]
    series_uids = [s.SeriesInstanceUID for s in series]
    study_uids = {s.study.StudyInstanceUID for s in series}
    assert len(set(sops)) == len(sops) and len(set(series_uids)) == len(series_uids)
    assert not (set(sops) & set(series_uids)) and not (set(series_uids) & study_uids)
    for value in [*sops, *series_uids, *study_uids]:
        assert value.startswith(corpus.UID_ROOT) and UID(value).is_valid
    other_seed = corpus.plan(5_000, seed=3)
    assert not set(sops) & {s.sop_instance_uid(n) for s in other_seed for n in range(s.instances)}


def test_patient_names_come_in_several_scripts_and_read_back() -> None:
    series = corpus.plan(20_000, seed=5)
    first_of_charset = {}
    for s in series:
        first_of_charset.setdefault(s.study.patient.SpecificCharacterSet, s)
    assert {"", "ISO_IR 192", "ISO_IR 100", "\\ISO 2022 IR 87", "\\ISO 2022 IR 149"} <= first_of_charset.keys()
    for charset, s in first_of_charset.items():
        ds = read(next(corpus.series_instances(s)))
        assert str(ds.PatientName) == s.study.patient.PatientName
        value = ds.get("SpecificCharacterSet", "")
        assert (value if isinstance(value, str) else "\\".join(value)) == charset


def test_broken_files_are_counted_and_refused(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    broken = sorted((folder / "broken").iterdir())
    assert manifest["broken"] == len(broken) == len(manifest["broken_files"]) == 5
    assert sorted(manifest["broken_files"]) == sorted(f"broken/{p.name}" for p in broken)
    for path in broken:
        with pytest.raises(DicomParseError):
            parse(path.read_bytes())
    # pydicom reads a truncated file without complaint (it stops at the end), so only these two:
    for name in ("not_dicom.dcm", "empty.dcm"):
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(folder / "broken" / name)


def test_manifest_counts_what_the_folder_holds(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    files = instance_files(folder)
    assert manifest["seed"] == 11 and manifest["metadata_only"] is False
    assert manifest["instances"] == len(files) == sum(manifest["sources"].values())
    assert manifest["bytes"] == sum(p.stat().st_size for p in files)
    assert manifest["patients"] == len({p.relative_to(folder).parts[0] for p in files})
    assert manifest["studies"] == len({p.parent.parent for p in files})
    assert manifest["series"] == len({p.parent for p in files})


def test_metadata_only_corpus_has_no_pixel_data(tmp_path: Path) -> None:
    manifest = corpus.generate(150, tmp_path, seed=11, metadata_only=True, **SHARES)
    assert manifest.metadata_only and manifest.instances == 150
    for path in instance_files(tmp_path):
        ds = read(path.read_bytes())
        assert "PixelData" not in ds and "FloatPixelData" not in ds
        assert not any(element.VR in ("OB", "OW", "UN") for element in ds)
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
    full = sum(len(d) for d in corpus.instances(150, seed=11, **SHARES))
    assert manifest.bytes < full / 2


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dciodvfy (dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_the_source_does_not_have(tmp_path: Path) -> None:
    def errors(path: str) -> set[str]:
        result = subprocess.run(["dciodvfy", "-new", path], capture_output=True, check=False)
        return {line for line in (result.stdout + result.stderr).decode("latin-1").splitlines() if "Error" in line}

    one_of_each = {s.source: s for s in corpus.plan(20_000, seed=1, **SHARES)}
    assert len(one_of_each) == len(corpus.SOURCES)
    for source, s in sorted(one_of_each.items()):
        clone = tmp_path / "clone.dcm"
        clone.write_bytes(next(corpus.series_instances(s)))
        assert errors(str(clone)) <= errors(corpus.source_path(source)), source


def test_make_builds_the_instances_the_stow_and_qido_benchmarks_ask_for() -> None:
    specs = [corpus.Spec(42, 1, 3), corpus.Spec(3, 0, 0), corpus.Spec(7, 0, 1, "CT_small.dcm")]
    first, accented, ct = (read(d) for d in corpus.make(specs))
    assert (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID) == (
        corpus.uid(1, 42),
        corpus.uid(2, 42, 1),
        corpus.uid(3, 42, 1, 3),
    )
    assert (first.PatientID, first.AccessionNumber, first.InstanceNumber) == ("PID00042", "ACC00000042", 4)
    assert str(first.PatientName) == "Smith^Anna42"
    assert str(accented.PatientName) == "Müller^Jürgen3"
    assert ct.SOPClassUID == pydicom.uid.CTImageStorage and ct.SOPInstanceUID == corpus.uid(3, 7, 0, 1)
    assert list(corpus.batches([b"a", b"b", b"c"], 2)) == [[b"a", b"b"], [b"c"]]


def test_cli_writes_a_corpus_and_prints_its_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    main(["corpus", "--size", "40", "--out", str(tmp_path / "out"), "--seed", "4"])
    printed = capsys.readouterr().out
    manifest = json.loads(printed[: printed.rindex("}") + 1])
    assert manifest["instances"] == 40 and manifest["seed"] == 4
    assert "instances/s" in printed.splitlines()[-1]
    assert len(instance_files(tmp_path / "out")) == 40


@pytest.mark.parametrize("args", [["--size", "huge"], ["--size", "0"], ["--size", "10", "--seed", "-1"]])
def test_cli_refuses_bad_arguments_with_exit_code_2(tmp_path: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        corpus.main([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "something.txt").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        corpus.main(["--size", "10", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert os.listdir(tmp_path) == ["something.txt"]
