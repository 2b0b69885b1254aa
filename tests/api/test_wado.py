"""WADO-RS with raw HTTP: instances byte-exact or transcoded, Accept negotiation, metadata against pydicom's
own DICOM JSON, bulk data, frames, rendered images, 404s and the delete operation."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames

from conftest import Store, dicom_file, wait_done

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
AS_STORED = {"Accept": "application/dicom; transfer-syntax=*"}
OCTETS = 'multipart/related; type="application/octet-stream"'


def put(store: Store, *names: str) -> list[pydicom.Dataset]:
    for name in names:
        response = requests.post(
            f"{store.dicomweb}/studies",
            data=dicom_file(name).read_bytes(),
            timeout=30,
            headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        )
        assert response.status_code == 200, response.text
    return [pydicom.dcmread(dicom_file(name), force=True) for name in names]


def url(store: Store, ds: pydicom.Dataset, level: str = "instance") -> str:
    out = f"{store.dicomweb}/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance"):
        out += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        out += f"/instances/{ds.SOPInstanceUID}"
    return out


def get(address: str, accept: str | None = None, **params: str) -> requests.Response:
    return requests.get(address, headers={"Accept": accept} if accept else {}, params=params, timeout=30)


def parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body on its boundary into (headers, payload) pairs."""
    media_type, _, rest = response.headers["content-type"].partition(";")
    assert media_type.strip() == "multipart/related"
    boundary = re.search(r'boundary="?([^";]+)"?', rest).group(1).encode()
    body = response.content
    assert body.startswith(b"--" + boundary + b"\r\n")
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    out = []
    for chunk in body[len(boundary) + 4 : -(len(boundary) + 8)].split(b"\r\n--" + boundary + b"\r\n"):
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append(({k.lower(): v for k, v in headers.items()}, payload))
    return out


def assert_error(response: requests.Response, code: int, status: str) -> None:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (code, status)
    assert error["message"]


# ---- instances --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_RLE.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "image_dfl.dcm",
        "ExplVR_BigEndNoMeta.dcm",
    ],
)
def test_single_part_retrieve_with_any_syntax_is_byte_exact(store: Store, name: str) -> None:
    (ds,) = put(store, name)

    response = get(url(store, ds), AS_STORED["Accept"])

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom; transfer-syntax=")
    assert response.content == dicom_file(name).read_bytes()


def test_multipart_retrieve_of_study_series_and_instance_returns_the_stored_bytes(store: Store) -> None:
    _, mr, emri = put(store, "CT_small.dcm", "MR_small.dcm", "emri_small.dcm")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'

    study, series, instance = (get(url(store, mr, level), accept) for level in ("study", "series", "instance"))

    for response in (study, series, instance):
        assert response.status_code == 200
        ((headers, payload),) = parts(response)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        assert payload == dicom_file("MR_small.dcm").read_bytes()
    assert [p for _, p in parts(get(url(store, emri, "study"), accept))] == [dicom_file("emri_small.dcm").read_bytes()]


def test_multipart_retrieve_of_a_study_holds_every_instance(store: Store) -> None:
    ct = put(store, "CT_small.dcm")[0]
    copies = []
    for number in range(3):
        copy = pydicom.dcmread(dicom_file("CT_small.dcm"))
        copy.SOPInstanceUID = pydicom.uid.generate_uid()
        copy.InstanceNumber = number + 10
        buffer = io.BytesIO()
        copy.save_as(buffer)
        copies.append(buffer.getvalue())
        requests.post(
            f"{store.dicomweb}/studies",
            data=buffer.getvalue(),
            timeout=30,
            headers={"Content-Type": "application/dicom"},
        ).raise_for_status()

    response = get(url(store, ct, "study"), 'multipart/related; type="application/dicom"; transfer-syntax=*')

    assert sorted(p for _, p in parts(response)) == sorted([dicom_file("CT_small.dcm").read_bytes(), *copies])


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm"],
)
@pytest.mark.parametrize("accept", [None, 'multipart/related; type="application/dicom"', "application/dicom"])
def test_default_syntax_is_explicit_vr_little_endian_with_the_same_pixels(
    store: Store,
    name: str,
    accept: str | None,
) -> None:
    (original,) = put(store, name)

    response = get(url(store, original), accept)

    assert response.status_code == 200, response.text
    if accept == "application/dicom":
        assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        payload = response.content
    else:
        ((headers, payload),) = parts(response)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    got = pydicom.dcmread(io.BytesIO(payload))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.SOPInstanceUID == original.SOPInstanceUID
    np.testing.assert_array_equal(got.pixel_array, original.pixel_array)


