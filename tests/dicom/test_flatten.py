"""The BigQuery flattener: rows and schema fields of real files, shapes fixed by the IDC schema and spec §1,
DroppedTags, partial dates, schema merging and demotion of conflicting columns."""

from __future__ import annotations

import json
import math
import warnings
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.valuerep import PersonName

from conftest import all_dicom_files, dicom_file
from dicomlake.dicom.flatten import (
    OTHER_ELEMENTS_FIELD,
    SERVICE_FIELDS,
    ServiceColumns,
    delete_row,
    demote,
    flatten,
    row_problems,
)
from dicomlake.dicom.parse import DicomParseError, parse
from dicomlake.warehouse.dicom_tables import merge_fields

IDC_SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "spec" / "idc_dicom_all_schema.json"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SERVICE = ServiceColumns(NOW, storage_class="STANDARD", blob_storage_size=1234)
# The IDC table was written with an older dictionary, in which this element had VM 1 (spec §1.1).
OLDER_DICTIONARY = {"SegmentSequence.SegmentAlgorithmName"}
UIDS = {
    "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
    "00080018": {"vr": "UI", "Value": ["1.2.3.4.5"]},
}


@cache
def parsed_files() -> tuple[tuple[Path, bytes], ...]:
    """(path, stored DICOM JSON text) of every test file dicomlake accepts."""
    out = []
    for path in all_dicom_files():
        try:
            metadata = parse(path.read_bytes()).metadata
        except DicomParseError:
            continue
        out.append((path, orjson.dumps(metadata)))
    return tuple(out)


def flat(name: str) -> Any:
    return flatten(parse(dicom_file(name).read_bytes()).metadata, SERVICE)


def field_named(fields: list[dict], name: str) -> dict:
    return next(f for f in fields if f["name"] == name)


def idc_fields() -> list[dict]:
    return json.loads(IDC_SCHEMA.read_text())["schema"]["fields"][39:]  # the first 39 are IDC's own columns


def shape(f: dict) -> dict:
    """A field without its description, as the flattener writes it."""
    out = {"name": f["name"], "type": f["type"], "mode": f["mode"]}
    if "fields" in f:
        out["fields"] = [shape(g) for g in f["fields"]]
    return out


def assert_row_fits(flat_row: Any) -> None:
    assert row_problems(flat_row.row, flat_row.fields) == []
    names_at_each_level(flat_row.fields)


def names_at_each_level(fields: list[dict]) -> None:
    names = [f["name"] for f in fields]
    assert len(names) == len({n.lower() for n in names}), names
    for f in fields:
        if f["type"] == "RECORD":
            assert f["fields"], f["name"]
            names_at_each_level(f["fields"])


# ---- every real file ------------------------------------------------------------------------------------------


def test_every_test_file_becomes_a_row_its_fields_describe() -> None:
    assert len(parsed_files()) > 200
    for path, text in parsed_files():
        result = flatten(text, SERVICE)
        assert row_problems(result.row, result.fields) == [], path.name
        names_at_each_level(result.fields)
        assert result.fields[-len(SERVICE_FIELDS) :] == SERVICE_FIELDS
        assert result.row["StructuredStorageSize"] == len(text)
        assert result.row["SOPInstanceUID"]
        assert "DroppedTags" not in result.row, path.name


def test_columns_shared_with_the_idc_schema_have_its_type_and_mode() -> None:
    idc = idc_fields()
    shared: set[str] = set()
    mismatches: dict[str, tuple] = {}

    def compare(ours: list[dict], theirs: list[dict], path: str) -> None:
        by_name = {f["name"]: f for f in theirs}
        for f in ours:
            other = by_name.get(f["name"])
            if other is None:
                continue
            shared.add(path + f["name"])
            if (f["type"], f["mode"]) != (other["type"], other["mode"]):
                mismatches[path + f["name"]] = ((f["type"], f["mode"]), (other["type"], other["mode"]))
            if "fields" in f and "fields" in other:
                compare(f["fields"], other["fields"], f"{path}{f['name']}.")

    for _, text in parsed_files():
        compare(flatten(text, SERVICE).fields, idc, "")
    assert len(shared) > 500
    assert {"PatientName.Ideographic.GivenName", "OverlayOrigin.Value", "OtherElements.Data"} <= shared
    assert set(mismatches) <= OLDER_DICTIONARY, mismatches


