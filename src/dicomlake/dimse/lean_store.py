"""The hot path of C-STORE: on an established association, a plain C-STORE-RQ is read, stored and answered in the
association's DUL thread, and every other PDU goes to pynetdicom exactly as it arrived.

pynetdicom spends ~2 ms of Python on each C-STORE before and after the store itself: decoding the P-DATA-TF
into objects, its state machine, reassembling the DIMSE message, a hand-over to the association thread, the
service class and event dispatch, encoding the answer and a hand-over back to be sent. A modality sends its
next instance only when the last one is answered, so that time is paid once per instance on each association.
The command set of a C-STORE-RQ is small and fixed (implicit VR little endian, group 0000, PS3.7 section 9.3.1)
and its answer is seven elements, so here they are read and written directly.

`Splitter` decides per DIMSE message, from its command set alone: a C-STORE-RQ with the usual elements, on an
accepted context of the same SOP class, is taken; any other message (C-ECHO, C-FIND, C-MOVE, C-GET, N-ACTION,
C-CANCEL, the C-STORE-RSPs of C-GET sub-operations) is handed to pynetdicom unchanged, PDV items and all. What
no conforming peer sends (PDV items that do not fill their PDU, a command set that cannot be decoded, fragments
of two messages interleaved) aborts the association, as pynetdicom aborts on a PDU it cannot decode; handed to
pynetdicom, an undecodable command set would kill its DUL thread with a traceback. Negotiation, release, abort
and every other PDU never come here."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum, auto
from itertools import groupby

# PS3.8 section 9.3.5.1: bit 0 of a PDV's message control header is set for a command, bit 1 on its last fragment.
COMMAND, LAST = 0x01, 0x02
P_DATA_TF = 0x04
# PS3.7 section 9.3.1.2 and E.1: the elements of a C-STORE-RQ's and C-STORE-RSP's command sets.
GROUP_LENGTH, AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO = 0x0000, 0x0002, 0x0100, 0x0110, 0x0120
PRIORITY, DATA_SET_TYPE, STATUS, ERROR_COMMENT, AFFECTED_SOP_INSTANCE = 0x0700, 0x0800, 0x0900, 0x0902, 0x1000
MOVE_ORIGINATOR_AE, MOVE_ORIGINATOR_ID = 0x1030, 0x1031
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
# PS3.7 E.1: the command fields of C-STORE, C-GET, C-FIND, C-MOVE, C-ECHO, N-EVENT-REPORT, N-GET, N-SET,
# N-ACTION, N-CREATE, N-DELETE (requests and responses) and C-CANCEL: pynetdicom fails on any other.
_REQUESTS = (0x0001, 0x0010, 0x0020, 0x0021, 0x0030, 0x0100, 0x0110, 0x0120, 0x0130, 0x0140, 0x0150)
COMMAND_FIELDS = frozenset((*_REQUESTS, *(r | 0x8000 for r in _REQUESTS), 0x0FFF))
NO_DATA_SET = 0x0101
_STORE_ELEMENTS = frozenset(
    (
        GROUP_LENGTH,
        AFFECTED_SOP_CLASS,
        COMMAND_FIELD,
        MESSAGE_ID,
        PRIORITY,
        DATA_SET_TYPE,
        AFFECTED_SOP_INSTANCE,
        MOVE_ORIGINATOR_AE,
        MOVE_ORIGINATOR_ID,
    )
)
_TAG = struct.Struct("<HHI")  # group, element, value length: implicit VR little endian
_ITEM = struct.Struct(">IBB")  # PDV item length, presentation context ID, message control header
_PDU = struct.Struct(">BBI")  # PDU type, reserved, length
_US = struct.Struct("<H")


@dataclass(frozen=True)
class StoreRequest:
    """What a C-STORE-RQ asks, as far as storing and answering it needs."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class StoreAnswer:
    status: int
    error_comment: str | None = None


@dataclass(frozen=True)
class Store:
    """A C-STORE-RQ received whole: store `dataset` (the encoded data set, as sent) and answer it."""

    request: StoreRequest
    dataset: bytes


@dataclass(frozen=True)
class Abort:
    """The peer sent what no conforming peer sends (why): the association is to be aborted, as pynetdicom aborts
    on a PDU it cannot decode."""

    why: str