def test_jpeg_baseline_of_an_8_bit_image_is_a_lossy_copy(store: Store) -> None:
    (original,) = put(store, "SC_rgb.dcm")

    response = get(url(store, original), f"application/dicom; transfer-syntax={JPEG_BASELINE}")

    assert response.status_code == 200, response.text
    got = pydicom.dcmread(io.BytesIO(response.content))
    assert got.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert got.LossyImageCompression == "01"
    difference = np.abs(got.pixel_array.astype(int) - original.pixel_array.astype(int))
    assert difference.mean() < 8


@pytest.mark.parametrize(
    "accept",
    [
        f"application/dicom; transfer-syntax={JPEG_BASELINE}",
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
    ],
)
def test_jpeg_baseline_of_a_16_bit_ct_is_406(store: Store, accept: str) -> None:
    (ct,) = put(store, "CT_small.dcm")

    assert_error(get(url(store, ct), accept), 406, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom; transfer-syntax=1.2.3.4",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.100',
        "text/html",
        'multipart/related; type="image/png"',
        "application/dicom+json",
    ],
)
def test_unsupported_syntax_or_media_type_is_406(store: Store, accept: str) -> None:
    (ct,) = put(store, "CT_small.dcm")

    assert_error(get(url(store, ct), accept), 406, "INVALID_ARGUMENT")


