"""The header parser: what it extracts, what it leaves as bulk data, and what it refuses."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import dicom_file
from dicomlake.dicom.parse import BULKDATA_PREFIX, MAX_SEQUENCE_DEPTH, DicomParseError, parse


def _encode(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _minimal(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    for name, value in attributes.items():
        setattr(ds, name, value)
    return ds


def test_parse_reads_the_uid_triple_syntax_and_frames() -> None:
    parsed = parse(dicom_file("emri_small.dcm").read_bytes())
    source = pydicom.dcmread(dicom_file("emri_small.dcm"))
    assert (parsed.study_uid, parsed.series_uid, parsed.sop_uid) == (
        source.StudyInstanceUID,
        source.SeriesInstanceUID,
        source.SOPInstanceUID,
    )
    assert parsed.transfer_syntax_uid == source.file_meta.TransferSyntaxUID
    assert parsed.number_of_frames == 10


def test_pixel_data_becomes_a_bulkdata_uri_and_group_lengths_are_left_out() -> None:
    metadata = parse(dicom_file("CT_small.dcm").read_bytes()).metadata
    assert metadata["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{BULKDATA_PREFIX}7FE00010"}
    assert not [k for k in metadata if k.endswith("0000")]


def test_iso_2022_person_names_are_decoded_into_their_groups() -> None:
    name = parse(dicom_file("chrH31.dcm").read_bytes()).metadata["00100010"]["Value"][0]
    assert name == {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}


def test_big_endian_file_without_meta_is_read() -> None:
    parsed = parse(dicom_file("ExplVR_BigEndNoMeta.dcm").read_bytes())
    assert parsed.transfer_syntax_uid == "1.2.840.10008.1.2.2"
    source = pydicom.dcmread(dicom_file("ExplVR_BigEndNoMeta.dcm"), force=True)
    assert parsed.sop_uid == source.SOPInstanceUID
    assert parsed.metadata["300A0006"]["Value"] == [source.RTPlanDate]


def test_nested_bulk_data_gets_a_path_through_the_sequence() -> None:
    item = Dataset()
    item.LUTDescriptor = [2048, 0, 16]
    item.add_new(0x00283006, "US", list(range(2048)))  # LUTData, 2048 entries: bulk by the 512 rule
    data = _encode(_minimal(VOILUTSequence=Sequence([item])))
    lut = parse(data).metadata["00283010"]["Value"][0]["00283006"]
    assert lut["BulkDataURI"] == f"{BULKDATA_PREFIX}00283010/0/00283006"


def test_sequences_over_one_mebibyte_are_left_out_of_the_metadata() -> None:
    big = Dataset()
    big.TextValue = "x" * 60000
    data = _encode(_minimal(ContentSequence=Sequence([big] * 20), PatientID="kept"))
    metadata = parse(data).metadata
    assert "0040A730" not in metadata
    assert metadata["00100020"]["Value"] == ["kept"]


def nested(levels: int) -> Dataset:
    """A data set whose ContentSequence nests `levels` deep, a TextValue in the innermost item."""
    inner = Dataset()
    inner.TextValue = "innermost"
    for _ in range(levels - 1):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    return _minimal(ContentSequence=Sequence([inner]))


def test_sequences_nested_to_the_depth_limit_are_read() -> None:
    item = parse(_encode(nested(MAX_SEQUENCE_DEPTH))).metadata
    for _ in range(MAX_SEQUENCE_DEPTH):
        item = item["0040A730"]["Value"][0]
    assert item["0040A160"]["Value"] == ["innermost"]


def raw_nested(levels: int) -> bytes:
    """A Part 10 file with a ContentSequence nested `levels` deep, written byte by byte (pydicom's writer takes
    minutes past a few hundred levels): undefined-length sequences and items in Explicit VR Little Endian."""
    opening = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return _encode(_minimal()) + opening * levels + closing * levels


def test_sequences_nested_past_the_depth_limit_are_refused_with_a_reason() -> None:
    for data in (_encode(nested(MAX_SEQUENCE_DEPTH + 1)), _encode(nested(150)), raw_nested(100_000)):
        with pytest.raises(
            DicomParseError, match=f"nested more than {MAX_SEQUENCE_DEPTH} levels deep in \\(0040,A730\\)"
        ):
            parse(data)


def test_raw_sequences_nested_to_the_depth_limit_are_read() -> None:
    item = parse(raw_nested(MAX_SEQUENCE_DEPTH)).metadata
    for _ in range(MAX_SEQUENCE_DEPTH - 1):
        item = item["0040A730"]["Value"][0]
    assert item["0040A730"] == {"vr": "SQ", "Value": [{}]}


def test_deep_sequences_in_implicit_vr_are_refused_too() -> None:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, nested(100), implicit_vr=True, little_endian=True)
    with pytest.raises(DicomParseError, match="nested more than"):
        parse(buffer.getvalue())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"hello, this is not DICOM at all" * 4, "not a DICOM file"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00", "truncated"),
    ],
)
def test_non_dicom_input_is_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(DicomParseError, match=message):
        parse(data)


def test_truncated_file_is_refused() -> None:
    data = dicom_file("CT_small.dcm").read_bytes()
    with pytest.raises(DicomParseError, match="truncated"):
        parse(data[: len(data) // 2])


def test_instance_without_uids_is_refused() -> None:
    ds = Dataset()
    ds.PatientName = "No^Uids"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    with pytest.raises(DicomParseError, match="missing StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID"):
        parse(_encode(ds))


@pytest.mark.parametrize(
    "charset",
    [b"ISO_IR 192\x08\x00\x08\x00CS\x18\x00DERIVED", b"ISO_IR\x00100", b"\x00\x00", b"NOT A CHARSET", b"\\\\"],
)
def test_a_specific_character_set_naming_no_character_set_falls_back_to_the_default(charset: bytes) -> None:
    # The element's value replaced in place: pydicom would not write these.
    good = _encode(_minimal(SpecificCharacterSet="ISO_IR 100", PatientName="Doe^Jane"))
    at = good.index(b"\x08\x00\x05\x00CS")
    length = int.from_bytes(good[at + 6 : at + 8], "little")
    value = charset + b" " * (len(charset) % 2)
    broken = good[: at + 6] + len(value).to_bytes(2, "little") + value + good[at + 8 + length :]
    parsed = parse(broken)
    assert parsed.metadata["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