def test_text_and_dict_input_give_the_same_row() -> None:
    for _, text in parsed_files()[:40]:
        from_text = flatten(text, SERVICE)
        from_dict = flatten(orjson.loads(text), SERVICE)
        assert from_text.row == from_dict.row
        assert from_text.fields == from_dict.fields


# ---- values against pydicom -----------------------------------------------------------------------------------

STRING_VRS = {"AE", "AS", "CS", "LO", "LT", "SH", "ST", "UC", "UI", "UR", "UT"}


def expected_values(element: pydicom.DataElement) -> list:
    """The element's values as pydicom reads them, converted the way the column should hold them."""
    raw = element.value
    values = list(raw) if isinstance(raw, pydicom.multival.MultiValue | list) else [raw]
    vr = element.VR
    if vr in STRING_VRS:
        return [str(v).strip(" \x00") if vr not in ("LT", "ST", "UT") else str(v).rstrip(" \x00") for v in values]
    if vr in ("US", "SS", "UL", "SL", "IS", "AT"):
        return [int(v) for v in values]
    if vr in ("DS", "FL", "FD"):
        return [float(v) for v in values]
    if vr == "DA":
        return [date(int(v[:4]), int(v[4:6]), int(v[6:8])) for v in map(str, values)]
    if vr == "TM":
        return [time(int(v[:2]), int(v[2:4] or 0), int(v[4:6] or 0)) for v in (str(v).split(".")[0] for v in values)]
    if vr == "PN":
        return [PersonName(v).components for v in values]
    raise AssertionError(vr)


def row_values(value: Any, vr: str) -> list:
    values = value if isinstance(value, list) else [value]
    if vr in ("IS",):
        return [int(v) for v in values]
    if vr == "DS":
        return [float(v) for v in values]
    if vr == "TM":
        return [v.replace(microsecond=0) for v in values]
    if vr == "PN":
        return [
            tuple(
                "^".join(
                    v[g].get(c, "") for c in ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
                ).rstrip("^")
                for g in ("Alphabetic", "Ideographic", "Phonetic")
                if g in v
            )
            for v in values
        ]
    return values


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True)
    )


COMPARED_VRS = STRING_VRS | {"US", "SS", "UL", "SL", "IS", "DS", "FL", "FD", "DA", "TM", "PN", "AT"}


def compare_with_pydicom(ds: pydicom.Dataset, row: dict, where: str, checked_vrs: set[str]) -> int:
    """How many elements of ds (and its sequence items, recursively) hold the same values in row."""
    compared = 0
    demoted = {o["Tag"] for o in row.get("OtherElements", [])}
    for element in ds:
        vr, keyword = element.VR, keyword_for_tag(element.tag)
        if not keyword or element.tag.is_private or element.tag.group == 0x0002 or element.is_empty:
            continue
        if vr == "SQ" and keyword in row:
            for item, item_row in zip(element.value, row[keyword], strict=True):
                compared += compare_with_pydicom(item, item_row, f"{where}.{keyword}", checked_vrs)
            continue
        if vr not in COMPARED_VRS or (element.VM > 1 and len(element.value) != element.VM):
            continue
        if "OW" in dictionary_VR(element.tag):
            assert keyword not in row, (where, keyword)  # "US or OW" lookup tables are bulk data
            continue
        if keyword not in row and vr == "PN" and not str(element.value).strip(" ^="):
            continue  # "^^^^" is an empty name
        if keyword not in row:
            # Out of the typed column only when the value does not fit it (§1.14).
            assert f"Tag_{element.tag:08X}" in demoted, (where, keyword)
            continue
        try:
            want = expected_values(element)
        except (ValueError, TypeError):
            continue  # pydicom's own conversion fails: the value is malformed, nothing to compare
        value = row[keyword]
        if element.tag.group >> 8 in (0x50, 0x60):  # a repeating group: the record of this group
            value = next(r["Value"] for r in value if r["Id"] == f"{element.tag.group:04X}")
        got = row_values(value, vr)
        if vr == "PN":
            want = [tuple(c.rstrip("^") for c in w) for w in want]
            got = [g[: len(w)] for g, w in zip(got, want, strict=False)]
        assert same(got, want), (where, keyword, got, want)
        compared += 1
        checked_vrs.add(vr)
    return compared


