"""Hostile input, tried for real: random identifiers in any character set through query building
(hypothesis, no sockets), and random, truncated and oversized PDUs, huge identifiers and deep
sequences over the network. Whatever comes in, the answer is a response or a failure status, or
the association ends, and the server goes on answering others."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from fsqr import status
from fsqr.errors import InvalidIdentifier
from fsqr.index import Index
from fsqr.keys import Model
from fsqr.query import find, parse_identifier
from fsqr.scan import HeaderCache
from fsqr.server import Server
from tests.conftest import index_of
from tests.helpers import wait_until

FIND = StudyRootQueryRetrieveInformationModelFind

# -- identifiers as a peer may send them: raw bytes, decoded by pydicom on demand ---------------

CHARSETS = [
    b"",
    b"ISO_IR 100",
    b"ISO_IR 192",
    b"GB18030",
    b"ISO 2022 IR 87",
    b"\\ISO 2022 IR 87",
    b"ISO_IR 144",
    b"ISO_IR 13\\ISO 2022 IR 87",
    b"BOGUS",
    b"\xff\xfe",
]
TAGS = [
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00080050,  # AccessionNumber
    0x00080060,  # Modality
    0x00080061,  # ModalitiesInStudy
    0x00080018,  # SOPInstanceUID
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00200013,  # InstanceNumber
    0x00201208,  # NumberOfStudyRelatedInstances
    0x00180087,  # MagneticFieldStrength: read from headers on demand
    0x00081110,  # ReferencedStudySequence: a sequence of random bytes
    0x00091010,  # a private tag
    0x00191000,  # an unknown one
]
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)
MEANINGFUL = st.sampled_from(["*", "?", "", "-", "20240101-", "-2023", "1.2.3\\1.2.4", "DOE^*"])
VALUE = st.one_of(
    MEANINGFUL.map(lambda t: t.encode()),
    TEXT.map(lambda t: t.encode("utf-8")),
    TEXT.map(lambda t: t.encode("gb18030", "replace")),
    TEXT.map(lambda t: t.encode("iso2022_jp", "replace")),
    st.binary(max_size=40),
)
LEVEL = st.one_of(
    st.sampled_from([b"PATIENT", b"STUDY ", b"SERIES", b"IMAGE ", b"", b"WORKLIST"]),
    st.binary(max_size=10),
)


def element(tag: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element (PS3.5 7.1.3), padded to an even length."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


@st.composite
def raw_identifiers(draw: st.DrawFn) -> Dataset:
    elements = {0x00080005: draw(st.sampled_from(CHARSETS)), 0x00080052: draw(LEVEL)}
    for tag in draw(st.lists(st.sampled_from(TAGS), max_size=8, unique=True)):
        elements[tag] = draw(VALUE)
    stream = b"".join(element(tag, elements[tag]) for tag in sorted(elements))
    return read_dataset(DicomBytesIO(stream), is_implicit_VR=True, is_little_endian=True)


@pytest.fixture(scope="module")
def index(sample_tree: Path) -> Index:
    return index_of(sample_tree)


# pydicom warns of an unknown or undecodable character set and goes on with a default: the
# server logs that; here only exceptions count.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identifier=raw_identifiers(), model=st.sampled_from(list(Model)), relational=st.booleans())
def test_query_building_raises_nothing_but_invalid_identifier(
    index: Index, identifier: Dataset, model: Model, relational: bool
) -> None:
    """Each answer can also be encoded, as pynetdicom must to send it."""
    try:
        query = parse_identifier(identifier, model, relational=relational)
        answers = list(find(index, query, "FSQR", HeaderCache()))
    except InvalidIdentifier as exc:
        assert exc.status == status.IDENTIFIER_DOES_NOT_MATCH
        return
    for answer in answers:
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, True
        write_dataset(out, answer)


# -- over the network ---------------------------------------------------------------------------


def echo_works(server: Server) -> bool:
    """A C-ECHO from a well-behaved client succeeds, within a few seconds: the associations the
    hostile peer left may take a moment to wind down, and while they do the server may refuse
    new ones for its association limit; it must not stop answering."""
    return wait_until(lambda: _echo_once(server), timeout=15, every=0.2)


def _echo_once(server: Server) -> bool:
    ae = AE(ae_title="WITNESS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR")
    if not assoc.is_established:
        return False
    answer = assoc.send_c_echo()
    assoc.release()
    return int(answer.Status) == status.SUCCESS


@pytest.fixture(scope="module")
def association_request() -> bytes:
    """The A-ASSOCIATE-RQ PDU a pynetdicom SCU sends, as caught by a socket that answers nothing."""
    caught: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def catch() -> None:
            peer, _ = listener.accept()
            with peer:
                header = peer.recv(6, socket.MSG_WAITALL)
                length = struct.unpack(">L", header[2:])[0]
                caught.append(header + peer.recv(length, socket.MSG_WAITALL))

        thread = threading.Thread(target=catch)
        thread.start()
        ae = AE(ae_title="HOSTILE")
        ae.acse_timeout = 5
        ae.add_requested_context(FIND)
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", listener.getsockname()[1], ae_title="FSQR")
        thread.join(10)
        assert not assoc.is_established
    return caught[0]


def send_and_wait_for_close(port: int, data: bytes, *, stream: int = 0) -> None:
    """Send `data` (then `stream` zero bytes), and wait until fsqr ends the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            for _ in range(stream // 65536):
                sock.sendall(bytes(65536))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # fsqr hung up on us: what we wanted


def test_random_pdus_end_their_connection_and_the_server_goes_on(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, timeouts={"acse": 2})
    rng = random.Random(6)  # fixed: a failure can be replayed
    for _ in range(40):
        pdu_type = rng.choice([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x00, 0xFF])
        body = rng.randbytes(rng.randrange(0, 300))
        length = rng.choice([len(body), len(body) + 10, max(len(body) - 3, 0)])
        send_and_wait_for_close(server.port, struct.pack(">BBL", pdu_type, 0, length) + body)
    assert echo_works(server)


def test_truncated_association_requests_and_the_server_goes_on(
    sample_tree: Path, start_server: Callable[..., Server], association_request: bytes
) -> None:
    server = start_server(sample_tree, timeouts={"acse": 2})
    size = len(association_request)
    for cut in sorted({1, 5, 6, 7, 10, 74, size // 2, size - 1}):
        send_and_wait_for_close(server.port, association_request[:cut])
    # a request whose items are garbage, but whose length is right
    rng = random.Random(7)
    for _ in range(10):
        mangled = bytearray(association_request)
        for _ in range(8):
            mangled[rng.randrange(74, size)] = rng.randrange(256)
        send_and_wait_for_close(server.port, bytes(mangled))
    assert echo_works(server)


def test_a_pdu_announcing_gigabytes_is_refused_before_it_fills_memory(
    sample_tree: Path, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(sample_tree)
    header = struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0)
    with caplog.at_level("WARNING", logger="fsqr.handlers"):
        send_and_wait_for_close(server.port, header, stream=4 << 20)
    assert any("announced a PDU of 4294967280 bytes" in r.getMessage() for r in caplog.records)
    assert echo_works(server)


def deep_sequence(depth: int) -> Dataset:
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedStudySequence = [inner]
        inner = outer
    return inner


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientName", "A" * 60000 + "*"),  # far beyond PN's 64 characters per group
        ("StudyInstanceUID", "\\".join(f"1.2.{i}" for i in range(5000))),  # a huge UID list
        ("PatientName", "山田^太郎"),
        ("PatientName", "ÄÖÜ*"),
    ],
    ids=["huge-name", "huge-uid-list", "japanese", "latin1"],
)
def test_odd_but_well_formed_queries_are_answered(
    sample_tree: Path, start_server: Callable[..., Server], keyword: str, value: str
) -> None:
    server = start_server(sample_tree, max_pdu=0)
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR")
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.QueryRetrieveLevel = "STUDY"
    with warnings.catch_warnings():  # pydicom warns the value is too long: it is the point
        warnings.simplefilter("ignore")
        setattr(query, keyword, value)
    query.StudyInstanceUID = query.get("StudyInstanceUID", "")
    responses = list(assoc.send_c_find(query, FIND))
    assoc.release()
    assert responses[-1][0].Status in (status.SUCCESS, status.IDENTIFIER_DOES_NOT_MATCH)
    assert echo_works(server)


def test_a_deeply_nested_sequence_is_answered_or_refused(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, max_pdu=0)
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR")
    query = deep_sequence(200)
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    responses: list[Any] = list(assoc.send_c_find(query, FIND))
    if assoc.is_established:
        assoc.release()
    final = responses[-1][0]
    assert final.Status in (status.SUCCESS, status.IDENTIFIER_DOES_NOT_MATCH), final
    assert echo_works(server)


def test_invalid_bytes_in_a_name_over_the_network(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """A PatientName that is not valid in its declared character set (UTF-8 here)."""
    server = start_server(sample_tree)
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR")
    raw = b"".join(
        [
            element(0x00080005, b"ISO_IR 192"),
            element(0x00080052, b"STUDY "),
            element(0x00100010, b"\xff\xfe\xc3(*"),
            element(0x0020000D, b""),
        ]
    )
    query = read_dataset(DicomBytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    with warnings.catch_warnings():  # pynetdicom decodes it to log it, and pydicom warns
        warnings.simplefilter("ignore")
        responses = list(assoc.send_c_find(query, FIND))
    assoc.release()
    assert responses[-1][0].Status in (status.SUCCESS, status.IDENTIFIER_DOES_NOT_MATCH)
    assert echo_works(server)


def test_a_peer_that_stops_in_the_middle_of_a_pdu_is_cut_off(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """Slowloris: pynetdicom alone would wait for the rest of the PDU forever."""
    server = start_server(sample_tree, timeouts={"acse": 0.5, "network": 1})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\x01\x00\x00")  # three bytes of a six-byte PDU header, then silence
        assert sock.recv(1) == b""  # closed by fsqr, well before our 10 s
    assert echo_works(server)


def test_a_connection_closed_before_any_request_frees_its_association_at_once(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """A port check (connect, close): pynetdicom alone kept the association's thread waiting
    its ACSE timeout (30 s) for a request that could not come."""
    server = start_server(sample_tree)
    assert server._listener is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=10):
        assert wait_until(lambda: len(server._listener.active_associations) == 1)
    assert wait_until(lambda: not server._listener.active_associations, timeout=10)


def test_stopping_with_a_silent_connection_open_ends_it_cleanly(sample_tree: Path) -> None:
    """A peer connected but silent when the server stops: its connection is closed, and its
    thread ends within the stop (an abort there made pynetdicom raise in the DUL thread)."""
    server = Server(root=sample_tree).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert wait_until(lambda: len(server._listener.active_associations) == 1)
        (assoc,) = server._listener.active_associations
        server.stop()
        assert not assoc.is_alive() and not assoc.dul.is_alive()
        assert sock.recv(1) == b""  # closed by fsqr


# -- requests pynetdicom cannot take: aborted at once, one log line, nothing left open -------

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR = "1.2.840.10008.1.2"


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _context(context_id: int, abstract: str, syntaxes: tuple[str, ...] = (IMPLICIT_VR,)) -> bytes:
    return _item(
        0x20,
        bytes([context_id, 0, 0, 0])
        + _item(0x30, abstract.encode())
        + b"".join(_item(0x40, ts.encode()) for ts in syntaxes),
    )


def _association_request(*contexts: bytes, maximum_length: int | None = 16382) -> bytes:
    length = b"" if maximum_length is None else _item(0x51, struct.pack(">L", maximum_length))
    user = _item(0x50, length + _item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + b"FSQR".ljust(16)
        + b"HOSTILE".ljust(16)
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + b"".join(contexts)
        + user
    )
    return struct.pack(">BBL", 1, 0, len(body)) + body


def _implicit_vr(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def _command(context_id: int = 1, data_set: Dataset | None = None, **keys: Any) -> bytes:
    """A command set in Implicit VR Little Endian with its group length, and `data_set` if
    given, as one P-DATA-TF PDU on presentation context `context_id`."""
    command = Dataset()
    for keyword, value in keys.items():
        setattr(command, keyword, value)
    body = _implicit_vr(command)
    encoded = struct.pack("<HHLL", 0, 0, 4, len(body)) + body
    pdvs = struct.pack(">LBB", len(encoded) + 2, context_id, 0x03) + encoded
    if data_set is not None:
        data = _implicit_vr(data_set)
        pdvs += struct.pack(">LBB", len(data) + 2, context_id, 0x02) + data
    return struct.pack(">BBL", 4, 0, len(pdvs)) + pdvs


def _read_pdu(sock: socket.socket) -> bytes:
    header = sock.recv(6, socket.MSG_WAITALL)
    if len(header) < 6:
        return header
    return header + sock.recv(struct.unpack(">L", header[2:])[0], socket.MSG_WAITALL)


@pytest.mark.parametrize(
    "context",
    [_context(1, VERIFICATION, ()), _context(2, VERIFICATION)],
    ids=["no-transfer-syntax", "even-context-id"],
)
def test_a_request_pynetdicom_cannot_negotiate_is_aborted_at_once(
    sample_tree: Path,
    start_server: Callable[..., Server],
    caplog: pytest.LogCaptureFixture,
    context: bytes,
) -> None:
    """pynetdicom raised on it, in a thread that died: the peer had no answer until its own
    timeout, and a context without a transfer syntax held the connection and a thread for as
    long as the peer kept it open, outside the association limit."""
    server = start_server(sample_tree)
    assert server._listener is not None
    with (
        caplog.at_level("INFO", logger="fsqr"),
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        sock.sendall(_association_request(context))
        answer = _read_pdu(sock)  # within the 5 s: fsqr's ACSE timeout is 30 s
        assert answer[:1] == b"\x07", answer  # A-ABORT
        assert wait_until(lambda: not server._listener.active_associations, timeout=3)
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("association from 127.0.0.1") and "aborted" in m for m in said)
    # and its end is told as it was, not as a connection closed before any request
    assert any("ended: aborted by fsqr" in m for m in said), said
    assert echo_works(server)


def test_many_cancels_in_a_row_leave_the_association_serving(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """pynetdicom keeps ten C-CANCELs aside and queued the eleventh as a request, which killed
    the association's thread and left its connection open outside the association limit."""
    server = start_server(sample_tree)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(_association_request(_context(1, VERIFICATION)))
        assert _read_pdu(sock)[:1] == b"\x02"  # A-ASSOCIATE-AC
        for message_id in range(12):
            sock.sendall(
                _command(
                    CommandField=0x0FFF,
                    MessageIDBeingRespondedTo=message_id,
                    CommandDataSetType=0x0101,
                )
            )
        sock.sendall(
            _command(
                AffectedSOPClassUID=VERIFICATION,
                CommandField=0x0030,
                MessageID=99,
                CommandDataSetType=0x0101,
            )
        )
        response = _read_pdu(sock)
        assert response[:1] == b"\x04", response  # P-DATA-TF: the C-ECHO-RSP
        assert b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x80" in response  # CommandField 8030


def test_a_request_sent_a_byte_at_a_time_is_cut_off_after_the_acse_timeout(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """Slowloris: every byte reset the wait, so no timeout ever came, and a few such peers
    held every association fsqr may have. The A-ASSOCIATE-RQ must come whole in time."""
    server = start_server(sample_tree, timeouts={"acse": 1, "network": 5})
    request = _association_request(_context(1, VERIFICATION))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # reset by fsqr: what we wanted
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
    assert time.monotonic() - started < 4  # the whole request would take 7 s at this pace
    assert echo_works(server)


STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _status_of(response: bytes) -> int:
    """The Status (0000,0900) of the command set in a P-DATA-TF PDU fsqr sent."""
    at = response.index(b"\x00\x00\x00\x09\x02\x00\x00\x00")
    return int(struct.unpack("<H", response[at + 8 : at + 10])[0])


@pytest.mark.parametrize(
    ("context_id", "request_keys", "expected"),
    [
        (
            3,
            {"AffectedSOPClassUID": STUDY_ROOT_MOVE, "CommandField": 0x0021, "Priority": 0},
            0xA801,
        ),
        (5, {"AffectedSOPClassUID": CT_IMAGE, "CommandField": 0x0001, "Priority": 0}, 0xC000),
    ],
    ids=["c-move-without-destination", "c-store-without-instance-uid"],
)
def test_a_request_missing_a_required_element_gets_a_failure_status(
    sample_tree: Path,
    start_server: Callable[..., Server],
    context_id: int,
    request_keys: dict[str, Any],
    expected: int,
) -> None:
    """pynetdicom only logged "unexpected message" and answered nothing: the SCU waited out
    its own timeout. A failure status saying what is missing (PS3.7 9.3), and the association
    goes on."""
    server = start_server(sample_tree)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            _association_request(
                _context(1, VERIFICATION), _context(3, STUDY_ROOT_MOVE), _context(5, CT_IMAGE)
            )
        )
        assert _read_pdu(sock)[:1] == b"\x02"  # A-ASSOCIATE-AC
        sock.sendall(
            _command(context_id, identifier, MessageID=7, CommandDataSetType=0x0001, **request_keys)
        )
        response = _read_pdu(sock)
        assert response[:1] == b"\x04", response
        assert _status_of(response) == expected
        sock.sendall(
            _command(
                AffectedSOPClassUID=VERIFICATION,
                CommandField=0x0030,
                MessageID=8,
                CommandDataSetType=0x0101,
            )
        )
        assert _status_of(_read_pdu(sock)) == 0x0000  # the association goes on


def test_a_request_that_cannot_be_answered_is_aborted_at_once(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """A C-ECHO without a Message ID: nothing to answer it with. A-ABORT, not silence."""
    server = start_server(sample_tree)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(_association_request(_context(1, VERIFICATION)))
        assert _read_pdu(sock)[:1] == b"\x02"
        sock.sendall(
            _command(
                AffectedSOPClassUID=VERIFICATION, CommandField=0x0030, CommandDataSetType=0x0101
            )
        )
        assert _read_pdu(sock)[:1] == b"\x07"  # A-ABORT


@pytest.mark.parametrize("maximum_length", [None, 1, 5], ids=["none", "1-byte", "5-bytes"])
def test_a_request_without_a_workable_maximum_length_is_rejected(
    sample_tree: Path, start_server: Callable[..., Server], maximum_length: int | None
) -> None:
    """PS3.8 D.1: every request says how long a PDU it takes. pynetdicom accepted these and
    aborted at the first response, which fsqr had logged as sent."""
    server = start_server(sample_tree)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        request = _association_request(_context(1, VERIFICATION), maximum_length=maximum_length)
        sock.sendall(request)
        assert _read_pdu(sock)[:1] == b"\x03"  # A-ASSOCIATE-RJ
    assert echo_works(server)


def test_an_unreadable_request_frees_its_association_once_the_peer_hangs_up(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """An A-ASSOCIATE-RQ pynetdicom cannot decode is aborted (PS3.8 9.2, AA-1); once the peer
    closes, the association's thread must end, not wait its ACSE timeout (30 s) for a request
    that cannot come, holding a place of the association limit and delaying a stop."""
    server = start_server(sample_tree)
    assert server._listener is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x00\x10" + b"x" * 16)
        assert _read_pdu(sock)[:1] == b"\x07"  # A-ABORT
    assert wait_until(lambda: not server._listener.active_associations, timeout=3)
