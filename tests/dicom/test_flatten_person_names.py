"""Person names in flattened rows: components past the fifth kept in the suffix, and each row's records its own
although the flattener remembers the names it has split (they recur across a study's instances)."""

from __future__ import annotations

from datetime import UTC, datetime

from dicomlake.dicom.flatten import ServiceColumns, flatten

SERVICE = ServiceColumns(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), blob_storage_size=1)
PATIENT_NAME = "00100010"


def test_components_past_the_fifth_stay_in_the_name_suffix() -> None:
    metadata = {PATIENT_NAME: {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane^^Dr^PhD^MD"}]}}
    row = flatten(metadata, SERVICE).row
    assert row["PatientName"] == {
        "Alphabetic": {"FamilyName": "Doe", "GivenName": "Jane", "NamePrefix": "Dr", "NameSuffix": "PhD^MD"}
    }


def test_a_name_given_as_text_is_split_into_its_groups() -> None:
    metadata = {PATIENT_NAME: {"vr": "PN", "Value": ["Yamada^Tarou=山田^太郎"]}}
    row = flatten(metadata, SERVICE).row
    assert row["PatientName"] == {
        "Alphabetic": {"FamilyName": "Yamada", "GivenName": "Tarou"},
        "Ideographic": {"FamilyName": "山田", "GivenName": "太郎"},
    }


def test_rows_of_the_same_name_do_not_share_records() -> None:
    metadata = b'{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Roe^Richard"}]}}'
    first = flatten(metadata, SERVICE).row
    first["PatientName"]["Alphabetic"]["GivenName"] = "changed"
    first["PatientName"]["Alphabetic"].pop("FamilyName")
    second = flatten(metadata, SERVICE).row
    assert second["PatientName"] == {"Alphabetic": {"FamilyName": "Roe", "GivenName": "Richard"}}