def test_values_equal_what_pydicom_reads_from_the_same_files() -> None:
    compared = 0
    checked_vrs: set[str] = set()
    for path, text in parsed_files():
        row = flatten(text, SERVICE).row
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                ds.to_json_dict()  # decodes every value up front
            except Exception:  # pydicom refuses a value dicomlake keeps (e.g. IS "1A"): nothing to compare with
                continue
            compared += compare_with_pydicom(ds, row, path.name, checked_vrs)
    assert compared > 20000
    assert checked_vrs >= {"CS", "UI", "LO", "SH", "DS", "IS", "US", "SS", "UL", "DA", "TM", "PN", "FD", "FL", "AT"}


def test_ds_without_kept_text_is_the_number_as_the_stored_json_writes_it() -> None:
    # Instances stored before the parser kept DS and IS text (tests/dicom/test_number_text.py) look like this.
    metadata = {
        **UIDS,
        "00280030": {"vr": "DS", "Value": [0.661468, 0.5]},
        "00180050": {"vr": "DS", "Value": [5]},
        "00281050": {"vr": "DS", "Value": ["1,5"]},  # not a number: the parser keeps the text
        "00281051": {"vr": "DS", "Value": [1e-05, None, 2]},  # None: an empty value between backslashes
        "00200013": {"vr": "IS", "Value": [7]},
    }
    row = flatten(metadata, SERVICE).row
    assert row["WindowWidth"] == ["0.00001", "", "2"]
    assert row["PixelSpacing"] == ["0.661468", "0.5"]
    assert row["SliceThickness"] == "5"
    assert row["WindowCenter"] == ["1,5"]
    assert row["InstanceNumber"] == "7"


# ---- shapes of particular columns ---------------------------------------------------------------------------


def test_patient_name_is_a_record_of_three_groups_of_five_components() -> None:
    result = flat("chrH31.dcm")
    assert field_named(result.fields, "PatientName") == shape(field_named(idc_fields(), "PatientName"))
    assert result.row["PatientName"] == {
        "Alphabetic": {"FamilyName": "Yamada", "GivenName": "Tarou"},
        "Ideographic": {"FamilyName": "山田", "GivenName": "太郎"},
        "Phonetic": {"FamilyName": "やまだ", "GivenName": "たろう"},
    }


def test_person_names_with_vm_1_n_are_repeated_records() -> None:
    metadata = {**UIDS, "00081070": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}, {"Alphabetic": "Roe^R^^Dr"}]}}
    result = flatten(metadata, SERVICE)
    assert field_named(result.fields, "OperatorsName") == shape(field_named(idc_fields(), "OperatorsName"))
    assert result.row["OperatorsName"] == [
        {"Alphabetic": {"FamilyName": "Doe", "GivenName": "Jane"}},
        {"Alphabetic": {"FamilyName": "Roe", "GivenName": "R", "NamePrefix": "Dr"}},
    ]


