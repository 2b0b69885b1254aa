"""The C-STORE hot path's bytes: PDUs made by pynetdicom's own encoder are split into the stores taken here and
the PDUs handed to pynetdicom, and the answers written here decode in pynetdicom as its own C-STORE-RSP."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.uid import generate_uid
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from dicomlake.dimse.lean_store import (
    Abort,
    Forward,
    Splitter,
    Store,
    StoreAnswer,
    StoreRequest,
    decode_command,
    encode_response,
    pdv_items,
    store_request,
)

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CONTEXT = 5


def _store_pdus(dataset: bytes, max_pdu: int = 16_384, message_id: int = 7, **extra: object) -> list[bytes]:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = MR_STORAGE
    request.AffectedSOPInstanceUID = "1.2.3.4.5"
    request.Priority = 0
    for name, value in extra.items():
        setattr(request, name, value)
    request.DataSet = io.BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return _pdus(message, max_pdu)


def _echo_pdus(message_id: int = 3) -> list[bytes]:
    request = C_ECHO()
    request.MessageID = message_id
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    return _pdus(message, 16_384)


def _pdus(message: DIMSEMessage, max_pdu: int) -> list[bytes]:
    out = []
    for primitive in message.encode_msg(CONTEXT, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(pdu.encode())
    return out


def _feed(splitter: Splitter, pdus: list[bytes]) -> list[Store | Forward]:
    return [action for pdu in pdus for action in splitter.feed(pdu[6:])]


def _splitter() -> Splitter:
    return Splitter(lambda request: request.context_id == CONTEXT and request.sop_class_uid == MR_STORAGE)


def _decoded(pdus: list[bytes]) -> DIMSEMessage:
    """What pynetdicom's DIMSE layer makes of PDUs."""
    message = DIMSEMessage()
    for data in pdus:
        pdu = P_DATA_TF()
        pdu.decode(data)
        primitive = pdu.to_primitive()
        assert isinstance(primitive, P_DATA)
        if message.decode_msg(primitive):
            return message
    raise AssertionError("the PDUs end before the message")


def test_a_c_store_rq_in_one_pdu_is_taken_whole() -> None:
    dataset = bytes(range(256)) * 4
    actions = _feed(_splitter(), _store_pdus(dataset))
    assert actions == [Store(StoreRequest(CONTEXT, 7, MR_STORAGE, "1.2.3.4.5"), dataset)]


@pytest.mark.parametrize("max_pdu", [64, 100, 4096])
def test_a_c_store_rq_fragmented_over_many_pdus_is_reassembled(max_pdu: int) -> None:
    dataset = bytes(range(251)) * 97
    pdus = _store_pdus(dataset, max_pdu)
    assert len(pdus) > 2
    actions = _feed(_splitter(), pdus)
    assert actions == [Store(StoreRequest(CONTEXT, 7, MR_STORAGE, "1.2.3.4.5"), dataset)]


def test_a_move_originator_is_still_a_plain_c_store() -> None:
    pdus = _store_pdus(b"\x08\x00\x16\x00", MoveOriginatorApplicationEntityTitle="OLDPACS", MoveOriginatorMessageID=3)
    assert [type(a) for a in _feed(_splitter(), pdus)] == [Store]


def test_other_messages_go_to_pynetdicom_unchanged_and_stores_around_them_are_taken() -> None:
    splitter = _splitter()
    echo = _echo_pdus()
    first = _feed(splitter, _store_pdus(b"one!", message_id=1))
    middle = _feed(splitter, echo)
    last = _feed(splitter, _store_pdus(b"two!", message_id=2))
    assert [a.request.message_id for a in first + last if isinstance(a, Store)] == [1, 2]
    assert middle == [Forward(pdu) for pdu in echo]
    assert not splitter.aborted


def test_a_c_store_this_side_does_not_take_is_handed_over_with_its_data_set() -> None:
    splitter = Splitter(lambda request: False)
    dataset = bytes(range(200)) * 30
    pdus = _store_pdus(dataset, 1024)
    actions = _feed(splitter, pdus)
    assert all(isinstance(a, Forward) for a in actions)
    message = _decoded([a.pdu for a in actions if isinstance(a, Forward)])
    assert isinstance(message, C_STORE_RQ)
    assert message.data_set.getvalue() == dataset
    # The next message is decided on afresh.
    assert not splitter.aborted


def test_pdvs_of_two_messages_in_one_pdu_are_split_between_them() -> None:
    splitter = _splitter()
    store_items = b"".join(pdu[6:] for pdu in _store_pdus(b"data"))
    echo_items = _echo_pdus()[0][6:]
    actions = splitter.feed(store_items + echo_items)
    assert [type(a) for a in actions] == [Store, Forward]
    forwarded = actions[1]
    assert isinstance(forwarded, Forward)
    assert isinstance(_decoded([forwarded.pdu]), C_ECHO_RQ)


