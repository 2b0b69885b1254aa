"""Read a DICOM Part 10 header straight from bytes into the DICOM JSON model (PS3.18 F.2), without
decoding pixels. This is the ingest hot path, so it walks the byte stream once with struct and never
builds pydicom DataElements; pydicom serves only as the data dictionary and for character sets.

Bulk data follows the Cloud Healthcare conformance statement: pixel data, every OB/OW/UN value,
OD/OF/OL/OV values over 2 KiB and AT/FD/FL/SL/SS/SV/UL/US/UV values with more than 512 entries are
replaced by a BulkDataURI; sequences over 1 MiB are left out of the metadata (and named in `dropped`, which
tables show as DroppedTags). DS and IS values become JSON numbers (PS3.18 F.2.3); where a value's text is not
what its number writes back to ("0.50", "1.0E+02", "007"), the text is kept apart in `number_text` for the
tables, whose DS and IS columns are strings. Sequences nested deeper than MAX_SEQUENCE_DEPTH make the instance
unreadable: the reader recurses once per level, and so does every reader of the stored DICOM JSON (QIDO, XML,
tables)."""

from __future__ import annotations

import base64
import mmap
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from orjson import dumps as _dumps
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import DicomDictionary, RepeatersDictionary

# Stands for "<instance URL>/bulkdata/" in stored metadata; replaced when the metadata is served.
BULKDATA_PREFIX = "dicomlake:bulkdata/"

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
MAX_SEQUENCE_BYTES = 1 << 20
MAX_INLINE_BINARY = 2048
MAX_INLINE_NUMBERS = 512
# Real archives nest sequences a few levels deep (SR content trees ten or so); 32 leaves room for them and keeps
# the DICOM JSON (four JSON levels per sequence level) well under orjson's limit of 255.
MAX_SEQUENCE_DEPTH = 32

_VALID_VRS = frozenset(
    [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    ]
)
_VR_NAMES = {vr.encode("ascii"): vr for vr in _VALID_VRS}
_LE_HH, _BE_HH = struct.Struct("<HH").unpack_from, struct.Struct(">HH").unpack_from
_LE_H, _BE_H = struct.Struct("<H").unpack_from, struct.Struct(">H").unpack_from
_LE_L, _BE_L = struct.Struct("<L").unpack_from, struct.Struct(">L").unpack_from
_LONG_HEADER_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # single-valued; backslash is an ordinary character
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UI"})  # stripped both ends, no conversion
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_SIZES = {fmt: struct.calcsize("<" + fmt) for fmt in _NUMBER_FORMATS.values()}
_BINARY_VRS = frozenset({"OB", "OW", "UN"})
_FLOAT_BINARY_VRS = frozenset({"OD", "OF", "OL", "OV"})

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class DicomParseError(ValueError):
    """The bytes are not a readable DICOM Part 10 instance; the message says why, for a user."""


@dataclass
class ParsedInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str | None
    transfer_syntax_uid: str
    # DICOM JSON of the data set (file meta group excluded), bulk data as BulkDataURIs.
    metadata: dict[str, Any]
    number_of_frames: int
    instance_number: int | None
    file_meta: dict[str, Any] = field(default_factory=dict)
    # Keys (GGGGEEEE) of the sequences left out of `metadata` for being over 1 MiB, at any depth.
    dropped: list[str] = field(default_factory=list)
    # The DS and IS elements whose text the JSON numbers do not render back: element path (keys and item
    # indexes joined by "/", as in bulk data paths) -> each value's text, spaces stripped ("" for an empty one).
    number_text: dict[str, list[str]] = field(default_factory=dict)


def _vr_for(tag: int) -> str:
    entry = DicomDictionary.get(tag)
    if entry is None:
        if tag & 0xFFFF == 0:
            return "UL"  # group length
        if (tag >> 16) & 1:
            # Private creators are LO; the meaning of other private elements is unknown here.
            return "LO" if 0x0010 <= (tag & 0xFFFF) <= 0x00FF else "UN"  # private creator or private
        for mask, repeater in _REPEATER_MASKS:
            if tag & mask[0] == mask[1]:
                return repeater
        return "UN"
    return entry[0]


def _repeater_masks() -> list[tuple[tuple[int, int], str]]:
    masks = []
    for pattern, entry in RepeatersDictionary.items():
        and_mask = int("".join("F" if c != "x" else "0" for c in pattern), 16)
        value = int("".join(c if c != "x" else "0" for c in pattern), 16)
        masks.append(((and_mask, value), entry[0]))
    return masks


