"""Where an instance's pixels are and how to read them, from one walk of its header with struct: the Image
Pixel attributes, the windowing and rescale values, and the byte span of each stored frame. It serves the
frame and rendered requests, which need one frame and not a pydicom Dataset of the whole file (reading
MR_small.dcm with pydicom takes 240 us; this walk 30 us, 80 for CT_small.dcm with its private groups).

It reads what the common case holds, little-endian files with a file meta group, and says so by returning
None for anything else (big-endian or deflated data, a value it cannot interpret, an element that
changes how pixels map to display, such as LUT sequences, palettes or functional groups): the caller then
takes the general path through pydicom, which gives the same answer and the same errors, only slower."""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from pydicom.datadict import DicomDictionary

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
# Encapsulated syntaxes in Explicit VR Little Endian; deflated and big-endian data take the general path.
_ENCAPSULATED = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.5",
    }
)

_US = {0x00280002: "samples", 0x00280006: "planar", 0x00280010: "rows", 0x00280011: "columns"}
_US |= {0x00280100: "bits_allocated", 0x00280101: "bits_stored", 0x00280103: "pixel_representation"}
_CS = {0x00280004: "photometric", 0x00281056: "voi_function", 0x20500020: "presentation_shape"}
_DS = {0x00281050: "window_center", 0x00281051: "window_width", 0x00281052: "intercept", 0x00281053: "slope"}
_NUMBER_OF_FRAMES = 0x00280008
_EXTENDED_OFFSETS, _EXTENDED_LENGTHS = 0x7FE00001, 0x7FE00002
_PIXEL_DATA = 0x7FE00010
_GROUPS = frozenset({0x0028, 0x0062, 0x2050, 0x5200, 0x7FE0})
# Elements that change what a frame looks like beyond what PixelHeader holds: the general path renders them.
_DISPLAY_CHANGING = frozenset(
    {
        0x00283000,  # Modality LUT Sequence
        0x00283010,  # VOI LUT Sequence
        0x00281101,  # palette descriptors and data
        0x00281102,
        0x00281103,
        0x00281201,
        0x00281202,
        0x00281203,
        0x00281221,
        0x00281222,
        0x00281223,
        0x00620001,  # Segmentation Type
        0x52009229,  # Shared Functional Groups Sequence
        0x52009230,  # Per-Frame Functional Groups Sequence
        0x7FE00008,  # Float Pixel Data
        0x7FE00009,  # Double Float Pixel Data
    }
)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32
_HH = struct.Struct("<HH").unpack_from
_HH2SH = struct.Struct("<HH2sH").unpack_from
_HHL = struct.Struct("<HHL").unpack_from
_H = struct.Struct("<H").unpack_from
_L = struct.Struct("<L").unpack_from
# JPEG EOI and JPEG 2000 EOC are both FFD9; encoders may pad the fragment after it.
_END_OF_IMAGE = b"\xff\xd9"


@dataclass
class _Values:
    ints: dict[str, int]
    texts: dict[str, str]
    numbers: dict[str, float]


class _Unsupported(Exception):
    """Something this reader leaves to the general path."""