def test_a_data_set_fragment_without_a_command_aborts() -> None:
    splitter = _splitter()
    stray = struct.pack(">IBB", 6, CONTEXT, 0x02) + b"abcd"
    assert [type(a) for a in splitter.feed(stray)] == [Abort]
    assert splitter.aborted


def test_a_command_on_another_context_mid_data_set_aborts() -> None:
    splitter = _splitter()
    pdus = _store_pdus(bytes(5000), 1024)
    assert _feed(splitter, pdus[:3]) == []
    intruder = struct.pack(">IBB", 6, CONTEXT + 2, 0x03) + b"abcd"
    assert [type(a) for a in splitter.feed(intruder)] == [Abort]


def test_stores_answered_before_a_violation_in_the_same_pdu_are_still_acted_on() -> None:
    splitter = _splitter()
    store_items = b"".join(pdu[6:] for pdu in _store_pdus(b"data"))
    stray = struct.pack(">IBB", 6, CONTEXT, 0x02) + b"abcd"
    assert [type(a) for a in splitter.feed(store_items + stray)] == [Store, Abort]


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00",  # shorter than an item header
        struct.pack(">IBB", 1, 1, 3),  # an item shorter than its own header
        struct.pack(">IBB", 99, 1, 3) + b"ab",  # an item longer than the PDU
        b"",  # no item at all
    ],
)
def test_a_malformed_pdu_aborts(body: bytes) -> None:
    splitter = _splitter()
    assert [type(a) for a in splitter.feed(body)] == [Abort]
    assert splitter.aborted


@pytest.mark.parametrize(
    "command",
    [
        b"\x08\x00\x10\x00\xff\xff\xff\x7fxx",  # group 0008, a length past the end
        struct.pack("<HHIH", 0, 0x0100, 2, 0x9999) + struct.pack("<HHIH", 0, 0x0800, 2, 0x0101),  # no such command
        struct.pack("<HHIH", 0, 0x0100, 2, 0x0030),  # C-ECHO-RQ without a Command Data Set Type
        struct.pack("<HHIH", 0, 0x0800, 2, 0x0101) + struct.pack("<HHIH", 0, 0x0100, 2, 0x0030),  # out of order
    ],
)
def test_a_command_set_pynetdicom_could_not_decode_aborts(command: bytes) -> None:
    item = struct.pack(">IBB", 2 + len(command), CONTEXT, 0x03) + command
    assert [type(a) for a in _splitter().feed(item)] == [Abort]


def test_decode_command_reads_pynetdicoms_encoding() -> None:
    pdus = _store_pdus(b"")
    items = pdv_items(pdus[0][6:])
    assert items is not None
    command = decode_command(items[0][6:])
    assert command is not None
    request = store_request(CONTEXT, command)
    assert request == StoreRequest(CONTEXT, 7, MR_STORAGE, "1.2.3.4.5")


def test_an_unknown_element_makes_a_c_store_rq_unusual() -> None:
    command = decode_command(pdv_items(_store_pdus(b"")[0][6:])[0][6:])  # type: ignore[index]
    assert command is not None
    command[0x0600] = b"\x01\x00"  # an element no C-STORE-RQ has
    assert store_request(CONTEXT, command) is None


@pytest.mark.parametrize(
    "answer",
    [StoreAnswer(0x0000), StoreAnswer(0xC000, "a reason"), StoreAnswer(0x0110, "odd" * 40)],
)
def test_the_answer_is_the_c_store_rsp_pynetdicom_decodes(answer: StoreAnswer) -> None:
    sop_instance = generate_uid()
    request = StoreRequest(CONTEXT, 65535, MR_STORAGE, sop_instance)
    message = _decoded([encode_response(request, answer)])
    assert message.context_id == CONTEXT
    command = message.command_set
    assert command.CommandField == 0x8001
    assert command.MessageIDBeingRespondedTo == 65535
    assert command.AffectedSOPClassUID == MR_STORAGE
    assert command.AffectedSOPInstanceUID == sop_instance
    assert command.CommandDataSetType == 0x0101
    assert command.Status == answer.status
    if answer.error_comment:
        assert command.ErrorComment == answer.error_comment[:64]
    else:
        assert "ErrorComment" not in command
    # The group length counts the elements after it.
    encoded = encode_response(request, answer)[12:]
    assert struct.unpack_from("<I", encoded, 8)[0] == len(encoded) - 12
