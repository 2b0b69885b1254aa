"""DS and IS values keep their text for the tables (the columns are STRING) while the stored DICOM JSON has the
numbers PS3.18 F.2.3 asks for: what dicom.parse keeps in `number_text`, and how dicom.flatten puts it back."""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from conftest import dicom_file
from dicomlake.dicom.flatten import NUMBER_TEXT, ServiceColumns, flatten
from dicomlake.dicom.parse import MAX_SEQUENCE_BYTES, ParsedInstance, parse

# pydicom warns about the overlong values these tests write on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SERVICE = ServiceColumns(datetime(2026, 1, 2, tzinfo=UTC), blob_storage_size=1)


# (tag, VR, placeholder) -> the text a writer put in the file. pydicom reformats numbers (" 007" becomes "007 "),
# so it writes a placeholder number of the same length, replaced afterwards together with its element header.
_TEXTS: dict[tuple[int, str, bytes], bytes] = {}


def _raw(ds: Dataset, tag: int, vr: str, text: str) -> None:
    """Give ds an element whose value, once encoded by `_bytes`, is exactly `text` (space-padded to even)."""
    raw = text.encode("ascii") + (b" " if len(text) % 2 else b"")
    placeholder = f"{len(_TEXTS) % 10 ** len(raw):0{len(raw)}d}".encode()
    _TEXTS[(tag, vr, placeholder)] = raw
    ds.add_new(tag, vr, placeholder.decode())


def _bytes(ds: Dataset, **write: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, **write)
    data = buffer.getvalue()
    for (tag, vr, placeholder), raw in _TEXTS.items():
        group_element = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        for header in (
            group_element + vr.encode() + struct.pack("<H", len(raw)),
            group_element + struct.pack("<L", len(raw)),
        ):
            data = data.replace(header + placeholder, header + raw)
    return data


def _encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return _bytes(ds, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)