def test_single_part_is_offered_for_instances_only(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    assert_error(get(url(store, ct, "series"), "application/dicom; transfer-syntax=*"), 406, "INVALID_ARGUMENT")


def test_accept_list_picks_the_first_producible_media_type(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    response = get(url(store, ct), "text/html, application/dicom; transfer-syntax=*; q=0.5, image/png; q=0.9")

    assert response.status_code == 200
    assert response.content == dicom_file("CT_small.dcm").read_bytes()


def test_single_part_retrieve_as_stored_declares_its_length(store: Store) -> None:
    (emri,) = put(store, "emri_small.dcm")

    response = get(url(store, emri), AS_STORED["Accept"])

    assert int(response.headers["content-length"]) == dicom_file("emri_small.dcm").stat().st_size


def test_study_retrieve_that_cannot_convert_one_instance_is_a_clean_406_naming_it(store: Store) -> None:
    (colour,) = put(store, "SC_rgb.dcm")
    ct = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ct.StudyInstanceUID = colour.StudyInstanceUID
    ct.SeriesInstanceUID = "9.9.9"  # sorts after the colour series, so it is converted second
    buffer = io.BytesIO()
    ct.save_as(buffer)
    requests.post(
        f"{store.dicomweb}/studies", data=buffer.getvalue(), timeout=30, headers={"Content-Type": "application/dicom"}
    ).raise_for_status()

    accept = 'multipart/related; type="application/dicom"; transfer-syntax='
    jpeg = get(url(store, colour, "study"), accept + JPEG_BASELINE)
    as_stored = get(url(store, colour, "study"), accept + "*")

    assert_error(jpeg, 406, "INVALID_ARGUMENT")
    assert ct.SOPInstanceUID in jpeg.json()["error"]["message"]
    assert [p for _, p in parts(as_stored)] == [dicom_file("SC_rgb.dcm").read_bytes(), buffer.getvalue()]


# ---- metadata ---------------------------------------------------------------------------------


def normalise(dataset: dict[str, Any]) -> dict[str, Any]:
    """DICOM JSON with the differences the standard allows between encoders taken out: bulk data by
    reference or inline, empty values absent, numbers compared as numbers, strings without padding."""
    out = {}
    for tag, element in dataset.items():
        if "BulkDataURI" in element or "InlineBinary" in element:
            out[tag] = "binary"
            continue
        value = element.get("Value")
        if element.get("vr") == "SQ":
            value = [normalise(item) for item in value or []]
        elif value is not None:
            value = [_normalise_value(v) for v in value]
            if all(v is None for v in value):
                value = None
        if value:
            out[tag] = value
    return out


def _normalise_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value.strip() or None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        # A person name of separators only ("^^^^") is empty.
        return {k: v for k, v in value.items() if v.strip("^= ")} or None
    return value


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "chrH31.dcm",
        "chrJapMulti.dcm",
        "chrX1.dcm",
        "rtplan.dcm",
        "rtstruct.dcm",
        "MR_small_bigendian.dcm",
        "rtdose_expb.dcm",
        "waveform_ecg.dcm",
        "emri_small_RLE.dcm",
        "MR_small_implicit.dcm",
        "image_dfl.dcm",
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # rtdose_expb.dcm's own UIDs, read by pydicom
def test_instance_metadata_equals_pydicoms_dicom_json(store: Store, name: str) -> None:
    (ds,) = put(store, name)

    response = get(url(store, ds) + "/metadata")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    (metadata,) = response.json()
    expected = normalise(ds.to_json_dict())
    for tag in list(expected):
        if tag.endswith("0000"):
            del expected[tag]  # retired group lengths describe the encoding, not the data
        elif int(tag[:4], 16) % 2 and metadata.get(tag, {}).get("vr") == "UN":
            # Sent as UN, a private element is bulk data; pydicom decodes it with its private dictionary.
            expected[tag] = "binary"
    assert normalise(metadata) == expected


def test_metadata_of_study_and_series_is_an_array_of_every_instance(store: Store) -> None:
    _, mr, rtplan = put(store, "CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
    copy = pydicom.dcmread(dicom_file("MR_small.dcm"))
    copy.SOPInstanceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    copy.save_as(buffer)
    requests.post(
        f"{store.dicomweb}/studies", data=buffer.getvalue(), timeout=30, headers={"Content-Type": "application/dicom"}
    ).raise_for_status()

    study = get(url(store, mr, "study") + "/metadata", "application/dicom+json").json()
    series = get(url(store, rtplan, "series") + "/metadata").json()

    assert sorted(m["00080018"]["Value"][0] for m in study) == sorted([mr.SOPInstanceUID, copy.SOPInstanceUID])
    assert [m["00080018"]["Value"][0] for m in series] == [rtplan.SOPInstanceUID]


def test_metadata_as_multipart_xml(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    response = get(url(store, ct, "series") + "/metadata", 'multipart/related; type="application/dicom+xml"')

    assert response.status_code == 200
    ((headers, payload),) = parts(response)
    assert headers["content-type"] == "application/dicom+xml"
    assert b'keyword="PatientName"' in payload and b"<FamilyName>CompressedSamples</FamilyName>" in payload
    assert f'<BulkData uri="{url(store, ct)}/bulkdata/7FE00010"/>'.encode() in payload


def test_metadata_xml_names_the_creator_of_private_attributes(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    ((_, payload),) = parts(get(url(store, ct) + "/metadata", 'multipart/related; type="application/dicom+xml"'))

    assert b'<DicomAttribute tag="00090010" vr="LO">' in payload
    assert b'<DicomAttribute tag="00090001" vr="LO" privateCreator="GEMS_IDEN_01">' in payload


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:{port}/v1/"),
        ("localhost", "http://localhost:{port}/v1/"),
        ("127.0.0.1:{port}", "http://127.0.0.1:{port}/v1/"),
        ("dicom.example.org", "http://dicom.example.org/v1/"),
    ],
)
def test_absolute_urls_keep_the_port_a_host_header_without_one_left_out(store: Store, host: str, expected: str) -> None:
    # dicomweb-client sends "Host: 127.0.0.1" to a server on another port; a proxy sends its public name.
    (ct,) = put(store, "CT_small.dcm")
    port = store.server.port

    response = requests.get(url(store, ct) + "/metadata", headers={"Host": host.format(port=port)}, timeout=30)

    assert response.json()[0]["7FE00010"]["BulkDataURI"].startswith(expected.format(port=port))


def test_metadata_in_an_unsupported_media_type_is_406(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    assert_error(get(url(store, ct) + "/metadata", "application/dicom"), 406, "INVALID_ARGUMENT")


# ---- bulk data --------------------------------------------------------------------------------


def bulk_uris(metadata: dict[str, Any], path: str = "") -> dict[str, str]:
    found = {}
    for tag, element in metadata.items():
        if "BulkDataURI" in element:
            found[path + tag] = element["BulkDataURI"]
        for index, item in enumerate(element.get("Value", []) if element.get("vr") == "SQ" else []):
            found.update(bulk_uris(item, f"{path}{tag}/{index}/"))
    return found


def test_bulk_data_uris_are_absolute_and_return_the_element_values(store: Store) -> None:
    ct, ecg = put(store, "CT_small.dcm", "waveform_ecg.dcm")

    ct_uris = bulk_uris(get(url(store, ct) + "/metadata").json()[0])
    ecg_uris = bulk_uris(get(url(store, ecg) + "/metadata").json()[0])

    assert ct_uris["7FE00010"] == f"{url(store, ct)}/bulkdata/7FE00010"
    assert ecg_uris["54000100/0/54001010"] == f"{url(store, ecg)}/bulkdata/54000100/0/54001010"
    single = get(ct_uris["7FE00010"], "application/octet-stream")
    assert single.headers["content-type"] == "application/octet-stream"
    assert single.content == ct.PixelData
    ((headers, payload),) = parts(get(ecg_uris["54000100/0/54001010"], OCTETS))
    assert headers["content-type"].startswith("application/octet-stream")
    assert payload == ecg.WaveformSequence[0].WaveformData


@pytest.mark.parametrize(
    ("name", "little_endian_twin"),
    [
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_implicit.dcm", "MR_small.dcm"),
        ("rtdose_expb.dcm", "rtdose.dcm"),
        ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
    ],
)
def test_bulk_pixel_data_is_uncompressed_little_endian(store: Store, name: str, little_endian_twin: str) -> None:
    (ds,) = put(store, name)
    little_endian = pydicom.dcmread(dicom_file(little_endian_twin)).PixelData

    response = get(url(store, ds) + "/bulkdata/7FE00010", "application/octet-stream")

    assert response.status_code == 200
    assert response.content == little_endian


def test_bulk_data_of_a_private_un_element_is_the_bytes_sent(store: Store) -> None:
    (ds,) = put(store, "chrJapMulti.dcm")
    (metadata,) = get(url(store, ds) + "/metadata").json()

    response = get(metadata["00191015"]["BulkDataURI"], "application/octet-stream")

    assert metadata["00191015"]["vr"] == "UN"
    assert response.status_code == 200
    assert response.content == ds.get_item(0x00191015).value == b"2.8 "


def test_bulk_data_in_an_image_media_type_is_406(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    assert_error(
        get(url(store, ct) + "/bulkdata/7FE00010", 'multipart/related; type="image/jpeg"'), 406, "INVALID_ARGUMENT"
    )


def test_bulk_data_at_a_path_without_bulk_data_is_404(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    assert_error(get(url(store, ct) + "/bulkdata/7FE10010", "application/octet-stream"), 404, "NOT_FOUND")
    assert_error(get(url(store, ct) + "/bulkdata/00081140/5/00081155"), 404, "NOT_FOUND")


# ---- frames -----------------------------------------------------------------------------------


def test_frames_with_any_syntax_are_the_stored_compressed_frames(store: Store) -> None:
    (ds,) = put(store, "emri_small_RLE.dcm")
    stored_frames = list(generate_frames(ds.PixelData, number_of_frames=10))

    response = get(url(store, ds) + "/frames/2,7,10", f"{OCTETS}; transfer-syntax=*")

    assert response.status_code == 200, response.text
    got = parts(response)
    assert [h["content-type"] for h, _ in got] == ["application/octet-stream; transfer-syntax=1.2.840.10008.1.2.5"] * 3
    assert [p for _, p in got] == [stored_frames[1], stored_frames[6], stored_frames[9]]


def test_frames_with_a_wildcard_type_and_any_syntax_are_the_stored_frames(store: Store) -> None:
    (ds,) = put(store, "emri_small_RLE.dcm")
    stored_frames = list(generate_frames(ds.PixelData, number_of_frames=10))

    response = get(url(store, ds) + "/frames/3", 'multipart/related; type="*/*"; transfer-syntax=*')

    ((headers, payload),) = parts(response)
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.5"
    assert payload == stored_frames[2]


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_frames_by_default_are_raw_little_endian_pixels(store: Store, name: str) -> None:
    (ds,) = put(store, name)

    response = get(url(store, ds) + "/frames/1,10", OCTETS)

    got = parts(response)
    assert [h["content-type"] for h, _ in got] == [f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"] * 2
    assert [p for _, p in got] == [ds.pixel_array[0].tobytes(), ds.pixel_array[9].tobytes()]


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_frames_of_a_native_instance_with_any_syntax_are_little_endian_and_say_so(store: Store, name: str) -> None:
    (ds,) = put(store, name)

    response = get(url(store, ds) + "/frames/1", f"{OCTETS}; transfer-syntax=*")

    ((headers, payload),) = parts(response)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert payload == pydicom.dcmread(dicom_file("MR_small.dcm")).PixelData


def test_single_frame_as_single_part_octet_stream(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    response = get(url(store, ct) + "/frames/1", "application/octet-stream")

    assert response.status_code == 200
    assert response.content == ct.PixelData


@pytest.mark.parametrize("frame_list", ["0", "11", "1,11", "x", "-1"])
def test_frames_outside_the_instance_are_400(store: Store, frame_list: str) -> None:
    (ds,) = put(store, "emri_small.dcm")

    assert_error(get(url(store, ds) + f"/frames/{frame_list}", OCTETS), 400, "INVALID_ARGUMENT")


def test_frames_of_an_instance_without_pixels_are_400(store: Store) -> None:
    (rtplan,) = put(store, "rtplan.dcm")

    assert_error(get(url(store, rtplan) + "/frames/1", OCTETS), 400, "INVALID_ARGUMENT")


# ---- rendered ---------------------------------------------------------------------------------


def test_rendered_instance_fits_the_viewport(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    jpeg = get(url(store, ct) + "/rendered", viewport="64,64")
    png = get(url(store, ct) + "/rendered", "image/png", viewport="64,32")

    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (64, 64)
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert (image.format, image.size) == ("PNG", (32, 32))


def test_rendered_frame_of_a_colour_instance_is_rgb(store: Store) -> None:
    (rgb,) = put(store, "SC_rgb_rle_2frame.dcm")

    response = get(url(store, rgb) + "/frames/2/rendered", "image/png")

    image = Image.open(io.BytesIO(response.content))
    assert (image.mode, image.size) == ("RGB", (rgb.Columns, rgb.Rows))
    np.testing.assert_array_equal(np.asarray(image), rgb.pixel_array[1])


def test_rendered_frames_come_as_multipart_when_asked_or_when_several(store: Store) -> None:
    (emri,) = put(store, "emri_small.dcm")

    one = get(url(store, emri) + "/frames/1/rendered", 'multipart/related; type="image/png"')
    several = get(url(store, emri) + "/frames/1,4,9/rendered", "image/png")

    ((headers, payload),) = parts(one)
    assert headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(payload)).size == (64, 64)
    assert [h["content-type"] for h, _ in parts(several)] == ["image/png"] * 3


@pytest.mark.parametrize("viewport", ["64", "0,64", "a,b", "64,64,1", "100000,100000"])
def test_rendered_with_a_bad_viewport_is_400(store: Store, viewport: str) -> None:
    (ct,) = put(store, "CT_small.dcm")

    assert_error(get(url(store, ct) + "/rendered", viewport=viewport), 400, "INVALID_ARGUMENT")


def test_rendered_in_an_unsupported_media_type_is_406(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    assert_error(get(url(store, ct) + "/rendered", "image/gif"), 406, "INVALID_ARGUMENT")


def test_rendered_of_an_instance_without_pixels_is_400(store: Store) -> None:
    (rtplan,) = put(store, "rtplan.dcm")

    assert_error(get(url(store, rtplan) + "/rendered"), 400, "INVALID_ARGUMENT")


def test_pixel_data_that_cannot_be_decoded_is_a_4xx_never_a_500(store: Store) -> None:
    ds = pydicom.dcmread(dicom_file("MR_small_RLE.dcm"))
    ds.PixelData = encapsulate([b"\x63" + b"\x00" * 63])  # an RLE header announcing 99 segments
    buffer = io.BytesIO()
    ds.save_as(buffer)
    requests.post(
        f"{store.dicomweb}/studies", data=buffer.getvalue(), timeout=30, headers={"Content-Type": "application/dicom"}
    ).raise_for_status()

    assert_error(get(url(store, ds), "application/dicom"), 406, "INVALID_ARGUMENT")
    assert_error(get(url(store, ds, "series"), 'multipart/related; type="application/dicom"'), 406, "INVALID_ARGUMENT")
    assert_error(get(url(store, ds) + "/bulkdata/7FE00010"), 406, "INVALID_ARGUMENT")
    assert_error(get(url(store, ds) + "/frames/1", OCTETS), 400, "INVALID_ARGUMENT")
    assert_error(get(url(store, ds) + "/rendered"), 400, "INVALID_ARGUMENT")
    assert get(url(store, ds), AS_STORED["Accept"]).content == buffer.getvalue()


# ---- not found --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix",
    [
        "/studies/1.2.3",
        "/studies/1.2.3/metadata",
        "/studies/{study}/series/1.2.3",
        "/studies/{study}/series/{series}/instances/1.2.3",
        "/studies/{study}/series/{series}/instances/1.2.3/metadata",
        "/studies/{study}/series/{series}/instances/1.2.3/frames/1",
        "/studies/{study}/series/{series}/instances/1.2.3/rendered",
        "/studies/{study}/series/{series}/instances/1.2.3/bulkdata/7FE00010",
    ],
)
def test_unknown_study_series_or_instance_is_404(store: Store, suffix: str) -> None:
    (ct,) = put(store, "CT_small.dcm")
    address = store.dicomweb + suffix.format(study=ct.StudyInstanceUID, series=ct.SeriesInstanceUID)

    assert_error(get(address), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "suffix", ["/studies/1.2.3", "/studies/{study}/series/1.2.3", "/studies/{study}/series/{series}/instances/1.2.3"]
)
def test_delete_of_unknown_study_series_or_instance_is_404_and_deletes_nothing(store: Store, suffix: str) -> None:
    (ct,) = put(store, "CT_small.dcm")
    address = store.dicomweb + suffix.format(study=ct.StudyInstanceUID, series=ct.SeriesInstanceUID)

    assert_error(requests.delete(address, timeout=30), 404, "NOT_FOUND")
    assert get(url(store, ct), AS_STORED["Accept"]).content == dicom_file("CT_small.dcm").read_bytes()


def test_unknown_store_is_404(store: Store) -> None:
    address = store.dicomweb.replace(f"/dicomStores/{store.store}/", "/dicomStores/nope/") + "/studies"

    assert_error(get(address), 404, "NOT_FOUND")


# ---- delete -----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["study", "series"])
def test_delete_study_or_series_is_an_operation_that_deletes(store: Store, level: str) -> None:
    ct, mr = put(store, "CT_small.dcm", "MR_small.dcm")

    response = requests.delete(url(store, ct, level), timeout=30)

    assert response.status_code == 200
    started = response.json()
    assert re.fullmatch(re.escape(store.dataset_name) + r"/operations/\d+", started["name"])
    operation = wait_done(store.server, started)
    assert operation["metadata"]["counter"] == {"success": "1"}
    assert operation["metadata"]["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"
    assert operation["metadata"]["apiMethodName"].endswith("DeleteStudy" if level == "study" else "DeleteSeries")
    assert operation["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    assert requests.get(store.server.api(operation["name"]), timeout=30).json() == operation
    assert get(url(store, ct), AS_STORED["Accept"]).status_code == 404
    assert get(url(store, mr), AS_STORED["Accept"]).status_code == 200


def test_delete_instance_answers_an_empty_object(store: Store) -> None:
    (ct,) = put(store, "CT_small.dcm")

    response = requests.delete(url(store, ct), timeout=30)

    assert (response.status_code, response.json()) == (200, {})
    assert get(url(store, ct) + "/metadata").status_code == 404
    assert get(f"{store.dicomweb}/studies").status_code == 204