def test_dates_times_and_numbers_of_ct_small() -> None:
    result = flat("CT_small.dcm")
    row = result.row
    assert row["StudyDate"] == date(2004, 1, 19)
    assert row["StudyTime"] == time(7, 27, 30)
    assert field_named(result.fields, "StudyDate") == {"name": "StudyDate", "type": "DATE", "mode": "NULLABLE"}
    assert field_named(result.fields, "StudyTime") == {"name": "StudyTime", "type": "TIME", "mode": "NULLABLE"}
    assert row["PixelSpacing"] == ["0.661468", "0.661468"]
    assert field_named(result.fields, "PixelSpacing") == {"name": "PixelSpacing", "type": "STRING", "mode": "REPEATED"}
    assert row["InstanceNumber"] == "1"
    assert field_named(result.fields, "InstanceNumber") == {
        "name": "InstanceNumber",
        "type": "STRING",
        "mode": "NULLABLE",
    }
    assert row["Rows"] == 128 and row["PixelPaddingValue"] == -2000
    assert row["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert row["LastUpdated"] == NOW and row["Type"] == "CREATE"
    assert row["StorageClass"] == "STANDARD" and row["BlobStorageSize"] == 1234


def test_sequences_are_repeated_records_with_item_columns() -> None:
    result = flat("CT_small.dcm")
    assert result.row["OtherPatientIDsSequence"] == [
        {"PatientID": "ABCD1234", "TypeOfPatientID": "TEXT"},
        {"PatientID": "1234ABCD", "TypeOfPatientID": "TEXT"},
    ]
    assert field_named(result.fields, "OtherPatientIDsSequence") == {
        "name": "OtherPatientIDsSequence",
        "type": "RECORD",
        "mode": "REPEATED",
        "fields": [
            {"name": "PatientID", "type": "STRING", "mode": "NULLABLE"},
            {"name": "TypeOfPatientID", "type": "STRING", "mode": "NULLABLE"},
        ],
    }


def test_item_columns_are_the_union_over_all_items() -> None:
    item_a = {"00080100": {"vr": "SH", "Value": ["A"]}}
    item_b = {"00080104": {"vr": "LO", "Value": ["meaning"]}, "00091001": {"vr": "LO", "Value": ["x"]}}
    result = flatten({**UIDS, "00081032": {"vr": "SQ", "Value": [item_a, item_b]}}, SERVICE)
    sequence = field_named(result.fields, "ProcedureCodeSequence")
    assert [f["name"] for f in sequence["fields"]] == ["CodeValue", "CodeMeaning", "OtherElements"]
    assert result.row["ProcedureCodeSequence"] == [
        {"CodeValue": "A"},
        {"CodeMeaning": "meaning", "OtherElements": [{"Tag": "Tag_00091001", "Data": ["x"]}]},
    ]
    assert_row_fits(result)


def test_private_elements_go_to_other_elements() -> None:
    result = flat("CT_small.dcm")
    other = {o["Tag"]: o["Data"] for o in result.row["OtherElements"]}
    assert other["Tag_00090010"] == ["GEMS_IDEN_01"]  # a private creator
    assert other["Tag_00431012"] == ["14", "2", "3"]  # SS, VM 3
    assert other["Tag_00091030"] == []  # present, empty
    assert field_named(result.fields, "OtherElements") == shape(field_named(idc_fields(), "OtherElements"))
    assert result.fields[-len(SERVICE_FIELDS) - 1]["name"] == "OtherElements"


def test_private_sequences_become_tag_columns_with_their_own_other_elements() -> None:
    result = flat("OBXXXX1A.dcm")
    column = field_named(result.fields, "Tag_200D110D")
    assert (column["type"], column["mode"]) == ("RECORD", "REPEATED")
    item = result.row["Tag_200D110D"][0]
    inner = {o["Tag"]: o["Data"] for o in item["OtherElements"]}
    assert inner["Tag_200D0010"] == ["Philips US Imaging DD 109"]
    assert "Tag_200D1001" in item  # a private sequence inside a private sequence
    assert {f["name"] for f in column["fields"]} >= {"OtherElements", "Tag_200D1001"}
    assert_row_fits(result)


def test_overlays_are_id_value_records_one_per_group() -> None:
    result = flat("MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert result.row["OverlayRows"] == [{"Id": "6000", "Value": 484}]
    assert result.row["OverlayOrigin"] == [{"Id": "6000", "Value": [1, 1]}]
    assert result.row["OverlayType"] == [{"Id": "6000", "Value": "G"}]
    for name in ("OverlayRows", "OverlayOrigin", "OverlayType"):
        assert field_named(result.fields, name) == shape(field_named(idc_fields(), name))
    assert "OverlayData" not in result.row  # OW: excluded


def test_two_overlay_groups_share_one_column() -> None:
    metadata = {
        **UIDS,
        "60000010": {"vr": "US", "Value": [512]},
        "60020010": {"vr": "US", "Value": [256]},
        "60020050": {"vr": "SS", "Value": [1, 2]},
    }
    result = flatten(metadata, SERVICE)
    assert result.row["OverlayRows"] == [{"Id": "6000", "Value": 512}, {"Id": "6002", "Value": 256}]
    assert result.row["OverlayOrigin"] == [{"Id": "6002", "Value": [1, 2]}]
    assert [f["name"] for f in result.fields].count("OverlayRows") == 1
    assert_row_fits(result)


def test_excluded_vrs_and_bulk_data_are_left_out_silently() -> None:
    metadata = {
        **UIDS,
        "00283010": {
            "vr": "SQ",
            "Value": [{"00283002": {"vr": "US", "Value": [256, 0, 16]}, "00283006": {"vr": "US", "Value": [1, 2]}}],
        },
        "7FE00010": {"vr": "OW", "BulkDataURI": "dicomlake:bulkdata/7FE00010"},
        "00020001": {"vr": "OB", "InlineBinary": "AAE="},
        "00660016": {"vr": "OF", "InlineBinary": "AACAPw=="},
        "00091010": {"vr": "UN", "BulkDataURI": "dicomlake:bulkdata/00091010"},
    }
    result = flatten(metadata, SERVICE)
    assert result.row["VOILUTSequence"] == [{"LUTDescriptor": [256, 0, 16]}]  # LUTData is "US or OW": bulk data
    names = {f["name"] for f in result.fields}
    assert not names & {"PixelData", "FileMetaInformationVersion", "PointCoordinatesData", "OtherElements"}
    assert "DroppedTags" not in result.row


def test_file_meta_elements_have_the_idc_columns() -> None:
    parsed = parse(dicom_file("CT_small.dcm").read_bytes())
    result = flatten(orjson.dumps(parsed.metadata), SERVICE, file_meta=parsed.file_meta)
    assert result.row["TransferSyntaxUID"] == parsed.transfer_syntax_uid
    assert result.row["MediaStorageSOPInstanceUID"] == parsed.sop_uid
    idc = {f["name"]: f for f in idc_fields()}
    for name in (
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
    ):
        assert field_named(result.fields, name) == shape(idc[name])
    assert result.fields[0]["name"] == "MediaStorageSOPClassUID"
    assert "FileMetaInformationVersion" not in result.row


def test_empty_elements_have_a_column_and_no_value() -> None:
    result = flatten({**UIDS, "00080050": {"vr": "SH"}, "00081110": {"vr": "SQ"}}, SERVICE)
    assert "AccessionNumber" not in result.row
    assert field_named(result.fields, "AccessionNumber")["type"] == "STRING"
    assert "ReferencedStudySequence" not in {f["name"] for f in result.fields}  # a RECORD needs fields


# ---- values that do not fit their column ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1230", time(12, 30)), ("12", time(12)), ("123045.5", time(12, 30, 45, 500000)), ("12:30:45", time(12, 30, 45))],
)
def test_partial_times_keep_what_is_there(text: str, expected: time) -> None:
    row = flatten({**UIDS, "00080030": {"vr": "TM", "Value": [text]}}, SERVICE).row
    assert row["StudyTime"] == expected
    assert "OtherElements" not in row


@pytest.mark.parametrize("text", ["2020", "202001", "20201301", "2020-01-01", "00000000"])
def test_partial_or_invalid_dates_go_to_other_elements(text: str) -> None:
    result = flatten({**UIDS, "00080020": {"vr": "DA", "Value": [text]}}, SERVICE)
    assert "StudyDate" not in result.row
    assert result.row["OtherElements"] == [{"Tag": "Tag_00080020", "Data": [text]}]
    assert_row_fits(result)


def test_datetimes_need_a_whole_date_and_honour_the_offset() -> None:
    metadata = {
        **UIDS,
        "0008002A": {"vr": "DT", "Value": ["20200102123000.25+0100"]},
        "00181202": {"vr": "DT", "Value": ["202001"]},
        "0040A13A": {"vr": "DT", "Value": ["20200102"]},
    }
    result = flatten(metadata, SERVICE)
    assert result.row["AcquisitionDateTime"] == datetime(2020, 1, 2, 11, 30, 0, 250000, tzinfo=UTC)
    assert result.row["ReferencedDateTime"] == [datetime(2020, 1, 2, tzinfo=UTC)]
    assert "DateTimeOfLastCalibration" not in result.row
    assert {"Tag": "Tag_00181202", "Data": ["202001"]} in result.row["OtherElements"]
    assert_row_fits(result)


def test_several_values_in_a_vm_1_element_or_a_foreign_vr_go_to_other_elements() -> None:
    metadata = {
        **UIDS,
        "00100020": {"vr": "LO", "Value": ["A", "B"]},  # PatientID has VM 1
        "00280010": {"vr": "LO", "Value": ["big"]},  # Rows is US
        "00280011": {"vr": "SS", "Value": [5]},  # Columns is US: SS is also an INTEGER
    }
    result = flatten(metadata, SERVICE)
    assert result.row["OtherElements"] == [
        {"Tag": "Tag_00100020", "Data": ["A", "B"]},
        {"Tag": "Tag_00280010", "Data": ["big"]},
    ]
    assert result.row["Columns"] == 5
    assert "PatientID" not in result.row and "Rows" not in result.row


# ---- DroppedTags ----------------------------------------------------------------------------------------------


def nested(depth: int) -> dict:
    """A ContentSequence chain `depth` sequences deep, each item with a code value and a private element."""
    item: dict = {"00080100": {"vr": "SH", "Value": [f"level{depth}"]}, "00091001": {"vr": "LO", "Value": ["p"]}}
    for level in range(depth - 1, 0, -1):
        item = {
            "00080100": {"vr": "SH", "Value": [f"level{level}"]},
            "0040A730": {"vr": "SQ", "Value": [item]},
            "0040A123": {"vr": "PN", "Value": [{"Alphabetic": "Doe^J"}]},
        }
    return {**UIDS, "0040A730": {"vr": "SQ", "Value": [item]}}


def test_sequences_deeper_than_fifteen_levels_are_dropped_tags() -> None:
    result = flatten(nested(20), SERVICE)
    assert_row_fits(result)
    depth, item = 1, result.row["ContentSequence"][0]
    while "ContentSequence" in item:
        depth, item = depth + 1, item["ContentSequence"][0]
    assert depth == 14  # the 14th sequence's items sit at level 15; a 15th would put its items at 16
    assert item["CodeValue"] == "level14"
    assert "PersonName" not in item  # a PN needs two more levels
    assert result.row["DroppedTags"] == [{"TagName": "ContentSequence"}, {"TagName": "PersonName"}]
    assert {"name": "TagName", "type": "STRING", "mode": "NULLABLE"} in field_named(result.fields, "DroppedTags")[
        "fields"
    ]


def test_shallow_nesting_drops_nothing() -> None:
    result = flatten(nested(10), SERVICE)
    assert "DroppedTags" not in result.row
    assert_row_fits(result)


def test_elements_over_one_mebibyte_are_dropped_tags() -> None:
    big = "x" * (1 << 20)
    metadata = {
        **UIDS,
        "00204000": {"vr": "LT", "Value": ["small"]},
        "0040A160": {"vr": "UT", "Value": [big]},  # TextValue
        "00291010": {"vr": "UT", "Value": [big]},
    }
    for given in (metadata, orjson.dumps(metadata)):
        result = flatten(given, SERVICE)
        assert result.row["ImageComments"] == "small"
        assert "TextValue" not in result.row and "OtherElements" not in result.row
        assert result.row["DroppedTags"] == [{"TagName": "TextValue"}, {"TagName": "Tag_00291010"}]
        assert result.row["StructuredStorageSize"] == len(orjson.dumps(metadata))


# ---- delete rows, schema merging, demotion --------------------------------------------------------------------


def test_delete_row_carries_the_uids_type_and_time_only() -> None:
    when = datetime(2026, 1, 2, 4, 4, 5, tzinfo=UTC) + timedelta(hours=1)
    result = delete_row("1.2", "1.2.3", "1.2.3.4", when.astimezone())
    assert result.row == {
        "StudyInstanceUID": "1.2",
        "SeriesInstanceUID": "1.2.3",
        "SOPInstanceUID": "1.2.3.4",
        "LastUpdated": when,
        "Type": "DELETE",
    }
    assert_row_fits(result)
    merged = merge_fields(flat("CT_small.dcm").fields, result.fields)
    assert merged.conflicts == {}


def test_merge_fields_appends_new_columns_and_nested_fields_in_place() -> None:
    existing = [
        {"name": "A", "type": "STRING", "mode": "NULLABLE"},
        {
            "name": "S",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [{"name": "X", "type": "INTEGER", "mode": "NULLABLE"}],
        },
        {"name": "R", "type": "STRING", "mode": "REQUIRED"},
    ]
    incoming = [
        {"name": "B", "type": "DATE", "mode": "NULLABLE"},
        {
            "name": "S",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [{"name": "Y", "type": "FLOAT", "mode": "REPEATED"}],
        },
        {"name": "R", "type": "STRING", "mode": "NULLABLE"},
        {"name": "A", "type": "STRING", "mode": "NULLABLE"},
    ]
    merged = merge_fields(existing, incoming)
    assert merged.conflicts == {}
    assert merged.fields == [
        existing[0],
        {
            "name": "S",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [
                {"name": "X", "type": "INTEGER", "mode": "NULLABLE"},
                {"name": "Y", "type": "FLOAT", "mode": "REPEATED"},
            ],
        },
        {"name": "R", "type": "STRING", "mode": "NULLABLE"},  # REQUIRED relaxed
        incoming[0],
    ]
    assert existing[1]["fields"] == [{"name": "X", "type": "INTEGER", "mode": "NULLABLE"}]  # inputs untouched


def test_merge_fields_reports_type_and_mode_changes_as_conflicts() -> None:
    existing = [
        {"name": "N", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "M", "type": "STRING", "mode": "NULLABLE"},
        {"name": "S", "type": "RECORD", "mode": "REPEATED", "fields": [{"name": "D", "type": "STRING"}]},
        {"name": "F", "type": "FLOAT64", "mode": "NULLABLE"},
    ]
    incoming = [
        {"name": "N", "type": "FLOAT", "mode": "NULLABLE"},  # INTEGER -> FLOAT: not allowed in BigQuery
        {"name": "M", "type": "STRING", "mode": "REPEATED"},  # NULLABLE -> REPEATED: not allowed either
        {
            "name": "S",
            "type": "RECORD",
            "mode": "REPEATED",
            "fields": [{"name": "D", "type": "DATE", "mode": "NULLABLE"}],
        },
        {"name": "F", "type": "FLOAT", "mode": "NULLABLE"},  # an alias, not a change
    ]
    merged = merge_fields(existing, incoming)
    assert set(merged.conflicts) == {"N", "M", "S.D"}
    assert [f["name"] for f in merged.fields] == ["N", "M", "S", "F", "OtherElements"]
    assert merged.fields[2]["fields"][-1] == OTHER_ELEMENTS_FIELD
    assert merged.fields[-1] == OTHER_ELEMENTS_FIELD


def test_demote_moves_conflicting_values_into_other_elements_as_dicom_strings() -> None:
    result = flat("MR-SIEMENS-DICOM-WithOverlays.dcm")
    table = [
        {"name": "StudyDate", "type": "STRING", "mode": "NULLABLE"},
        {"name": "PatientName", "type": "STRING", "mode": "NULLABLE"},
        {"name": "OverlayRows", "type": "INTEGER", "mode": "REPEATED"},
        {"name": "ImagePositionPatient", "type": "FLOAT", "mode": "REPEATED"},
        {"name": "OtherElements", "type": "RECORD", "mode": "REPEATED", "fields": OTHER_ELEMENTS_FIELD["fields"]},
    ]
    merged = merge_fields(table, result.fields)
    assert {"StudyDate", "PatientName", "OverlayRows", "ImagePositionPatient"} <= merged.conflicts.keys()
    row = demote(result.row, frozenset(merged.conflicts))
    fitting = [f for f in merged.fields if f["name"] not in merged.conflicts]
    assert row_problems(row, fitting) == []
    other = {o["Tag"]: o["Data"] for o in row["OtherElements"]}
    source = pydicom.dcmread(dicom_file("MR-SIEMENS-DICOM-WithOverlays.dcm"), stop_before_pixels=True)
    assert other["Tag_00080020"] == [source.StudyDate]
    assert other["Tag_00100010"] == [str(source.PatientName)]
    assert other["Tag_60000010"] == ["484"]
    assert [float(v) for v in other["Tag_00200032"]] == [float(v) for v in source.ImagePositionPatient]
    assert len(row["OtherElements"]) == len(result.row.get("OtherElements", [])) + 4
    assert "StudyDate" in result.row  # the flattened row itself is left as it was


def test_demote_reaches_into_sequence_items_and_renders_times() -> None:
    metadata = {
        **UIDS,
        "00081032": {
            "vr": "SQ",
            "Value": [{"00080100": {"vr": "SH", "Value": ["A"]}}, {"00080030": {"vr": "TM", "Value": ["123045.5"]}}],
        },
    }
    row = demote(flatten(metadata, SERVICE).row, {"ProcedureCodeSequence.CodeValue", "ProcedureCodeSequence.StudyTime"})
    assert row["ProcedureCodeSequence"] == [
        {"OtherElements": [{"Tag": "Tag_00080100", "Data": ["A"]}]},
        {"OtherElements": [{"Tag": "Tag_00080030", "Data": ["123045.500000"]}]},
    ]


def test_a_conflicting_other_elements_column_leaves_its_tags_in_dropped_tags() -> None:
    result = flat("CT_small.dcm")
    row = demote(result.row, {"OtherElements"})
    assert "OtherElements" not in row
    assert {"TagName": "Tag_00090010"} in row["DroppedTags"]


# ---- the row checker itself -----------------------------------------------------------------------------------


def test_row_problems_names_each_kind_of_misfit() -> None:
    fields = [
        {"name": "S", "type": "STRING", "mode": "NULLABLE"},
        {"name": "R", "type": "INTEGER", "mode": "REPEATED"},
        {"name": "T", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "D", "type": "DATE", "mode": "NULLABLE"},
    ]
    problems = row_problems({"S": 1, "R": [1, None], "T": datetime(2020, 1, 1), "D": datetime.now(UTC), "X": 1}, fields)
    assert len(problems) == 5, problems
    assert row_problems({"S": "a", "R": [1, 2], "T": NOW, "D": date(2020, 1, 1)}, fields) == []