@dataclass(frozen=True)
class PixelHeader:
    """What the frame and rendered paths need of an instance, read from its bytes."""

    transfer_syntax: str
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar: int
    number_of_frames: int
    window_center: float | None
    window_width: float | None
    voi_function: str
    slope: float | None
    intercept: float | None
    presentation_shape: str
    # Pixel Data's value: its first byte and its length (for encapsulated data, up to the end of the bytes).
    pixel_start: int
    pixel_length: int
    # Each frame's (start, end) spans in the whole file's bytes, for encapsulated data; empty for native.
    fragments: tuple[tuple[tuple[int, int], ...], ...]
    # Elements that the rendering of a frame must honour and this header does not hold (LUTs, palettes).
    display_changing: bool

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax != IMPLICIT_LE and self.transfer_syntax != EXPLICIT_LE

    @property
    def frame_size(self) -> int:
        """Bytes of one native frame."""
        return self.rows * self.columns * self.samples * (self.bits_allocated // 8)


def read(data: bytes) -> PixelHeader | None:
    """The pixel header of a Part 10 instance, or None when it needs the general path (see the module)."""
    try:
        return _read(data)
    except (_Unsupported, struct.error, ValueError, IndexError):
        return None


def stored_frames(data: bytes, header: PixelHeader, numbers: list[int]) -> list[bytes] | None:
    """The 1-based frames `numbers` as stored: the frame's bytes for native data (BitsAllocated 8 or more),
    the joined fragments for encapsulated data; None if a frame lies outside the data (the general path says
    why)."""
    count = header.number_of_frames
    if not numbers or any(not 1 <= n <= count for n in numbers):
        return None
    if header.encapsulated:
        if max(numbers) > len(header.fragments):
            return None
        return [b"".join(data[start:end] for start, end in header.fragments[n - 1]) for n in numbers]
    size = header.frame_size
    if header.bits_allocated < 8 or header.photometric == "YBR_FULL_422" or max(numbers) * size > header.pixel_length:
        return None
    start = header.pixel_start
    return [data[start + (n - 1) * size : start + n * size] for n in numbers]


def _read(data: bytes) -> PixelHeader:
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _Unsupported("no preamble")
    syntax, pos = _file_meta(data)
    if syntax not in (IMPLICIT_LE, EXPLICIT_LE) and syntax not in _ENCAPSULATED:
        raise _Unsupported(syntax)
    implicit = syntax == IMPLICIT_LE
    values = _Values({}, {}, {})
    extended: dict[int, bytes] = {}
    display_changing = False
    end = len(data)
    # The loop is the cost of this module (about 0.3 us an element): headers are unpacked inline, and only
    # the elements of the groups that matter are looked at.
    while pos + 8 <= end:
        if implicit:
            group, element, length = _HHL(data, pos)
            value_pos = pos + 8
            vr = b"SQ" if length == _UNDEFINED else b""
        else:
            group, element, vr, length = _HH2SH(data, pos)
            if vr in _LONG_VRS:
                length = _L(data, pos + 8)[0]
                value_pos = pos + 12
            elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
                value_pos = pos + 8
            else:
                raise _Unsupported("not an explicit VR")
        if length == _UNDEFINED:
            tag = group << 16 | element
            if tag == _PIXEL_DATA:
                return _finish(data, syntax, implicit, values, extended, display_changing, vr, length, value_pos)
            if tag in _DISPLAY_CHANGING:
                display_changing = True
            if vr != b"SQ":
                raise _Unsupported("undefined length outside a sequence")  # UN of undefined length, say
            pos = _skip_sequence(data, value_pos, implicit, 1)
            continue
        pos = value_pos + length
        if pos > end:
            raise _Unsupported("value runs past the end")
        if group not in _GROUPS:
            continue
        tag = group << 16 | element
        if tag == _PIXEL_DATA:
            return _finish(data, syntax, implicit, values, extended, display_changing, vr, length, value_pos)
        if tag in _DISPLAY_CHANGING:
            display_changing = True
        elif tag in _US:
            if length != 2:
                raise _Unsupported("US value of unexpected length")
            values.ints[_US[tag]] = _H(data, value_pos)[0]
        elif tag in _CS:
            text = _text(data[value_pos:pos])
            values.texts[_CS[tag]] = text if tag == 0x00280004 else text.upper()
        elif tag in _DS:
            values.numbers[_DS[tag]] = _first_number(data[value_pos:pos], single=tag in (0x00281052, 0x00281053))
        elif tag == _NUMBER_OF_FRAMES:
            text = _text(data[value_pos:pos])
            values.ints["number_of_frames"] = int(text) if text else 1
        elif tag in (_EXTENDED_OFFSETS, _EXTENDED_LENGTHS):
            extended[tag] = data[value_pos:pos]
    raise _Unsupported("no pixel data")


def _file_meta(data: bytes) -> tuple[str, int]:
    """The transfer syntax, and where the data set starts (the file meta group is Explicit VR Little Endian)."""
    pos, syntax = 132, ""
    while pos + 8 <= len(data) and _H(data, pos)[0] == 0x0002:
        tag, _, length, value_pos = _header(data, pos, False)
        if length == _UNDEFINED:
            raise _Unsupported("undefined length in the file meta group")
        if tag == 0x00020010:
            syntax = _text(data[value_pos : value_pos + length])
        pos = value_pos + length
    return syntax, pos


def _header(data: bytes, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value position) of the element at `pos`."""
    group, element = _HH(data, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        length = _L(data, pos + 4)[0]
        entry = DicomDictionary.get(tag)
        vr = entry[0].encode() if entry else b"UN"
        return tag, vr, length, pos + 8
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        return tag, vr, _L(data, pos + 8)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Unsupported("not an explicit VR")
    return tag, vr, _H(data, pos + 6)[0], pos + 8


def _skip_sequence(data: bytes, pos: int, implicit: bool, depth: int) -> int:
    """Past the sequence delimiter of the undefined-length sequence (or fragments) whose items start at `pos`."""
    if depth > _MAX_DEPTH:
        raise _Unsupported("sequences nested too deep")
    end = len(data)
    while pos + 8 <= end:
        group, element, length = _HHL(data, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise _Unsupported("not an item")
        pos += 8
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: its elements up to the item delimiter
            tag, vr, length, value_pos = _header(data, pos, implicit)
            if tag == _ITEM_END:
                pos = value_pos
                break
            if length == _UNDEFINED:
                if not implicit and vr not in (b"SQ", b"OB", b"OW"):
                    raise _Unsupported("undefined length outside a sequence")
                pos = _skip_sequence(data, value_pos, implicit, depth + 1)
            else:
                pos = value_pos + length
            if pos > end:
                raise _Unsupported("value runs past the end")
    raise _Unsupported("sequence runs past the end")


def _finish(
    data: bytes,
    syntax: str,
    implicit: bool,
    values: _Values,
    extended: dict[int, bytes],
    display_changing: bool,
    vr: bytes,
    length: int,
    value_pos: int,
) -> PixelHeader:
    ints, texts, numbers = values.ints, values.texts, values.numbers
    if any(not ints.get(name) for name in ("rows", "columns", "samples", "bits_allocated")):
        raise _Unsupported("image pixel attributes missing")  # the general path names them
    if not texts.get("photometric"):
        raise _Unsupported("no photometric interpretation")
    encapsulated = syntax in _ENCAPSULATED
    if encapsulated != (length == _UNDEFINED):
        raise _Unsupported("pixel data encoding does not match the transfer syntax")
    frames = max(1, ints.get("number_of_frames", 1))
    fragments: tuple[tuple[tuple[int, int], ...], ...] = ()
    if encapsulated:
        fragments = _frame_spans(data, value_pos, frames, extended)
        length = len(data) - value_pos
    elif (not implicit and vr not in (b"OB", b"OW")) or value_pos + length > len(data):
        raise _Unsupported("native pixel data of an unexpected VR or length")
    return PixelHeader(
        transfer_syntax=syntax,
        rows=ints["rows"],
        columns=ints["columns"],
        samples=ints["samples"],
        bits_allocated=ints["bits_allocated"],
        bits_stored=ints.get("bits_stored") or ints["bits_allocated"],
        pixel_representation=ints.get("pixel_representation", 0),
        photometric=texts["photometric"],
        planar=ints.get("planar", 0),
        number_of_frames=frames,
        window_center=numbers.get("window_center"),
        window_width=numbers.get("window_width"),
        voi_function=texts.get("voi_function", ""),
        slope=numbers.get("slope"),
        intercept=numbers.get("intercept"),
        presentation_shape=texts.get("presentation_shape", ""),
        pixel_start=value_pos,
        pixel_length=length,
        fragments=fragments,
        display_changing=display_changing,
    )


def _frame_spans(
    data: bytes, pos: int, frames: int, extended: dict[int, bytes]
) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Each frame's fragment spans: from the Extended Offset Table, else the Basic Offset Table, else one
    fragment a frame or (more fragments than frames) fragments up to each end-of-image marker."""
    group, element, table_length = _HHL(data, pos)
    if group << 16 | element != _ITEM or table_length == _UNDEFINED or table_length % 4:
        raise _Unsupported("no Basic Offset Table item")
    first = pos + 8 + table_length  # the first fragment's item tag; offsets count from here
    basic = list(struct.unpack_from(f"<{table_length // 4}L", data, pos + 8))
    fragments = []
    item = first
    while True:
        group, element, length = _HHL(data, item)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM or length == _UNDEFINED or item + 8 + length > len(data):
            raise _Unsupported("malformed fragments")
        fragments.append((item + 8, item + 8 + length))
        item += 8 + length
    if _EXTENDED_OFFSETS in extended and _EXTENDED_LENGTHS in extended:
        offsets, lengths = extended[_EXTENDED_OFFSETS], extended[_EXTENDED_LENGTHS]
        if len(offsets) % 8 or len(offsets) != len(lengths):
            raise _Unsupported("extended offset table of unexpected length")
        starts = struct.unpack(f"<{len(offsets) // 8}Q", offsets)
        sizes = struct.unpack(f"<{len(lengths) // 8}Q", lengths)
        spans = tuple(((first + s + 8, first + s + 8 + n),) for s, n in zip(starts, sizes, strict=True))
        if any(end > len(data) for ((_, end),) in spans):
            raise _Unsupported("extended offset table points past the end")
        return spans
    if basic:
        grouped: list[list[tuple[int, int]]] = [[] for _ in basic]
        for start, end in fragments:
            # A fragment belongs to the last frame whose offset is at or before its item tag.
            grouped[max(0, bisect.bisect_right(basic, start - 8 - first) - 1)].append((start, end))
        return tuple(tuple(g) for g in grouped)
    if frames == 1:
        return (tuple(fragments),)
    if len(fragments) <= frames:
        return tuple((f,) for f in fragments)
    out, current = [], []
    for start, end in fragments:
        current.append((start, end))
        if _END_OF_IMAGE in data[max(start, end - 10) : end]:
            out.append(tuple(current))
            current = []
    if current:
        out.append(tuple(current))
    return tuple(out)


def _text(value: bytes) -> str:
    return value.decode("ascii").strip(" \x00")


def _first_number(value: bytes, single: bool) -> float:
    """The first value of a DS as a float. An empty or unreadable value, or several where one is expected, is
    left to the general path, which decides what they mean."""
    texts = _text(value).split("\\")
    if single and len(texts) > 1:
        raise _Unsupported("several values")
    return float(texts[0].strip())
