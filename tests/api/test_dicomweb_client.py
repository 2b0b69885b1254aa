"""The DICOMweb layer driven by the real dicomweb-client, as a viewer or pipeline would use it: store
pydicom datasets, search, retrieve instances, metadata, frames, renders and bulk data, and delete."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset

from conftest import Store, dicom_file, wait_all_done

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def client(store: Store) -> DICOMwebClient:
    return DICOMwebClient(url=store.dicomweb)


def read(name: str) -> Dataset:
    return pydicom.dcmread(dicom_file(name))


def stored(client: DICOMwebClient, *names: str) -> list[Dataset]:
    datasets = [read(name) for name in names]
    client.store_instances(datasets)
    return datasets


def uids(results: list[dict], tag: str) -> list[str]:
    return sorted(result[tag]["Value"][0] for result in results)


def study_uid(name: str) -> str:
    return str(read(name).StudyInstanceUID)


# ---- STOW-RS ----------------------------------------------------------------------------------


def test_store_instances_answers_a_referenced_sop_item_per_instance(client: DICOMwebClient) -> None:
    datasets = [read(n) for n in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "rtplan.dcm")]

    response = client.store_instances(datasets)

    assert "FailedSOPSequence" not in response
    assert sorted(item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence) == sorted(
        ds.SOPInstanceUID for ds in datasets
    )
    for item in response.ReferencedSOPSequence:
        assert item.RetrieveURL.startswith(client.base_url + "/studies/")
    assert uids(client.search_for_instances(), "00080018") == sorted(ds.SOPInstanceUID for ds in datasets)


def test_store_instances_to_a_study_url_stores_instances_of_that_study(client: DICOMwebClient) -> None:
    ct = read("CT_small.dcm")

    response = client.store_instances([ct], study_instance_uid=ct.StudyInstanceUID)

    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [ct.SOPInstanceUID]
    assert response.RetrieveURL == f"{client.base_url}/studies/{ct.StudyInstanceUID}"


# ---- QIDO-RS ----------------------------------------------------------------------------------


def test_search_for_studies_matches_caret_names_and_wildcards_the_client_percent_encodes(
    client: DICOMwebClient,
) -> None:
    stored(client, "CT_small.dcm", "MR_small.dcm", "rtplan.dcm")

    exact = client.search_for_studies(search_filters={"PatientName": "CompressedSamples^CT1"})
    wildcard = client.search_for_studies(search_filters={"PatientName": "CompressedSamples*"})

    assert uids(exact, "0020000D") == [study_uid("CT_small.dcm")]
    assert uids(wildcard, "0020000D") == sorted([study_uid("CT_small.dcm"), study_uid("MR_small.dcm")])


def test_search_for_studies_fuzzymatching_matches_name_token_prefixes(client: DICOMwebClient) -> None:
    stored(client, "CT_small.dcm", "rtplan.dcm")

    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "fir"})
    strict = client.search_for_studies(search_filters={"PatientName": "fir"})

    assert uids(fuzzy, "0020000D") == [study_uid("rtplan.dcm")]
    assert strict == []


def test_search_for_studies_pages_with_limit_and_offset_and_adds_fields(client: DICOMwebClient) -> None:
    stored(client, "CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
    everything = uids(client.search_for_studies(), "0020000D")

    pages = [client.search_for_studies(limit=1, offset=n, fields=["StudyDescription"]) for n in range(4)]

    assert [len(page) for page in pages] == [1, 1, 1, 0]
    assert [page[0]["0020000D"]["Value"][0] for page in pages[:3]] == everything
    ct = next(page[0] for page in pages[:3] if page[0]["0020000D"]["Value"][0] == study_uid("CT_small.dcm"))
    assert ct["00081030"]["Value"] == ["e+1"]
    assert ct["00100020"]["Value"] == ["1CT1"]


def test_search_for_series_across_the_store_and_within_a_study(client: DICOMwebClient) -> None:
    ct, mr, _ = stored(client, "CT_small.dcm", "MR_small.dcm", "rtplan.dcm")

    everywhere = client.search_for_series()
    in_study = client.search_for_series(study_instance_uid=ct.StudyInstanceUID)
    by_modality = client.search_for_series(search_filters={"Modality": "MR"})

    assert len(everywhere) == 3
    assert uids(in_study, "0020000E") == [ct.SeriesInstanceUID]
    assert uids(by_modality, "0020000E") == [mr.SeriesInstanceUID]
    assert by_modality[0]["0020000D"]["Value"] == [mr.StudyInstanceUID]


def test_search_for_instances_across_the_store_and_within_a_study_and_series(client: DICOMwebClient) -> None:
    ct, emri = stored(client, "CT_small.dcm", "emri_small.dcm")

    everywhere = client.search_for_instances()
    in_study = client.search_for_instances(study_instance_uid=emri.StudyInstanceUID)
    in_series = client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID, fields=["PatientName"])
    by_uid = client.search_for_instances(search_filters={"SOPInstanceUID": ct.SOPInstanceUID})

    assert uids(everywhere, "00080018") == sorted([ct.SOPInstanceUID, emri.SOPInstanceUID])
    assert uids(in_study, "00080018") == [emri.SOPInstanceUID]
    assert in_study[0]["00280008"]["Value"] == [10]
    assert uids(in_series, "00080018") == [ct.SOPInstanceUID]
    assert in_series[0]["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    assert uids(by_uid, "00080018") == [ct.SOPInstanceUID]


def test_search_value_with_a_literal_percent_sign_matches_it(client: DICOMwebClient) -> None:
    ct = read("CT_small.dcm")
    ct.PatientID = "10%41"
    client.store_instances([ct])

    found = client.search_for_studies(search_filters={"PatientID": "10%41"})

    assert uids(found, "0020000D") == [ct.StudyInstanceUID]
    assert client.search_for_studies(search_filters={"PatientID": "10A"}) == []


def test_search_with_no_match_is_an_empty_list(client: DICOMwebClient) -> None:
    stored(client, "CT_small.dcm")

    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []
    assert client.search_for_instances(search_filters={"StudyDate": "19000101-19001231"}) == []


# ---- WADO-RS: instances -----------------------------------------------------------------------


def test_retrieve_instance_returns_the_stored_instance(client: DICOMwebClient) -> None:
    (ct,) = stored(client, "CT_small.dcm")

    got = client.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)

    assert got.SOPInstanceUID == ct.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == ct.file_meta.TransferSyntaxUID
    assert got.PixelData == ct.PixelData


def test_retrieve_study_and_series_return_every_instance_with_its_pixels(client: DICOMwebClient) -> None:
    ct, emri, rtplan = stored(client, "CT_small.dcm", "emri_small.dcm", "rtplan.dcm")
    more_ct = read("CT_small.dcm")
    more_ct.SOPInstanceUID = pydicom.uid.generate_uid()
    client.store_instances([more_ct])

    study = client.retrieve_study(ct.StudyInstanceUID)
    series = client.retrieve_series(emri.StudyInstanceUID, emri.SeriesInstanceUID)
    plan = client.retrieve_study(rtplan.StudyInstanceUID)

    assert sorted(ds.SOPInstanceUID for ds in study) == sorted([ct.SOPInstanceUID, more_ct.SOPInstanceUID])
    assert all(ds.PixelData == ct.PixelData for ds in study)
    assert [ds.SOPInstanceUID for ds in series] == [emri.SOPInstanceUID]
    assert series[0].PixelData == emri.PixelData
    assert [ds.SOPInstanceUID for ds in plan] == [rtplan.SOPInstanceUID]
    assert plan[0].BeamSequence[0].BeamName == rtplan.BeamSequence[0].BeamName


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "JPEG2000.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_default_retrieve_decompresses_to_explicit_vr_little_endian(client: DICOMwebClient, name: str) -> None:
    (original,) = stored(client, name)

    (series,) = client.retrieve_series(original.StudyInstanceUID, original.SeriesInstanceUID)
    instance = client.retrieve_instance(
        original.StudyInstanceUID,
        original.SeriesInstanceUID,
        original.SOPInstanceUID,
        media_types=(("application/dicom", EXPLICIT_LE),),
    )

    for got in (series, instance):
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_retrieve_instance_in_a_lossless_syntax_keeps_the_pixels(client: DICOMwebClient, syntax: str) -> None:
    (original,) = stored(client, "MR_small.dcm")

    got = client.retrieve_instance(
        original.StudyInstanceUID,
        original.SeriesInstanceUID,
        original.SOPInstanceUID,
        media_types=(("application/dicom", syntax),),
    )

    assert got.file_meta.TransferSyntaxUID == syntax
    assert got.SOPInstanceUID == original.SOPInstanceUID
    np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


def test_retrieve_instance_with_any_syntax_keeps_the_compressed_pixel_data(client: DICOMwebClient) -> None:
    (original,) = stored(client, "MR_small_RLE.dcm")

    got = client.retrieve_instance(original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID)

    assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert got.PixelData == original.PixelData


# ---- WADO-RS: metadata ------------------------------------------------------------------------


def test_retrieve_metadata_at_study_series_and_instance_level(client: DICOMwebClient) -> None:
    ct, emri = stored(client, "CT_small.dcm", "emri_small.dcm")

    study = client.retrieve_study_metadata(ct.StudyInstanceUID)
    series = client.retrieve_series_metadata(emri.StudyInstanceUID, emri.SeriesInstanceUID)
    instance = client.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)

    assert [m["00080018"]["Value"] for m in study] == [[ct.SOPInstanceUID]]
    assert [m["00080018"]["Value"] for m in series] == [[emri.SOPInstanceUID]]
    assert instance["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    assert instance["00280010"] == {"vr": "US", "Value": [128]}
    assert instance["7FE00010"]["BulkDataURI"].startswith(client.base_url + "/studies/")
    loaded = Dataset.from_json(instance, bulk_data_uri_handler=lambda *_: b"")
    assert loaded.SOPInstanceUID == ct.SOPInstanceUID


def test_retrieve_bulkdata_follows_the_bulk_data_uri_in_metadata(client: DICOMwebClient) -> None:
    ct, rle = stored(client, "CT_small.dcm", "emri_small_RLE.dcm")

    ct_meta = client.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    rle_meta = client.retrieve_instance_metadata(rle.StudyInstanceUID, rle.SeriesInstanceUID, rle.SOPInstanceUID)

    assert client.retrieve_bulkdata(ct_meta["7FE00010"]["BulkDataURI"]) == [ct.PixelData]
    # Encapsulated pixel data comes back uncompressed and unencapsulated.
    assert client.retrieve_bulkdata(rle_meta["7FE00010"]["BulkDataURI"]) == [rle.pixel_array.tobytes()]


# ---- WADO-RS: frames and rendered -------------------------------------------------------------


def test_retrieve_instance_frames_of_a_single_frame_instance(client: DICOMwebClient) -> None:
    (ct,) = stored(client, "CT_small.dcm")

    frames = client.retrieve_instance_frames(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, [1])

    assert frames == [ct.PixelData]


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_retrieve_instance_frames_of_a_multi_frame_instance_are_raw_pixels(client: DICOMwebClient, name: str) -> None:
    (emri,) = stored(client, name)
    wanted = [1, 5, 10]

    frames = client.retrieve_instance_frames(emri.StudyInstanceUID, emri.SeriesInstanceUID, emri.SOPInstanceUID, wanted)

    assert frames == [emri.pixel_array[n - 1].tobytes() for n in wanted]


@pytest.mark.parametrize(("media_type", "pillow_format"), [("image/jpeg", "JPEG"), ("image/png", "PNG")])
def test_retrieve_instance_rendered_is_a_consumer_image_of_the_instance_size(
    client: DICOMwebClient,
    media_type: str,
    pillow_format: str,
) -> None:
    (ct,) = stored(client, "CT_small.dcm")

    data = client.retrieve_instance_rendered(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, media_types=(media_type,)
    )
    scaled = client.retrieve_instance_rendered(
        ct.StudyInstanceUID,
        ct.SeriesInstanceUID,
        ct.SOPInstanceUID,
        media_types=(media_type,),
        params={"viewport": "32,32"},
    )

    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size, image.mode) == (pillow_format, (128, 128), "L")
    assert Image.open(io.BytesIO(scaled)).size == (32, 32)


@pytest.mark.parametrize(("media_type", "pillow_format"), [("image/jpeg", "JPEG"), ("image/png", "PNG")])
def test_retrieve_instance_frames_rendered_renders_the_asked_frame(
    client: DICOMwebClient,
    media_type: str,
    pillow_format: str,
) -> None:
    (emri,) = stored(client, "emri_small.dcm")

    data = client.retrieve_instance_frames_rendered(
        emri.StudyInstanceUID, emri.SeriesInstanceUID, emri.SOPInstanceUID, [3], media_types=(media_type,)
    )

    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == (pillow_format, (64, 64))
    if pillow_format == "PNG":
        # Frame 3 rendered differs from frame 1 rendered: the frame number is honoured.
        first = client.retrieve_instance_frames_rendered(
            emri.StudyInstanceUID, emri.SeriesInstanceUID, emri.SOPInstanceUID, [1], media_types=(media_type,)
        )
        assert np.asarray(Image.open(io.BytesIO(first))).tobytes() != np.asarray(image).tobytes()


# ---- DELETE -----------------------------------------------------------------------------------


def status_of(call: object) -> int:
    with pytest.raises(requests.HTTPError) as info:
        call()  # type: ignore[operator]
    return info.value.response.status_code


def test_delete_instance_removes_only_that_instance(client: DICOMwebClient) -> None:
    (ct,) = stored(client, "CT_small.dcm")
    sibling = read("CT_small.dcm")
    sibling.SOPInstanceUID = pydicom.uid.generate_uid()
    client.store_instances([sibling])

    client.delete_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)

    assert uids(client.search_for_instances(), "00080018") == [sibling.SOPInstanceUID]
    assert (
        status_of(lambda: client.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)) == 404
    )
    assert (
        client.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, sibling.SOPInstanceUID).PixelData
        == ct.PixelData
    )
    (study,) = client.search_for_studies()
    assert study["00201208"]["Value"] == [1]


def test_delete_series_removes_the_series_and_keeps_the_others(client: DICOMwebClient, store: Store) -> None:
    ct, mr = stored(client, "CT_small.dcm", "MR_small.dcm")

    client.delete_series(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    wait_all_done(store)

    assert uids(client.search_for_series(), "0020000E") == [mr.SeriesInstanceUID]
    assert client.search_for_studies(search_filters={"StudyInstanceUID": ct.StudyInstanceUID}) == []
    assert status_of(lambda: client.retrieve_series(ct.StudyInstanceUID, ct.SeriesInstanceUID)) == 404
    assert status_of(lambda: client.retrieve_series_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID)) == 404


def test_delete_study_removes_all_its_instances(client: DICOMwebClient, store: Store) -> None:
    ct, rtplan = stored(client, "CT_small.dcm", "rtplan.dcm")

    client.delete_study(ct.StudyInstanceUID)
    wait_all_done(store)

    assert uids(client.search_for_studies(), "0020000D") == [rtplan.StudyInstanceUID]
    assert client.search_for_instances(study_instance_uid=ct.StudyInstanceUID) == []
    assert status_of(lambda: client.retrieve_study(ct.StudyInstanceUID)) == 404
    assert (
        status_of(
            lambda: client.retrieve_instance_frames(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, [1])
        )
        == 404
    )
    assert status_of(lambda: client.delete_study(ct.StudyInstanceUID)) == 404
