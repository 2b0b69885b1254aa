"""The header walk (dicomlake.dicom.pixelheader) and the paths built on it give exactly what the general
pydicom path gives: the same frames byte for byte, the same display pixels, for every real file they take."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from conftest import all_dicom_files
from dicomlake.dicom import bulkdata, pixelheader, pixels


def _bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in pydicom's test data")
    return Path(path).read_bytes()


def _slow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pixelheader, "read", lambda data: None)


def _readable() -> list[Path]:
    files = []
    for path in all_dicom_files():
        data = path.read_bytes()
        if pixelheader.read(data) is not None:
            files.append(path)
    return files


READABLE = _readable()


def test_header_walk_takes_most_little_endian_images() -> None:
    # The fast path is worth having only if it takes the usual files; big-endian and deflated ones it leaves.
    assert len(READABLE) >= 60
    assert pixelheader.read(_bytes("emri_small_big_endian.dcm")) is None
    assert pixelheader.read(_bytes("MR_small.dcm")) is not None


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.name)
def test_frames_as_stored_equal_the_general_path(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = path.read_bytes()
    header = pixelheader.read(data)
    assert header is not None
    numbers = list(range(1, header.number_of_frames + 1))
    fast = pixelheader.stored_frames(data, header, numbers)
    with monkeypatch.context() as m:
        _slow(m)
        try:
            slow = pixels.frames(data, numbers, "*")
        except pixels.PixelError:
            assert fast is None or header.bits_allocated < 8
            return
    if fast is not None:
        assert fast == slow
    assert pixels.frames(data, numbers, "*") == slow


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.name)
def test_rendered_pixels_equal_the_general_path(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = path.read_bytes()
    header = pixelheader.read(data)
    assert header is not None
    for frame in sorted({1, header.number_of_frames}):
        fast = pixels._display_from_header(data, header, frame)
        with monkeypatch.context() as m:
            _slow(m)
            try:
                slow_png = pixels.render(data, frame, "image/png")
            except pixels.PixelError:
                continue
        png = pixels.render(data, frame, "image/png")
        # PNG is lossless: equal decoded pixels mean the same windowing, rescale and photometric handling.
        assert np.array_equal(_pixels(png), _pixels(slow_png))
        if fast is not None:
            assert np.array_equal(fast, _pixels(slow_png))


def test_common_cases_take_the_fast_path() -> None:
    for name in ("MR_small.dcm", "CT_small.dcm", "emri_small.dcm", "MR_small_RLE.dcm", "SC_rgb.dcm"):
        data = _bytes(name)
        header = pixelheader.read(data)
        assert header is not None, name
        assert pixels._display_from_header(data, header, 1) is not None, name


def test_sliced_multiframe_frames_equal_decoded_ones() -> None:
    data = _bytes("emri_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    sliced = pixels.frames(data, list(range(1, 11)), ExplicitVRLittleEndian)
    for frame, expected in zip(sliced, ds.pixel_array, strict=True):
        decoded = np.frombuffer(frame, dtype="<u2").reshape(64, 64)
        assert np.array_equal(decoded, expected)


def _encapsulated(offsets: str) -> tuple[bytes, list[bytes]]:
    """emri_small.dcm as RLE with no offset table, a Basic or an Extended Offset Table, and its frames."""
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    ds.compress(RLELossless, generate_instance_uid=False)
    frames = list(generate_frames(ds.PixelData, number_of_frames=10))
    if offsets == "extended":
        value, table, lengths = encapsulate_extended(frames)
        ds.PixelData = value
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = table, lengths
    else:
        ds.PixelData = encapsulate(frames, has_bot=offsets == "basic")
    ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), frames


@pytest.mark.parametrize("offsets", ["none", "basic", "extended"])
def test_encapsulated_frames_found_with_and_without_offset_tables(offsets: str) -> None:
    data, frames = _encapsulated(offsets)
    header = pixelheader.read(data)
    assert header is not None and header.encapsulated
    assert pixels.frames(data, [3, 1, 10], "*") == [frames[2], frames[0], frames[9]]
    with pytest.raises(pixels.PixelError, match="frame 11 does not exist"):
        pixels.frames(data, [11], "*")


def test_fragmented_frames_without_offset_table_join_up_to_end_of_image() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    two = [frame[:100], frame[100:]] * 2  # two frames of two fragments each, no offsets
    ds.PixelData = encapsulate([b"".join(two[:2]), b"".join(two[2:])], fragments_per_frame=2, has_bot=False)
    ds.NumberOfFrames = 2
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert pixels.frames(data, [1, 2], "*") == [frame, frame]


def test_rendered_image_windowed_and_inverted_like_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400
    for photometric, function in [
        ("MONOCHROME1", "LINEAR"),
        ("MONOCHROME2", "SIGMOID"),
        ("MONOCHROME2", "LINEAR_EXACT"),
    ]:
        ds.PhotometricInterpretation = photometric
        ds.VOILUTFunction = function
        out = io.BytesIO()
        ds.save_as(out)
        data = out.getvalue()
        fast = pixels.render(data, 1, "image/png", (64, 64))
        with monkeypatch.context() as m:
            _slow(m)
            slow = pixels.render(data, 1, "image/png", (64, 64))
        assert np.array_equal(_pixels(fast), _pixels(slow)), (photometric, function)
        assert _pixels(fast).shape == (64, 64)


def test_jpeg_encoded_with_pillows_tables_and_fidelity() -> None:
    data = _bytes("MR_small.dcm")
    shown = pixels._display_from_header(data, pixelheader.read(data), 1)  # type: ignore[arg-type]
    assert shown is not None
    ours = pixels.render(data, 1, "image/jpeg", quality=90)
    out = io.BytesIO()
    Image.fromarray(shown).save(out, "JPEG", quality=90)
    assert Image.open(io.BytesIO(ours)).quantization == Image.open(out).quantization
    our_error = np.abs(_pixels(ours).astype(int) - shown)
    pillow_error = np.abs(_pixels(out.getvalue()).astype(int) - shown)
    assert our_error.mean() <= pillow_error.mean() * 1.1
    assert our_error.max() <= pillow_error.max() + 2


def _pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)))


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.name)
def test_native_pixel_bulk_data_sliced_equals_the_general_path(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = path.read_bytes()
    with monkeypatch.context() as m:
        _slow(m)
        try:
            expected = bulkdata.extract(data, "7FE00010")
        except (bulkdata.BulkDataError, pixels.PixelError):
            return
    assert bulkdata.extract(data, "7fe00010") == expected