@dataclass(frozen=True)
class Forward:
    """A P-DATA-TF PDU for pynetdicom."""

    pdu: bytes


class _Mode(Enum):
    COMMAND = auto()  # between messages, or in the command set of one: the next item is a command fragment
    STORE = auto()  # in the data set of a C-STORE-RQ taken here
    PASS = auto()  # in the data set of a message handed to pynetdicom
    ABORTED = auto()  # the peer broke the protocol: nothing more is read here


def pdv_items(body: bytes | memoryview) -> list[memoryview] | None:
    """Each PDV item of a P-DATA-TF's body (after its 6-byte header), whole; None unless the items fill it exactly."""
    view = memoryview(body)
    items = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < _ITEM.size:
            return None
        length = _ITEM.unpack_from(view, offset)[0]
        if length < 2 or offset + 4 + length > len(view):
            return None
        items.append(view[offset : offset + 4 + length])
        offset += 4 + length
    return items if items else None


def decode_command(data: bytes | memoryview) -> dict[int, bytes] | None:
    """The elements of an implicit VR little endian command set by element number; None unless each is of group
    0000, in ascending order, and the elements fill the data exactly."""
    view = memoryview(data)
    elements: dict[int, bytes] = {}
    offset = 0
    last = -1
    while offset < len(view):
        if len(view) - offset < _TAG.size:
            return None
        group, element, length = _TAG.unpack_from(view, offset)
        offset += _TAG.size
        if group != 0 or element <= last or offset + length > len(view):
            return None
        elements[element] = bytes(view[offset : offset + length])
        offset += length
        last = element
    return elements


def store_request(context_id: int, command: dict[int, bytes]) -> StoreRequest | None:
    """The C-STORE-RQ a command set holds; None for any other command or an unusual C-STORE-RQ."""
    if not command.keys() <= _STORE_ELEMENTS:
        return None
    field, message_id, data_set_type = (_us(command.get(e)) for e in (COMMAND_FIELD, MESSAGE_ID, DATA_SET_TYPE))
    if field != C_STORE_RQ or message_id is None or data_set_type is None or data_set_type == NO_DATA_SET:
        return None
    sop_class, sop_instance = _uid(command.get(AFFECTED_SOP_CLASS)), _uid(command.get(AFFECTED_SOP_INSTANCE))
    if not sop_class or not sop_instance:
        return None
    return StoreRequest(context_id, message_id, sop_class, sop_instance)


def command_field(command: dict[int, bytes]) -> int | None:
    return _us(command.get(COMMAND_FIELD))


def has_data_set(command: dict[int, bytes]) -> bool | None:
    """Whether a data set follows a command set (PS3.7 E.1: any Command Data Set Type but 0101H); None if unsaid."""
    data_set_type = _us(command.get(DATA_SET_TYPE))
    return None if data_set_type is None else data_set_type != NO_DATA_SET