def _dataset(**texts: tuple[int, str, str]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    for tag, vr, text in texts.values():
        _raw(ds, tag, vr, text)
    return ds


def _file_meta(parsed: ParsedInstance) -> bytes:
    """The file_meta column as the store writes it (store/instances.py)."""
    meta: dict[str, Any] = dict(parsed.file_meta)
    if parsed.number_text:
        meta[NUMBER_TEXT] = parsed.number_text
    return orjson.dumps(meta)


def _row(parsed: ParsedInstance) -> dict[str, Any]:
    return flatten(orjson.dumps(parsed.metadata), SERVICE, file_meta=_file_meta(parsed)).row


def _values(parsed: ParsedInstance, key: str) -> list:
    return parsed.metadata[key]["Value"]


def test_slice_thickness_of_0_50_is_0_50_in_the_table_and_0_5_in_the_dicom_json() -> None:
    parsed = parse(_encode(_dataset(thickness=(0x00180050, "DS", "0.50"))))
    assert _values(parsed, "00180050") == [0.5]
    assert parsed.number_text == {"00180050": ["0.50"]}
    assert _row(parsed)["SliceThickness"] == "0.50"


def test_padded_exponent_and_leading_zero_values_keep_their_text_without_the_padding() -> None:
    parsed = parse(
        _encode(
            _dataset(
                thickness=(0x00180050, "DS", " 1.0E+02 "),
                number=(0x00200013, "IS", " 007"),
                series=(0x00200011, "IS", "+5"),
                small=(0x00181050, "DS", "1e-5"),
                minus_zero=(0x00200012, "IS", "-0 "),
            )
        )
    )
    assert [_values(parsed, k) for k in ("00180050", "00200013", "00200011", "00181050", "00200012")] == [
        [100.0],
        [7],
        [5],
        [1e-05],
        [0],
    ]
    row = _row(parsed)
    assert row["SliceThickness"] == "1.0E+02"
    assert row["InstanceNumber"] == "007"
    assert row["SeriesNumber"] == "+5"
    assert row["SpatialResolution"] == "1e-5"
    assert row["AcquisitionNumber"] == "-0"


def test_values_their_number_writes_back_keep_nothing_apart() -> None:
    parsed = parse(
        _encode(
            _dataset(
                spacing=(0x00280030, "DS", "0.5\\0.661468 "),
                number=(0x00200013, "IS", "12 "),
                thickness=(0x00180050, "DS", " 5"),
                window=(0x00281050, "DS", "40\\\\-1.5"),  # an empty value between two numbers
                bad=(0x00281051, "DS", "1,5"),  # not a number: the JSON keeps the text already
            )
        )
    )
    assert parsed.number_text == {}
    assert _values(parsed, "00281050") == [40, None, -1.5]
    row = _row(parsed)
    assert row["PixelSpacing"] == ["0.5", "0.661468"]
    assert (row["InstanceNumber"], row["SliceThickness"]) == ("12", "5")
    assert row["WindowCenter"] == ["40", "", "-1.5"]
    assert row["WindowWidth"] == ["1,5"]


def test_multi_valued_elements_keep_every_value_text_and_their_empty_values() -> None:
    parsed = parse(
        _encode(
            _dataset(
                spacing=(0x00280030, "DS", "0.50\\0.50"),
                orientation=(0x00200037, "DS", "1.000000\\0\\0\\0\\1.000000\\0"),
                window=(0x00281050, "DS", "40.0\\\\7"),
                long=(0x00181050, "DS", "1.0000000000000001"),  # too long for a DS, and for a float
            )
        )
    )
    assert _values(parsed, "00280030") == [0.5, 0.5]
    assert _values(parsed, "00281050") == [40.0, None, 7]
    row = _row(parsed)
    assert row["PixelSpacing"] == ["0.50", "0.50"]
    assert row["ImageOrientationPatient"] == ["1.000000", "0", "0", "0", "1.000000", "0"]
    assert row["WindowCenter"] == ["40.0", "", "7"]
    assert row["SpatialResolution"] == "1.0000000000000001"


def test_values_nested_in_sequences_and_private_ones_keep_their_text() -> None:
    inner = Dataset()
    _raw(inner, 0x00181074, "DS", "370.00")  # RadionuclideTotalDose
    _raw(inner, 0x00181072, "TM", "120000")
    second = Dataset()
    _raw(second, 0x00181074, "DS", "1.5")
    ds = _dataset()
    ds.RadiopharmaceuticalInformationSequence = Sequence([inner, second])
    code = Dataset()
    _raw(code, 0x0040A30A, "DS", "0.250")  # NumericValue, two levels deep
    item = Dataset()
    item.ReferencedSegmentNumber = 1
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedImageSequence = Sequence([Dataset(), item])
    ds.add_new(0x00090010, "LO", "ACME")
    _raw(ds, 0x00091001, "DS", "2.50\\3")
    parsed = parse(_encode(ds))
    assert parsed.number_text == {
        "00540016/0/00181074": ["370.00"],
        "00081140/1/0040A170/0/0040A30A": ["0.250"],
        "00091001": ["2.50", "3"],
    }
    row = _row(parsed)
    assert [i["RadionuclideTotalDose"] for i in row["RadiopharmaceuticalInformationSequence"]] == ["370.00", "1.5"]
    assert row["ReferencedImageSequence"][1]["PurposeOfReferenceCodeSequence"][0]["NumericValue"] == ["0.250"]
    assert {"Tag": "Tag_00091001", "Data": ["2.50", "3"]} in row["OtherElements"]
    assert parsed.metadata["00540016"]["Value"][0]["00181074"]["Value"] == [370.0]


def test_implicit_vr_files_keep_the_text_too() -> None:
    parsed = parse(_encode(_dataset(thickness=(0x00180050, "DS", "0.50 ")), ImplicitVRLittleEndian))
    assert _row(parsed)["SliceThickness"] == "0.50"


def test_a_real_file_modified_with_pydicom_keeps_slice_thickness_and_pixel_spacing_text() -> None:
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    _raw(ds, 0x00180050, "DS", "0.50")
    _raw(ds, 0x00280030, "DS", "0.50\\0.50")
    _raw(ds, 0x00200013, "IS", " 007")
    parsed = parse(_bytes(ds))
    row = _row(parsed)
    assert (row["SliceThickness"], row["PixelSpacing"], row["InstanceNumber"]) == ("0.50", ["0.50", "0.50"], "007")
    assert row["SliceLocation"] == "-77.2040634155"  # written as it reads back: its own number
    # GE's six decimals ("5.000000") are kept as written, in the same structure.
    assert row["SpacingBetweenSlices"] == "5.000000"
    assert _values(parsed, "00180088") == [5.0]


def test_instances_stored_without_the_text_show_the_number_as_the_json_writes_it() -> None:
    parsed = parse(_encode(_dataset(thickness=(0x00180050, "DS", "0.50"), number=(0x00200013, "IS", "007"))))
    row = flatten(orjson.dumps(parsed.metadata), SERVICE, file_meta=orjson.dumps(parsed.file_meta)).row
    assert (row["SliceThickness"], row["InstanceNumber"]) == ("0.5", "7")


def test_dict_input_gets_the_text_and_the_callers_data_set_is_left_alone() -> None:
    parsed = parse(_encode(_dataset(thickness=(0x00180050, "DS", "0.50"))))
    before = orjson.dumps(parsed.metadata)
    meta = {**parsed.file_meta, NUMBER_TEXT: parsed.number_text}
    assert flatten(parsed.metadata, SERVICE, file_meta=meta).row["SliceThickness"] == "0.50"
    assert orjson.dumps(parsed.metadata) == before
    assert NUMBER_TEXT in meta


def test_texts_that_no_longer_match_the_data_set_are_passed_over() -> None:
    parsed = parse(_encode(_dataset(thickness=(0x00180050, "DS", "0.50"), number=(0x00200013, "IS", "7"))))
    texts = {
        "00180050": ["0.50", "1"],  # another count of values
        "00200013": ["007"],  # no longer recorded for this element... but still a DS/IS with one value
        "00080016": ["x"],  # not a DS or IS
        "00540016/0/00181074": ["1"],  # no such sequence
        "00180050/0": ["1"],  # an odd path
        "00180050/x/00181074": ["1"],
    }
    meta = orjson.dumps({**parsed.file_meta, NUMBER_TEXT: texts})
    row = flatten(orjson.dumps(parsed.metadata), SERVICE, file_meta=meta).row
    assert row["SliceThickness"] == "0.5"
    assert row["InstanceNumber"] == "007"
    assert row["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert "NumberText" not in row and not any(o["Tag"] == "Tag_NUMBERTEXT" for o in row.get("OtherElements", []))


def test_texts_inside_a_sequence_dropped_for_its_size_are_not_kept() -> None:
    big = Dataset()
    _raw(big, 0x00181074, "DS", "0.50")
    big.add_new(0x00081030, "LT", "x" * (MAX_SEQUENCE_BYTES + 10))
    ds = _dataset(thickness=(0x00180050, "DS", "0.50"))
    ds.RadiopharmaceuticalInformationSequence = Sequence([big])
    ds["RadiopharmaceuticalInformationSequence"].is_undefined_length = True
    parsed = parse(_encode(ds))
    assert parsed.dropped == ["00540016"]
    assert parsed.number_text == {"00180050": ["0.50"]}


def test_integers_beyond_64_bits_stay_text_so_the_metadata_stays_json() -> None:
    parsed = parse(
        _encode(_dataset(number=(0x00200013, "IS", "123456789012345678901"), big=(0x00180050, "DS", "1" * 25)))
    )
    assert _values(parsed, "00200013") == ["123456789012345678901"]
    assert _values(parsed, "00180050") == ["1" * 25]
    orjson.dumps(parsed.metadata)  # the store writes this: it must not raise
    assert parsed.number_text == {}


def test_a_sixteen_digit_integer_ds_is_exact_in_the_json() -> None:
    parsed = parse(_encode(_dataset(thickness=(0x00180050, "DS", "1234567890123457"))))
    assert _values(parsed, "00180050") == [1234567890123457]
    assert parsed.number_text == {}
