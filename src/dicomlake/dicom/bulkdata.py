"""Bulk data values addressed by the paths used in BulkDataURIs (`7FE00010`, `00283000/0/00283006`), as
WADO-RS sends them: little-endian, and pixel data uncompressed and unencapsulated."""

from __future__ import annotations

import io
import re
import struct

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomlake.dicom.parse import PIXEL_DATA_TAGS

_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PATH = re.compile(r"[0-9A-Fa-f]{8}(/\d{1,9}/[0-9A-Fa-f]{8})*")


class BulkDataError(LookupError):
    """The path does not name a bulk data element of this instance."""


def extract(data: bytes, path: str) -> bytes:
    """The value of the element at `path`, little-endian and unencapsulated where it is pixel data."""
    path = path.strip("/")
    if not _PATH.fullmatch(path):
        raise BulkDataError(f"bulk data path {path!r} must be TAG or TAG/ITEM/TAG... (tags as 8 hex digits)")
    parts = path.split("/")
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    current: Dataset = ds
    try:
        for i in range(0, len(parts) - 1, 2):
            current = current[int(parts[i], 16)].value[int(parts[i + 1])]
        tag = int(parts[-1], 16)
        element = current[tag]
    except (KeyError, IndexError, TypeError):
        raise BulkDataError(f"no bulk data at {path!r} in this instance") from None
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if tag in PIXEL_DATA_TAGS and len(parts) == 1 and syntax is not None and syntax.is_compressed:
        from dicomlake.dicom.pixels import frame_count, frames

        return b"".join(frames(data, list(range(1, frame_count(data) + 1))))
    value = element.value
    if isinstance(value, bytes):
        # pydicom keeps binary values in the file's byte order; only big-endian files need swapping.
        little_endian = ds.original_encoding[1] is not False
        return value if little_endian else _swap(value, _word_size(element, current))
    if element.VR == "AT":
        tags = value if isinstance(value, list | pydicom.multival.MultiValue) else [value]
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
    fmt = _NUMBER_FORMATS.get(element.VR)
    if fmt is None:
        raise BulkDataError(f"the element at {path!r} is not bulk data")
    values = value if isinstance(value, list | pydicom.multival.MultiValue) else [value]
    return struct.pack("<" + fmt * len(values), *[int(v) if fmt not in "fd" else float(v) for v in values])


def _word_size(element: DataElement, dataset: Dataset) -> int:
    """Bytes per value to swap: OW pixel data holds values of BitsAllocated, other words are fixed by VR,
    and OB / UN are byte streams."""
    if element.tag == 0x7FE00010 and element.VR == "OW":
        bits = int(dataset.get("BitsAllocated") or 16)
        return bits // 8 if bits > 8 else 2
    return _WORD_SIZES.get(element.VR, 1)


def _swap(value: bytes, size: int) -> bytes:
    if size == 1:
        return value
    whole = len(value) - len(value) % size
    return np.frombuffer(value, dtype=f"<u{size}", count=whole // size).byteswap().tobytes() + value[whole:]