def encode_response(request: StoreRequest, answer: StoreAnswer) -> bytes:
    """The C-STORE-RSP to `request`, as one P-DATA-TF PDU (one PDV, the whole command set)."""
    elements = [
        _element(AFFECTED_SOP_CLASS, _padded_uid(request.sop_class_uid)),
        _element(COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        _element(RESPONDED_TO, _US.pack(request.message_id)),
        _element(DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        _element(STATUS, _US.pack(answer.status)),
    ]
    if answer.error_comment:
        comment = answer.error_comment[:64].encode("ascii", "replace")  # LO: 64 characters
        elements.append(_element(ERROR_COMMENT, comment + b" " * (len(comment) % 2)))
    elements.append(_element(AFFECTED_SOP_INSTANCE, _padded_uid(request.sop_instance_uid)))
    body = b"".join(elements)
    command = _element(GROUP_LENGTH, struct.pack("<I", len(body))) + body
    item = _ITEM.pack(2 + len(command), request.context_id, COMMAND | LAST) + command
    return _PDU.pack(P_DATA_TF, 0, len(item)) + item


class Splitter:
    """The P-DATA-TF PDUs of one association in, `Store`, `Forward` and `Abort` out, in the order to act on them.

    `accepts` says whether a C-STORE-RQ may be taken here (its context is accepted, for its SOP class). The items of
    a message are held until its command set is complete and decided on; a message handed over is handed over
    item by item as it arrives, grouped as its PDUs grouped them."""

    def __init__(self, accepts: Callable[[StoreRequest], bool]) -> None:
        self._accepts = accepts
        self._mode = _Mode.COMMAND
        self._held: list[tuple[int, memoryview]] = []  # (number of the PDU it came in, PDV item) of this message
        self._context_id = -1
        self._request: StoreRequest | None = None
        self._command_items = 0  # how many of the held items are the command set's
        self._pdus = 0

    @property
    def aborted(self) -> bool:
        return self._mode is _Mode.ABORTED

    def feed(self, body: bytes | memoryview) -> list[Store | Forward | Abort]:
        """Act on one P-DATA-TF PDU, given by its body (the bytes after its 6-byte header)."""
        self._pdus += 1
        items = pdv_items(body) if self._mode is not _Mode.ABORTED else None
        if items is None:
            return self._abort([], "a P-DATA-TF whose PDV items do not fill it")
        out: list[Store | Forward | Abort] = []
        passing: list[memoryview] = []  # items of this PDU handed over, not yet sent as a PDU
        for item in items:
            _, context_id, control = _ITEM.unpack_from(item)
            if self._mode is _Mode.PASS:
                if control & COMMAND or context_id != self._context_id:
                    return self._abort(out, "a command, or another context, in the middle of a data set")
                passing.append(item)
                if control & LAST:
                    self._mode = _Mode.COMMAND
                continue
            if passing:
                out.append(_forward(passing))
                passing = []
            if self._mode is _Mode.STORE:
                if control & COMMAND or context_id != self._context_id:
                    return self._abort(out, "a command, or another context, in the middle of a data set")
                self._held.append((self._pdus, item))
                if control & LAST:
                    assert self._request is not None  # set on entering STORE
                    dataset = b"".join(held[_ITEM.size :] for _, held in self._held[self._command_items :])
                    out.append(Store(self._request, dataset))
                    self._next_message()
                continue
            # COMMAND: a fragment of the command set of the next message.
            if not control & COMMAND or (self._held and context_id != self._context_id):
                return self._abort(out, "a data set fragment, or another context, in the middle of a command set")
            self._context_id = context_id
            self._held.append((self._pdus, item))
            if not control & LAST:
                continue
            command = decode_command(b"".join(held[_ITEM.size :] for _, held in self._held))
            if command is None or command_field(command) not in COMMAND_FIELDS:
                return self._abort(out, "a command set that cannot be decoded")
            request = store_request(context_id, command)
            if request is not None and self._accepts(request):
                self._request = request
                self._command_items = len(self._held)
                self._mode = _Mode.STORE
                continue
            follows = has_data_set(command)
            if follows is None:
                return self._abort(out, "a command set without its Command Data Set Type")
            out.extend(self._release_held())
            if follows:
                self._mode = _Mode.PASS
            else:
                self._next_message()
        if passing:
            out.append(_forward(passing))
        return out

    def _next_message(self) -> None:
        self._mode = _Mode.COMMAND
        self._held = []
        self._request = None
        self._command_items = 0

    def _release_held(self) -> Iterator[Forward]:
        held, self._held = self._held, []
        for _, group in groupby(held, key=lambda pair: pair[0]):
            yield _forward([item for _, item in group])

    def _abort(self, out: list[Store | Forward | Abort], why: str) -> list[Store | Forward | Abort]:
        self._mode = _Mode.ABORTED
        self._held = []
        return [*out, Abort(why)]


def _forward(items: list[memoryview]) -> Forward:
    body = b"".join(items)
    return Forward(_PDU.pack(P_DATA_TF, 0, len(body)) + body)


def _element(element: int, value: bytes) -> bytes:
    return _TAG.pack(0, element, len(value)) + value


def _padded_uid(uid: str) -> bytes:
    data = uid.encode("ascii")
    return data + b"\0" * (len(data) % 2)


def _us(value: bytes | None) -> int | None:
    return _US.unpack(value)[0] if value is not None and len(value) == 2 else None


def _uid(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        text = value.decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return None
    return text or None
