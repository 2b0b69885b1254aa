"""Tests for dicomlake.dicom.pixels against real DICOM files (pydicom's test data and highdicom's)."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels import compress

from dicomlake.dicom.pixels import (
    NATIVE_SYNTAXES,
    PixelError,
    frame_count,
    frames,
    parse_viewport,
    render,
    transcode,
)

# ../shared beside the checkout (see TESTDATA.md).
HIGHDICOM = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "highdicom"

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def pydicom_file(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in pydicom's test data")
    return Path(path).read_bytes()


def highdicom_file(name: str) -> bytes:
    path = HIGHDICOM / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path.read_bytes()


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


def decoded(data: bytes) -> np.ndarray:
    return read(data).pixel_array


def to_bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def grey(data: bytes) -> np.ndarray:
    return np.asarray(image(data)).astype(np.int32)


def ct_variant(**changes: object) -> bytes:
    """CT_small.dcm with attributes replaced (None deletes them)."""
    ds = read(pydicom_file("CT_small.dcm"))
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return to_bytes(ds)


# --- transcode -----------------------------------------------------------------------------------------

LOSSLESS_CASES = [
    *(("CT_small.dcm", target) for target in sorted(NATIVE_SYNTAXES - {EXPLICIT_LE})),
    *(
        ("CT_small.dcm", target)
        for target in (RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS, J2K_LOSSLESS, J2K)
    ),
    ("MR_small_RLE.dcm", EXPLICIT_LE),
    ("MR_small_RLE.dcm", JPEG_LS_LOSSLESS),
    ("MR_small_jpeg_ls_lossless.dcm", J2K_LOSSLESS),
    ("MR_small_implicit.dcm", EXPLICIT_BE),
    ("JPEG2000.dcm", EXPLICIT_LE),
    ("SC_rgb.dcm", RLE_LOSSLESS),
    ("SC_rgb.dcm", JPEG_LS_LOSSLESS),
    ("SC_rgb.dcm", J2K_LOSSLESS),
    ("SC_rgb.dcm", J2K),
    ("SC_rgb_rle.dcm", EXPLICIT_LE),
    ("SC_rgb_jpeg_dcmtk.dcm", EXPLICIT_LE),
    ("SC_rgb_16bit.dcm", RLE_LOSSLESS),
    ("US1_J2KR.dcm", EXPLICIT_LE),
    ("US1_J2KR.dcm", RLE_LOSSLESS),
    ("emri_small.dcm", JPEG_LS_LOSSLESS),
    ("emri_small_RLE.dcm", J2K_LOSSLESS),
    ("liver.dcm", IMPLICIT_LE),
    ("liver.dcm", EXPLICIT_BE),
    ("MR_small_bigendian.dcm", EXPLICIT_LE),
    ("SC_rgb_expb.dcm", IMPLICIT_LE),
    ("rtdose_expb.dcm", EXPLICIT_LE),
    ("liver_expb_1frame.dcm", EXPLICIT_LE),
    ("image_dfl.dcm", EXPLICIT_LE),
    ("image_dfl.dcm", RLE_LOSSLESS),
]


@pytest.mark.parametrize(("name", "target"), LOSSLESS_CASES)
def test_transcode_lossless_keeps_pixels_and_identity(name: str, target: str) -> None:
    data = pydicom_file(name)
    out = transcode(data, target)
    source, result = read(data), read(out)
    assert result.file_meta.TransferSyntaxUID == target
    assert np.array_equal(result.pixel_array, source.pixel_array)
    assert result.SOPInstanceUID == source.SOPInstanceUID
    assert result.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert result.file_meta.MediaStorageSOPClassUID == source.SOPClassUID


@pytest.mark.parametrize("name", ["sm_image_jpegls.dcm", "sm_image_jpegls_nobot.dcm"])
@pytest.mark.parametrize("target", [EXPLICIT_LE, RLE_LOSSLESS])
def test_transcode_multiframe_jpegls(name: str, target: str) -> None:
    data = highdicom_file(name)
    out = transcode(data, target)
    assert read(out).file_meta.TransferSyntaxUID == target
    assert read(out).NumberOfFrames == 25
    assert np.array_equal(decoded(out), decoded(data))


def test_transcode_to_stored_syntax_returns_input_unchanged() -> None:
    data = pydicom_file("MR_small_RLE.dcm")
    assert transcode(data, RLE_LOSSLESS) is data


def test_transcode_big_endian_matches_pydicom_reference_and_round_trips() -> None:
    little = pydicom_file("MR_small.dcm")
    big = transcode(little, EXPLICIT_BE)
    assert read(big).file_meta.TransferSyntaxUID == EXPLICIT_BE
    # MR_small_bigendian.dcm is the same image encoded big endian by another toolkit.
    assert np.array_equal(decoded(big), decoded(pydicom_file("MR_small_bigendian.dcm")))
    back = transcode(big, EXPLICIT_LE)
    assert read(back).PixelData == read(little).PixelData


def test_transcode_big_endian_with_an_unknown_vr_is_a_pixel_error() -> None:
    # Found by the fuzzer: a big-endian instance whose Series Number carries the VR bytes "I." is stored (the
    # header parser tolerates it), but swapping its byte order must refuse it, not raise pydicom's own error.
    big = pydicom_file("MR_small_bigendian.dcm")
    tag = b"\x00\x20\x00\x11IS"
    assert big.count(tag) == 1
    with pytest.raises(PixelError, match="not a readable DICOM instance"):
        transcode(big.replace(tag, b"\x00\x20\x00\x11I."), EXPLICIT_LE)


def test_transcode_palette_lut_survives_big_endian_round_trip() -> None:
    data = pydicom_file("OT-PAL-8-face.dcm")  # implicit VR, no file meta transfer syntax
    back = transcode(transcode(data, EXPLICIT_BE), IMPLICIT_LE)
    source, result = read(data), read(back)
    source.file_meta.TransferSyntaxUID = IMPLICIT_LE
    assert result.RedPaletteColorLookupTableData == source.RedPaletteColorLookupTableData
    assert np.array_equal(result.pixel_array, source.pixel_array)


def test_transcode_reversible_jpeg2000_colour_uses_rct() -> None:
    out = transcode(pydicom_file("SC_rgb.dcm"), J2K)
    ds = read(out)
    assert ds.PhotometricInterpretation == "YBR_RCT"
    assert "LossyImageCompression" not in ds or ds.LossyImageCompression == "00"


def test_transcode_jpeg_baseline_records_lossy_compression() -> None:
    data = pydicom_file("SC_rgb.dcm")
    out = transcode(data, JPEG_BASELINE)
    ds = read(out)
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.LossyImageCompression == "01"
    assert "ISO_10918_1" in ds.LossyImageCompressionMethod
    assert float(ds.LossyImageCompressionRatio) > 1
    assert ds.SOPInstanceUID == read(data).SOPInstanceUID
    diff = np.abs(ds.pixel_array.astype(int) - decoded(data).astype(int))
    assert diff.mean() < 2


def test_transcode_jpeg_baseline_greyscale_multiframe() -> None:
    data = highdicom_file("seg_image_sm_control_labelmap.dcm")  # 8-bit MONOCHROME2, 20 frames
    ds = read(transcode(data, JPEG_BASELINE))
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.NumberOfFrames == 20
    assert ds.pixel_array.shape == decoded(data).shape


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("CT_small.dcm", JPEG_BASELINE),  # 16-bit
        ("CT_small.dcm", JPEG_EXTENDED),
        ("CT_small.dcm", JPEG_LOSSLESS_SV1),
        ("CT_small.dcm", "1.2.840.10008.5.1.4.1.1.2"),  # a SOP class, not a transfer syntax
        ("CT_small.dcm", "*"),
        ("liver.dcm", RLE_LOSSLESS),  # 1-bit
        ("OT-PAL-8-face.dcm", JPEG_BASELINE),  # palette indices must not be compressed lossily
        ("rtdose.dcm", J2K_LOSSLESS),  # 32-bit
    ],
)
def test_transcode_unproducible_raises(name: str, target: str) -> None:
    with pytest.raises(PixelError):
        transcode(pydicom_file(name), target)


def test_transcode_jpeg2000_needs_32_pixels() -> None:
    # openjpeg always uses six wavelet resolutions, so these 10x10 tiles cannot be encoded.
    with pytest.raises(PixelError, match="32"):
        transcode(highdicom_file("sm_image.dcm"), J2K_LOSSLESS)


def test_transcode_without_pixel_data_only_between_native_syntaxes() -> None:
    data = highdicom_file("sr_document.dcm")
    out = transcode(data, IMPLICIT_LE)
    ds = read(out)
    assert ds.file_meta.TransferSyntaxUID == IMPLICIT_LE
    assert len(ds.ContentSequence) == len(read(data).ContentSequence)
    with pytest.raises(PixelError, match="no pixel data"):
        transcode(data, RLE_LOSSLESS)


def test_transcode_dataset_without_file_meta() -> None:
    data = pydicom_file("ExplVR_BigEndNoMeta.dcm")
    ds = read(transcode(data, EXPLICIT_LE))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert ds.file_meta.MediaStorageSOPInstanceUID == read(data).SOPInstanceUID


def test_transcode_encapsulated_one_bit_repacks() -> None:
    # liver.dcm's binary frames RLE-encoded as bytes but still declaring BitsAllocated 1.
    source = read(pydicom_file("liver.dcm"))
    expected = source.pixel_array
    source.BitsAllocated, source.BitsStored, source.HighBit = 8, 8, 7
    source.PixelData = expected.tobytes()
    compress(source, RLE_LOSSLESS, generate_instance_uid=False)
    source.BitsAllocated, source.BitsStored, source.HighBit = 1, 1, 0
    data = to_bytes(source)
    assert np.array_equal(decoded(transcode(data, EXPLICIT_LE)), expected)
    assert frames(data, [2]) == [np.packbits(expected[1], bitorder="little").tobytes()]


def dciodvfy_errors(data: bytes, tmp_path: Path) -> set[str]:
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    result = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    return {line.strip() for line in (result.stdout + result.stderr).splitlines() if "Error" in line}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy is not installed")
@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("CT_small.dcm", IMPLICIT_LE),
        ("CT_small.dcm", EXPLICIT_BE),
        ("CT_small.dcm", RLE_LOSSLESS),
        ("CT_small.dcm", JPEG_LS_LOSSLESS),
        ("CT_small.dcm", J2K_LOSSLESS),
        ("MR_small_jpeg_ls_lossless.dcm", EXPLICIT_LE),
        ("SC_rgb.dcm", JPEG_BASELINE),
        ("SC_rgb.dcm", J2K),
        ("US1_J2KR.dcm", J2K),
        ("US1_J2KR.dcm", EXPLICIT_LE),
        ("emri_small_RLE.dcm", JPEG_LS_NEAR_LOSSLESS),
        ("liver.dcm", IMPLICIT_LE),
    ],
)
def test_transcode_adds_no_dciodvfy_errors(name: str, target: str, tmp_path: Path) -> None:
    data = pydicom_file(name)
    new_errors = dciodvfy_errors(transcode(data, target), tmp_path) - dciodvfy_errors(data, tmp_path)
    assert not new_errors


# --- frame_count ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count"),
    [("CT_small.dcm", 1), ("emri_small.dcm", 10), ("emri_small_RLE.dcm", 10), ("liver.dcm", 3)],
)
def test_frame_count(name: str, count: int) -> None:
    assert frame_count(pydicom_file(name)) == count


def test_frame_count_highdicom() -> None:
    assert frame_count(highdicom_file("sm_image_jpegls.dcm")) == 25
    assert frame_count(highdicom_file("sr_document.dcm")) == 0


# --- frames --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "emri_small.dcm",
        "emri_small_RLE.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_big_endian.dcm",
        "SC_rgb_rle_2frame.dcm",
    ],
)
def test_frames_native_target_matches_decoded_slices(name: str) -> None:
    data = pydicom_file(name)
    arr = decoded(data)
    numbers = [1, arr.shape[0], 2]
    result = frames(data, numbers)
    frame_bytes = arr[0].nbytes
    for number, frame in zip(numbers, result, strict=True):
        assert len(frame) == frame_bytes
        assert frame == arr[number - 1].astype(arr.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", ["sm_image_jpegls.dcm", "sm_image_jpegls_nobot.dcm"])
def test_frames_highdicom_jpegls(name: str) -> None:
    data = highdicom_file(name)
    arr = decoded(data)
    assert frames(data, [25, 7], EXPLICIT_LE) == [arr[24].tobytes(), arr[6].tobytes()]
    assert all(len(frame) == 10 * 10 * 3 for frame in frames(data, [1, 2, 3]))


@pytest.mark.parametrize(
    "load",
    [
        lambda: pydicom_file("emri_small_RLE.dcm"),
        lambda: pydicom_file("emri_small_jpeg_2k_lossless.dcm"),
        lambda: highdicom_file("sm_image_jpegls.dcm"),  # basic offset table
        lambda: highdicom_file("sm_image_jpegls_nobot.dcm"),  # none: found by fragment scanning
    ],
    ids=["rle", "j2k", "jpegls-bot", "jpegls-nobot"],
)
def test_frames_as_stored_match_pydicom_encapsulation(load: Callable[[], bytes]) -> None:
    data = load()
    ds = read(data)
    expected = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    numbers = [ds.NumberOfFrames, 1, 3]
    wanted = [expected[number - 1] for number in numbers]
    assert frames(data, numbers, "*") == wanted
    assert frames(data, numbers, ds.file_meta.TransferSyntaxUID) == wanted


def test_frames_as_stored_for_native_data_are_little_endian_slices() -> None:
    big = pydicom_file("emri_small_big_endian.dcm")
    assert frames(big, [3], "*") == frames(pydicom_file("emri_small.dcm"), [3], "*")


@pytest.mark.parametrize("name", ["seg_image_ct_binary.dcm", "seg_image_sm_control.dcm"])
def test_frames_one_bit_are_repacked_per_frame(name: str) -> None:
    # seg_image_sm_control has 10x10 frames, so frames start mid-byte in the stored bit stream.
    data = highdicom_file(name)
    arr = decoded(data)
    numbers = list(range(1, arr.shape[0] + 1))
    expected = [np.packbits(frame.ravel(), bitorder="little").tobytes() for frame in arr]
    assert frames(data, numbers) == expected
    assert frames(data, numbers, "*") == expected


@pytest.mark.parametrize("numbers", [[0], [11], [1, 11], [-1], []])
def test_frames_out_of_range_raise(numbers: list[int]) -> None:
    with pytest.raises(PixelError):
        frames(pydicom_file("emri_small.dcm"), numbers)


def test_frames_errors() -> None:
    with pytest.raises(PixelError, match="no pixel data"):
        frames(highdicom_file("sr_document.dcm"), [1])
    with pytest.raises(PixelError):
        frames(pydicom_file("emri_small.dcm"), [1], JPEG_LS_LOSSLESS)
    with pytest.raises(PixelError):
        frames(pydicom_file("emri_small_RLE.dcm"), [1], J2K_LOSSLESS)


# --- render --------------------------------------------------------------------------------------------


def test_render_jpeg_greyscale() -> None:
    img = image(render(pydicom_file("CT_small.dcm")))
    assert img.format == "JPEG"
    assert img.size == (128, 128)
    assert img.mode == "L"


def test_render_png_colour() -> None:
    img = image(render(pydicom_file("SC_rgb.dcm"), media_type="image/png"))
    assert img.format == "PNG"
    assert img.mode == "RGB"
    assert np.array_equal(np.asarray(img), decoded(pydicom_file("SC_rgb.dcm")))


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "US1_J2KR.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_render_ycbcr_as_rgb(name: str) -> None:
    data = pydicom_file(name)
    rendered = np.asarray(image(render(data, media_type="image/png"))).astype(int)
    assert rendered.shape == decoded(data).shape
    assert np.abs(rendered - decoded(data).astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("name", "viewport", "size"),
    [
        ("CT_small.dcm", (64, 64), (64, 64)),
        ("CT_small.dcm", (100, 50), (50, 50)),
        ("CT_small.dcm", (256, 512), (256, 256)),
        ("US1_J2KR.dcm", (320, 320), (320, 240)),
        ("US1_J2KR.dcm", (1000, 600), (800, 600)),
    ],
)
def test_render_viewport_fits_box_keeping_aspect(name: str, viewport: tuple[int, int], size: tuple[int, int]) -> None:
    assert image(render(pydicom_file(name), viewport=viewport)).size == size


def test_render_monochrome1_is_inverted() -> None:
    mono2 = grey(render(ct_variant(), media_type="image/png"))
    mono1 = grey(render(ct_variant(PhotometricInterpretation="MONOCHROME1"), media_type="image/png"))
    assert np.array_equal(mono1, 255 - mono2)
    assert mono2.std() > 0


def test_render_real_monochrome1() -> None:
    img = image(render(highdicom_file("dx_image.dcm"), media_type="image/png"))
    assert img.size == (211, 169)


def test_render_window_applies_to_rescaled_values() -> None:
    ds = read(pydicom_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = 100, 200
    rendered = grey(render(ct_variant(WindowCenter=center, WindowWidth=width), media_type="image/png"))
    assert (rendered[hu <= center - width / 2] == 0).all()
    assert (rendered[hu > center + width / 2] == 255).all()
    inside = (hu > center - width / 2 + 5) & (hu < center + width / 2 - 5)
    assert inside.any()
    assert ((rendered[inside] > 0) & (rendered[inside] < 255)).all()


def test_render_window_changes_output() -> None:
    narrow = grey(render(ct_variant(WindowCenter=40, WindowWidth=80), media_type="image/png"))
    wide = grey(render(ct_variant(WindowCenter=500, WindowWidth=3000), media_type="image/png"))
    sigmoid = grey(
        render(ct_variant(WindowCenter=40, WindowWidth=80, VOILUTFunction="SIGMOID"), media_type="image/png")
    )
    assert not np.array_equal(narrow, wide)
    assert not np.array_equal(narrow, sigmoid)
    multi = grey(render(ct_variant(WindowCenter=[40, 500], WindowWidth=[80, 3000]), media_type="image/png"))
    assert np.array_equal(multi, narrow)


def test_render_without_window_uses_full_range() -> None:
    rendered = grey(render(ct_variant(WindowCenter=None, WindowWidth=None), media_type="image/png"))
    assert rendered.min() == 0
    assert rendered.max() == 255


@pytest.mark.parametrize("name", ["vlut_04.dcm", "mlut_18.dcm"])
def test_render_lut_images(name: str) -> None:
    rendered = grey(render(pydicom_file(name), media_type="image/png"))
    assert rendered.shape == decoded(pydicom_file(name)).shape
    assert rendered.max() > rendered.min()


def test_render_palette_colour() -> None:
    rendered = np.asarray(image(render(pydicom_file("OT-PAL-8-face.dcm"), media_type="image/png")))
    assert rendered.shape == (480, 640, 3)
    assert not np.array_equal(rendered[..., 0], rendered[..., 2])


def test_render_palette_labelmap_segmentation() -> None:
    img = image(render(highdicom_file("seg_image_sm_control_labelmap_palette_color.dcm"), 2, "image/png"))
    assert img.mode == "RGB"


def test_render_multiframe_picks_frame() -> None:
    data = pydicom_file("emri_small.dcm")
    first = grey(render(data, 1, "image/png"))
    last = grey(render(data, 10, "image/png"))
    assert first.shape == (64, 64)
    assert not np.array_equal(first, last)
    with pytest.raises(PixelError):
        render(data, 11)


@pytest.mark.parametrize("name", ["seg_image_ct_binary.dcm", "seg_image_sm_control.dcm"])
def test_render_binary_segmentation(name: str) -> None:
    data = highdicom_file(name)
    rendered = grey(render(data, 2, "image/png"))
    assert set(np.unique(rendered)) <= {0, 255}
    assert np.array_equal(rendered == 255, decoded(data)[1] == 1)


def test_render_fractional_segmentation() -> None:
    data = highdicom_file("seg_image_ct_true_fractional.dcm")
    ds = read(data)
    rendered = grey(render(data, 1, "image/png"))
    expected = np.rint(ds.pixel_array[0].astype(float) * 255 / float(ds.MaximumFractionalValue))
    assert np.array_equal(rendered, expected)


def test_render_float_pixel_data() -> None:
    ds = read(pydicom_file("CT_small.dcm"))
    values = ds.pixel_array.astype(np.float32) / 7
    for keyword in ("PixelData", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    data = to_bytes(ds)
    rendered = grey(render(data, media_type="image/png"))
    assert (rendered.min(), rendered.max()) == (0, 255)
    assert frames(data, [1]) == [values.tobytes()]
    assert np.array_equal(decoded(transcode(data, EXPLICIT_BE)), values)
    with pytest.raises(PixelError):
        transcode(data, RLE_LOSSLESS)


def test_render_big_endian_and_deflated_sources() -> None:
    assert np.array_equal(
        grey(render(pydicom_file("MR_small_bigendian.dcm"), media_type="image/png")),
        grey(render(pydicom_file("MR_small.dcm"), media_type="image/png")),
    )
    assert image(render(pydicom_file("image_dfl.dcm"))).size == (512, 512)


def test_render_errors() -> None:
    data = pydicom_file("CT_small.dcm")
    with pytest.raises(PixelError, match="no pixel data"):
        render(highdicom_file("sr_document.dcm"))
    with pytest.raises(PixelError):
        render(data, 0)
    with pytest.raises(PixelError):
        render(data, 2)
    with pytest.raises(PixelError):
        render(data, media_type="image/gif")
    with pytest.raises(PixelError):
        render(data, quality=0)
    with pytest.raises(PixelError):
        render(data, viewport=(0, 10))


# --- parse_viewport ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("512,512", (512, 512)), (" 300 , 200 ", (300, 200)), ("100,50,0,0,10,-10", (100, 50))],
)
def test_parse_viewport(value: str, expected: tuple[int, int]) -> None:
    assert parse_viewport(value) == expected


@pytest.mark.parametrize(
    "value", ["", "abc", "10", "0,10", "10,0", "-5,10", "10,20,30", "20000,10", "1.5,2", "1_0,10", "10,10,"]
)
def test_parse_viewport_rejects(value: str) -> None:
    with pytest.raises(PixelError):
        parse_viewport(value)