_REPEATER_MASKS = _repeater_masks()
_VR_CACHE: dict[int, str] = {}


def dictionary_vr(tag: int) -> str:
    vr = _VR_CACHE.get(tag)
    if vr is None:
        vr = _VR_CACHE[tag] = _vr_for(tag)
    return vr


class _Reader:
    """One pass over a data set encoding; `little`/`implicit` fix how element headers are read."""

    __slots__ = ("buf", "dropped", "encodings", "end", "implicit", "little", "number_text", "pixel_representation")

    def __init__(self, buf: bytes | memoryview | mmap.mmap, little: bool, implicit: bool) -> None:
        self.buf = buf
        self.little = little
        self.implicit = implicit
        self.encodings: list[str] = ["iso8859"]
        self.pixel_representation = 0
        self.end = len(buf)
        self.dropped: list[str] = []  # keys of the sequences left out for their size
        self.number_text: dict[str, list[str]] = {}  # ParsedInstance.number_text

    def header(self, pos: int) -> tuple[int, str | None, int, int]:
        """(tag, vr or None for implicit, value length, position of the value)."""
        buf = self.buf
        if pos + 8 > self.end:
            raise DicomParseError(f"truncated DICOM data: element header at byte {pos} runs past the end")
        little = self.little
        group, elem = (_LE_HH if little else _BE_HH)(buf, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE or self.implicit:
            return tag, None, (_LE_L if little else _BE_L)(buf, pos + 4)[0], pos + 8
        vr = _VR_NAMES.get(bytes(buf[pos + 4 : pos + 6]))
        if vr in _LONG_HEADER_VRS:
            if pos + 12 > self.end:
                raise DicomParseError(f"truncated DICOM data: element header at byte {pos} runs past the end")
            return tag, vr, (_LE_L if little else _BE_L)(buf, pos + 8)[0], pos + 12
        length = (_LE_H if little else _BE_H)(buf, pos + 6)[0]
        if vr is None:
            # Some writers emit a bogus VR with a short header; trust the dictionary instead.
            return tag, dictionary_vr(tag), length, pos + 8
        return tag, vr, length, pos + 8

    def dataset(self, pos: int, end: int, path: str, depth: int) -> tuple[dict[str, Any], int]:
        """Read elements from pos until end (or an item delimiter); returns (json, position after)."""
        out: dict[str, Any] = {}
        while pos < end:
            tag, vr, length, vpos = self.header(pos)
            if tag == _ITEM_END:
                return out, vpos
            if tag in (_SEQUENCE_END, _ITEM):
                raise DicomParseError(f"malformed DICOM data: unexpected delimiter at byte {pos}")
            if vr is None:
                vr = dictionary_vr(tag)
            if " or " in vr:
                vr = _resolve_ambiguous(vr, self.pixel_representation)
            key = f"{tag:08X}"
            if tag & 0xFFFF == 0 and length == 4:
                # Group lengths are retired and describe an encoding, not the data: left out.
                pos = vpos + 4
                continue
            if length == _UNDEFINED:
                if vr == "SQ" or vr == "UN":
                    items, pos = self.sequence(vpos, f"{path}{key}/", depth, implicit_un=(vr == "UN"))
                    size = pos - vpos
                    if size <= MAX_SEQUENCE_BYTES and items is not None:
                        out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                    elif size > MAX_SEQUENCE_BYTES:
                        self.dropped.append(key)
                        if self.number_text:
                            self.forget_texts(f"{path}{key}/")
                    continue
                if tag in PIXEL_DATA_TAGS:
                    pos = self.skip_fragments(vpos)
                    out[key] = {
                        "vr": vr if vr in ("OB", "OW") else "OB",
                        "BulkDataURI": f"{BULKDATA_PREFIX}{path}{key}",
                    }
                    continue
                raise DicomParseError(f"malformed DICOM data: undefined length on ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            pos = vpos + length
            if pos > end:
                raise DicomParseError(
                    f"truncated DICOM data: ({tag >> 16:04X},{tag & 0xFFFF:04X}) needs {length} bytes "
                    f"but only {max(end - vpos, 0)} remain"
                )
            if vr == "UN" and not self.implicit:
                known = dictionary_vr(tag)
                if known != "UN":
                    # A standard element sent as UN: its value is Implicit VR Little Endian (PS3.5 6.2.2).
                    out.update(self.reinterpret_un(tag, known, vpos, pos, path, key, depth))
                    continue
            if vr == "SQ":
                if length <= MAX_SEQUENCE_BYTES:
                    items, _ = self.sequence(vpos, f"{path}{key}/", depth, limit=pos)
                    out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
                else:
                    self.dropped.append(key)
                continue
            element = self.element(tag, vr, vpos, length, path, key)
            if element is not None:
                out[key] = element
        return out, pos

    def forget_texts(self, prefix: str) -> None:
        """Leave out the number texts of a sequence that was read, then dropped for its size."""
        for where in [w for w in self.number_text if w.startswith(prefix)]:
            del self.number_text[where]

    def reinterpret_un(self, tag: int, vr: str, pos: int, end: int, path: str, key: str, depth: int) -> dict[str, Any]:
        saved = (self.implicit, self.little)
        self.implicit, self.little = True, True
        try:
            if " or " in vr:
                vr = _resolve_ambiguous(vr, self.pixel_representation)
            if vr == "SQ":
                items, _ = self.sequence(pos, f"{path}{key}/", depth, limit=end)
                return {key: {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}}
            element = self.element(tag, vr, pos, end - pos, path, key)
            return {key: element} if element is not None else {}
        finally:
            self.implicit, self.little = saved

    def sequence(
        self, pos: int, path: str, depth: int, limit: int | None = None, implicit_un: bool = False
    ) -> tuple[list[dict[str, Any]], int]:
        if implicit_un:
            # An undefined-length UN is a sequence encoded in Implicit VR Little Endian (PS3.5 6.2.2).
            saved = (self.implicit, self.little)
            self.implicit, self.little = True, True
            try:
                return self.sequence(pos, path, depth, limit)
            finally:
                self.implicit, self.little = saved
        if depth >= MAX_SEQUENCE_DEPTH:
            raise DicomParseError(
                f"unsupported DICOM data: sequences nested more than {MAX_SEQUENCE_DEPTH} levels deep "
                f"in ({path[:4]},{path[4:8]})"
            )
        items: list[dict[str, Any]] = []
        end = self.end if limit is None else limit
        index = 0
        while pos < end:
            tag, _, length, vpos = self.header(pos)
            if tag == _SEQUENCE_END:
                return items, vpos
            if tag != _ITEM:
                raise DicomParseError(f"malformed DICOM data: expected a sequence item at byte {pos}")
            item_end = end if length == _UNDEFINED else vpos + length
            if item_end > end:
                raise DicomParseError(f"truncated DICOM data: sequence item at byte {pos} runs past the end")
            item, pos = self.dataset(vpos, item_end, f"{path}{index}/", depth + 1)
            if length != _UNDEFINED:
                pos = item_end
            items.append(item)
            index += 1
        if limit is None:
            raise DicomParseError("truncated DICOM data: a sequence has no end")
        return items, pos

    def skip_fragments(self, pos: int) -> int:
        while True:
            tag, _, length, vpos = self.header(pos)
            if tag == _SEQUENCE_END:
                return vpos
            if tag != _ITEM or vpos + length > self.end:
                raise DicomParseError(f"truncated DICOM data: encapsulated pixel data broken at byte {pos}")
            pos = vpos + length

    def element(self, tag: int, vr: str, pos: int, length: int, path: str, key: str) -> dict[str, Any] | None:
        if length == 0 and tag not in PIXEL_DATA_TAGS:
            return {"vr": vr}
        fmt = _NUMBER_FORMATS.get(vr)
        # Bulk data is decided from the length alone, so a large value is never copied.
        if (
            tag in PIXEL_DATA_TAGS
            or vr in _BINARY_VRS
            or (vr in _FLOAT_BINARY_VRS and length > MAX_INLINE_BINARY)
            or (fmt is not None and length // _SIZES[fmt] > MAX_INLINE_NUMBERS)
            or (vr == "AT" and length // 4 > MAX_INLINE_NUMBERS)
        ):
            return {"vr": vr, "BulkDataURI": f"{BULKDATA_PREFIX}{path}{key}"}
        raw = bytes(self.buf[pos : pos + length])
        if vr in _FLOAT_BINARY_VRS:
            if not self.little:
                raw = _swap(raw, 8 if vr in ("OD", "OV") else 4)
            return {"vr": vr, "InlineBinary": base64.b64encode(raw).decode("ascii")}
        order = "<" if self.little else ">"
        if fmt is not None:
            values = list(struct.unpack_from(order + fmt * (length // _SIZES[fmt]), raw))
            if tag == 0x00280103 and values:
                self.pixel_representation = values[0]
            return {"vr": vr, "Value": values}
        if vr == "AT":
            words = struct.unpack_from(order + "H" * (length // 4 * 2), raw)
            return {"vr": vr, "Value": [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, len(words), 2)]}
        return self.string_element(tag, vr, raw, path, key)

    def string_element(self, tag: int, vr: str, raw: bytes, path: str, key: str) -> dict[str, Any]:
        if vr in _PLAIN_VRS and raw.isascii() and b"\\" not in raw and b"\x1b" not in raw and tag != 0x00080005:
            # The common case, a single plain ASCII value (no ISO 2022 escape): no decoding, split or conversion.
            text = raw.decode("ascii").strip(" \x00")
            return {"vr": vr, "Value": [text]} if text else {"vr": vr}
        if vr in _CHARSET_VRS:
            text = _decode(raw, self.encodings, vr == "PN")
        else:
            text = raw.decode("ascii", "replace") if raw.isascii() else raw.decode("latin-1")
        if vr in _TEXT_VRS:
            text = text.rstrip(" \x00")
            return {"vr": vr, "Value": [text]} if text else {"vr": vr}
        parts = text.split("\\")
        if tag == 0x00080005:
            self.encodings = _encodings([p.strip(" \x00") for p in parts])
        values: list[Any]
        if vr == "PN":
            values = [_person_name(p.rstrip(" \x00")) for p in parts]
        elif vr in ("DS", "IS"):
            texts = [p.strip(" \x00") for p in parts]
            values = [_number(t, vr) for t in texts]
            # One comparison covers the common case, numbers written as the JSON writes them.
            if _dumps(values) != ("[" + ",".join(texts) + "]").encode() and not _renders_back(values, texts):
                self.number_text[path + key] = texts
        else:
            values = [p.strip(" \x00") if vr != "UC" else p.rstrip(" \x00") for p in parts]
            values = [v if v != "" else None for v in values]
        if all(v is None for v in values):
            return {"vr": vr}
        return {"vr": vr, "Value": values}


def _resolve_ambiguous(vr: str, pixel_representation: int) -> str:
    if vr.startswith("US or SS"):
        return "SS" if pixel_representation else "US"
    return "US" if vr == "US or OW" else "OW"


def _swap(raw: bytes, width: int) -> bytes:
    out = bytearray(len(raw))
    for i in range(0, len(raw) - width + 1, width):
        out[i : i + width] = raw[i : i + width][::-1]
    return bytes(out)


def _decode(raw: bytes, encodings: list[str], person_name: bool) -> str:
    if raw.isascii() and b"\x1b" not in raw:
        return raw.decode("ascii")
    if len(encodings) == 1 and encodings[0] in ("utf_8", "UTF8"):
        return raw.decode("utf-8", "replace")
    delimiters = {0x5C, 0x5E, 0x3D} if person_name else {0x5C}
    return decode_bytes(raw, encodings, delimiters)


def _person_name(value: str) -> dict[str, str] | None:
    if not value:
        return None
    groups = value.split("=")
    out: dict[str, str] = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        # Trailing empty components carry nothing ("OB^^^^" is "OB").
        group = group.rstrip(" ^")
        if group:
            out[name] = group
    return out or None


# What a JSON number of the stored metadata can hold (orjson): int64 and uint64.
_INT_MIN, _INT_END = -(1 << 63), 1 << 64


def _number(text: str, vr: str) -> int | float | str | None:
    if not text:
        return None
    if vr == "DS" and ("." in text or "e" in text or "E" in text):
        try:
            number = float(text)
        except ValueError:
            return text  # kept as written: the JSON model has no place for a malformed number, and losing it is worse
        return number if number - number == 0 else text  # NaN and infinities are no JSON numbers: kept as written
    try:
        # Exact, where a float is not past 2**53 (a DS may have 16 digits). "inf" and "nan" fail here: kept as text.
        whole = int(text)
    except ValueError:
        return text
    # Beyond 64 bits (which no valid IS or DS reaches), kept as written like a malformed number.
    return whole if _INT_MIN <= whole < _INT_END else text


def _renders_back(values: list[int | float | str | None], texts: list[str]) -> bool:
    """Whether every value, as the stored JSON writes it (orjson) and the tables show it, is its text again."""
    for value, text in zip(values, texts, strict=True):
        if type(value) is float:
            if _dumps(value) != text.encode():
                return False
        elif type(value) is int and str(value) != text:
            return False
    return True  # a string is its text, an empty value (None) is shown as ""


def _file_meta(data: bytes | mmap.mmap) -> tuple[dict[str, Any], int]:
    """The group 0002 file meta elements (always Explicit VR Little Endian) and where the data set starts."""
    reader = _Reader(data, little=True, implicit=False)
    meta: dict[str, Any] = {}
    pos = 132
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        tag, vr, length, vpos = reader.header(pos)
        if length == _UNDEFINED or vpos + length > len(data):
            raise DicomParseError("truncated DICOM data: file meta information is incomplete")
        element = reader.element(tag, vr or dictionary_vr(tag), vpos, length, "", f"{tag:08X}")
        if element is not None:
            meta[f"{tag:08X}"] = element
        pos = vpos + length
    return meta, pos


def _guess_encoding(data: bytes | mmap.mmap, pos: int) -> str:
    """Transfer syntax of a data set with no file meta: explicit if a valid VR follows the first tag,
    big endian if the first group number reads smaller that way (data sets start with low groups)."""
    if len(data) < pos + 8:
        raise DicomParseError("not a DICOM file: too short")
    group_le = struct.unpack_from("<H", data, pos)[0]
    group_be = struct.unpack_from(">H", data, pos)[0]
    explicit = data[pos + 4 : pos + 6].decode("latin-1") in _VALID_VRS
    if explicit and 0 < group_be < group_le and group_be <= 0x0028:
        return EXPLICIT_BE
    # A bare data set starts with a low group (0008, 0010, ...); anything else is not DICOM.
    if group_le == 0 or group_le > 0x0028:
        raise DicomParseError("not a DICOM file: no DICM prefix and no recognisable data elements")
    return EXPLICIT_LE if explicit else IMPLICIT_LE


def _value(metadata: dict[str, Any], key: str) -> Any:
    element = metadata.get(key)
    if element is None:
        return None
    values = element.get("Value")
    return values[0] if values else None


def parse(data: bytes | mmap.mmap) -> ParsedInstance:
    """Parse a Part 10 instance (or a bare data set, as some archives hold) into a ParsedInstance."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        file_meta, start = _file_meta(data)
        transfer_syntax = _value(file_meta, "00020010")
        if not transfer_syntax:
            raise DicomParseError("invalid DICOM file: the file meta information has no TransferSyntaxUID")
    else:
        file_meta, start = {}, 0
        transfer_syntax = _guess_encoding(data, 0)
    buf: bytes | memoryview | mmap.mmap = data
    if transfer_syntax == DEFLATED_LE:
        try:
            buf = data[:start] + zlib.decompress(data[start:], -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise DicomParseError(f"invalid DICOM file: deflated data set cannot be inflated ({exc})") from None
    implicit = transfer_syntax == IMPLICIT_LE
    if start + 6 <= len(buf):
        # Some writers declare one VR encoding and use the other; the first element header tells.
        implicit = bytes(buf[start + 4 : start + 6]).decode("latin-1") not in _VALID_VRS
    reader = _Reader(buf, little=transfer_syntax != EXPLICIT_BE, implicit=implicit)
    try:
        metadata, _ = reader.dataset(start, len(buf), "", 0)
    except struct.error as exc:
        raise DicomParseError(f"truncated DICOM data: {exc}") from None
    study_uid = _value(metadata, "0020000D")
    series_uid = _value(metadata, "0020000E")
    sop_uid = _value(metadata, "00080018")
    missing = [
        name
        for name, uid in (
            ("StudyInstanceUID", study_uid),
            ("SeriesInstanceUID", series_uid),
            ("SOPInstanceUID", sop_uid),
        )
        if not uid
    ]
    if missing:
        raise DicomParseError(f"invalid DICOM instance: missing {', '.join(missing)}")
    frames = _value(metadata, "00280008")
    has_pixels = any(f"{t:08X}" in metadata for t in PIXEL_DATA_TAGS)
    number = _value(metadata, "00200013")
    return ParsedInstance(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        sop_class_uid=_value(metadata, "00080016") or _value(file_meta, "00020002"),
        transfer_syntax_uid=transfer_syntax,
        metadata=metadata,
        number_of_frames=(_as_int(frames) or 1) if has_pixels else 0,
        instance_number=_as_int(number),
        file_meta=file_meta,
        dropped=reader.dropped,
        number_text=reader.number_text,
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _encodings(terms: list[str]) -> list[str]:
    """Python codecs for the terms of Specific Character Set; a term that names no character set (garbage, a NUL,
    a broken file) is left out, and none at all is the default repertoire."""
    known = []
    for term in terms:
        if not term:
            continue
        try:
            known.extend(convert_encodings([term]))
        except (KeyError, ValueError, LookupError):
            continue
    return known or convert_encodings(["ISO_IR 6"])
