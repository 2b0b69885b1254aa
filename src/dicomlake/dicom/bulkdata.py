"""Bulk data values addressed by the paths used in BulkDataURIs (`7FE00010`, `00283000/0/00283006`), as
WADO-RS sends them: the value's bytes in little-endian order, and pixel data uncompressed and unencapsulated."""

from __future__ import annotations

import io
import re

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicomlake.dicom import pixelheader
from dicomlake.dicom.parse import PIXEL_DATA_TAGS, dictionary_vr

# Bytes per value to swap when a big-endian file's value is sent little-endian. OB and UN are byte
# streams (UN content is always little-endian, PS3.5 6.2.2); AT is a pair of 16-bit numbers.
_WORD_SIZES = {
    "OW": 2,
    "US": 2,
    "SS": 2,
    "AT": 2,
    "OF": 4,
    "OL": 4,
    "UL": 4,
    "SL": 4,
    "FL": 4,
    "OD": 8,
    "OV": 8,
    "FD": 8,
    "SV": 8,
    "UV": 8,
}
_BULK_VRS = frozenset(_WORD_SIZES) | {"OB", "UN"}
_PATH = re.compile(r"[0-9A-Fa-f]{8}(/\d{1,9}/[0-9A-Fa-f]{8})*")


class BulkDataError(LookupError):
    """The path does not name a bulk data element of this instance."""


def extract(data: bytes, path: str) -> bytes:
    """The value of the element at `path`, little-endian and unencapsulated where it is pixel data.
    Raises BulkDataError for a path that names nothing, and pixels.PixelError for pixel data that cannot be
    decompressed."""
    path = path.strip("/")
    if not _PATH.fullmatch(path):
        raise BulkDataError(f"bulk data path {path!r} must be TAG or TAG/ITEM/TAG... (tags as 8 hex digits)")
    parts = path.split("/")
    if path.upper() == "7FE00010" and isinstance(data, bytes):
        # Native pixel data of a little-endian file is its bytes as stored: sliced, without reading the file.
        header = pixelheader.read(data)
        if header is not None and not header.encapsulated:
            return data[header.pixel_start : header.pixel_start + header.pixel_length]
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    current: Dataset = ds
    try:
        for i in range(0, len(parts) - 1, 2):
            current = current[int(parts[i], 16)].value[int(parts[i + 1])]
    except (KeyError, IndexError, TypeError):
        raise BulkDataError(f"no bulk data at {path!r} in this instance") from None
    tag = int(parts[-1], 16)
    # The raw element, not pydicom's conversion of it: a private UN value stays the bytes that were sent
    # even where pydicom's private dictionary knows a VR for it.
    element = current.get_item(tag)
    if element is None or not isinstance(element.value, bytes):
        raise BulkDataError(f"no bulk data at {path!r} in this instance")
    if not set((element.VR or dictionary_vr(tag)).split(" or ")) & _BULK_VRS:
        raise BulkDataError(f"the element at {path!r} is not bulk data")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if tag in PIXEL_DATA_TAGS and len(parts) == 1 and syntax is not None and syntax.is_compressed:
        from dicomlake.dicom.pixels import frame_count, frames

        return b"".join(frames(data, list(range(1, frame_count(data) + 1))))
    if ds.original_encoding[1] is not False:
        return element.value
    return _swap(element.value, _word_size(tag, element.VR, current))


def _word_size(tag: int, vr: str | None, dataset: Dataset) -> int:
    if tag == 0x7FE00010 and vr == "OW":
        # OW pixel data holds values of BitsAllocated; 8-bit values sit in byte-swapped 16-bit words.
        bits = int(dataset.get("BitsAllocated") or 16)
        return bits // 8 if bits > 8 else 2
    return _WORD_SIZES.get(vr or "", 1)


def _swap(value: bytes, size: int) -> bytes:
    if size == 1:
        return value
    whole = len(value) - len(value) % size
    return np.frombuffer(value, dtype=f"<u{size}", count=whole // size).byteswap().tobytes() + value[whole:]
