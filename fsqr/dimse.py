"""DIMSE below pynetdicom's API, where fsqr needs it: TCP_NODELAY on every socket, the command
sets of the small messages fsqr encodes itself and sends with their data set in one PDU, C-STORE
responses read as they arrive, a C-FIND that keeps pace with the network, C-CANCEL seen the
moment it is decoded, and --explain's account of each association's negotiation. handlers.py
and links.py build on it; nothing here decides what to answer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from fsqr import explain, status

log = logging.getLogger(__name__)


def caller(assoc: Any) -> str:
    """`AE@host:port` of the peer that requested the association, for log lines."""
    peer = assoc.requestor
    return f"{peer.ae_title.strip()}@{peer.address}:{peer.port}"


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN: no Nagle, and quick ACKs, on every socket fsqr accepts or opens.

    DIMSE is request/response: with Nagle on, each small message waits for the peer's delayed
    ACK, 40-90 ms on loopback, which dwarfs everything else a query costs.
    """
    transport = event.assoc.dul.socket
    sock = transport.socket
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_QUICKACK"):
        # A peer that keeps Nagle on (pynetdicom and DCMTK do by default) holds back the second
        # PDU of a request until our ACK of the first; Linux delays that ACK by up to 40 ms.
        # QUICKACK makes the next ACK immediate and the kernel clears it again, so re-arm it
        # after every read.
        read = transport.recv

        def recv_and_ack(nr_bytes: int) -> bytearray:
            data: bytearray = read(nr_bytes)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            return data

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        transport.recv = recv_and_ack


# -- small messages, one PDU each ----------------------------------------------------------
#
# pynetdicom sends every DIMSE message as at least two P-DATA-TF PDUs, its command set in one
# and its data set in the next, and builds the command set as a pydicom Dataset each time. A
# C-FIND answers with one pending response per match (PS3.4 C.4.1.2.2) and a C-MOVE sends one
# C-STORE per instance, so that doubles the PDUs both ends must read and handle. PS3.8 9.3.5
# lets one P-DATA-TF carry several PDVs: fsqr encodes these command sets itself (PS3.7 6.3.1,
# E.1; byte for byte what pynetdicom writes, which tests check) and sends each with its data set
# in one PDU whenever both fit in the peer's Maximum Length (PS3.8 D.1). Anything larger goes
# pynetdicom's way, in fragments.

_C_FIND_RSP = 0x8020  # PS3.7 E.1: Command Field values
C_GET_RSP_FIELD = 0x8010
C_MOVE_RSP_FIELD = 0x8021
_C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
_DATA_SET_PRESENT = 0x0001  # PS3.7 E.1: Command Data Set Type; anything but 0x0101, as pynetdicom
_NO_DATA_SET = 0x0101
_PENDING = (0xFF00, 0xFF01)
_PDV_HEADER = 6  # PS3.8 9.3.5.1: item length (4), presentation context ID (1), control header (1)
_ONE_PDU_AT_MOST = 1 << 16  # bytes of data set read whole when the peer sets no PDU limit
_US = struct.Struct("<H")


def _command_element(element: int, value: bytes) -> bytes:
    """One element of group 0000, Implicit VR Little Endian (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _command_set(*elements: tuple[int, bytes]) -> bytes:
    """A command set: (0000,0000) Command Group Length, then `elements` in tag order."""
    body = b"".join(_command_element(element, value) for element, value in elements)
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)  # PS3.5 6.2: UI is padded with NUL


def _ae(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " * (len(raw) % 2)  # PS3.5 6.2: AE is padded with a space


def find_pending_command(sop_class_uid: str, message_id: int, code: int) -> bytes:
    """The command set of a pending C-FIND-RSP with an identifier (PS3.7 9.3.2.2).

    >>> command = find_pending_command("1.2", 7, 0xFF00)
    >>> len(command), command[8:12].hex()  # (0000,0000) UL: the 52 bytes that follow it
    (64, '34000000')
    """
    return _command_set(
        (0x0002, _uid(sop_class_uid)),
        (0x0100, _US.pack(_C_FIND_RSP)),
        (0x0120, _US.pack(message_id)),
        (0x0800, _US.pack(_DATA_SET_PRESENT)),
        (0x0900, _US.pack(code)),
    )


def retrieve_pending_command(
    command_field: int, sop_class_uid: str, message_id: int, counts: tuple[int, int, int, int]
) -> bytes:
    """The command set of a pending C-MOVE-RSP or C-GET-RSP (PS3.7 9.3.3.2, 9.3.4.2): no data
    set, and the remaining, completed, failed and warning sub-operation counts."""
    return _command_set(
        (0x0002, _uid(sop_class_uid)),
        (0x0100, _US.pack(command_field)),
        (0x0120, _US.pack(message_id)),
        (0x0800, _US.pack(_NO_DATA_SET)),
        (0x0900, _US.pack(status.PENDING)),
        *((0x1020 + i, _US.pack(count)) for i, count in enumerate(counts)),
    )


def store_request_command(
    sop_class_uid: str,
    sop_instance_uid: str,
    message_id: int,
    priority: int,
    originator: tuple[str, int] | None,
) -> bytes:
    """The command set of a C-STORE-RQ (PS3.7 9.3.1.1), with the Move Originator's AE title and
    Message ID when it is a C-MOVE sub-operation (PS3.7 9.1.1.1)."""
    elements = [
        (0x0002, _uid(sop_class_uid)),
        (0x0100, _US.pack(_C_STORE_RQ)),
        (0x0110, _US.pack(message_id)),
        (0x0700, _US.pack(priority)),
        (0x0800, _US.pack(_DATA_SET_PRESENT)),
        (0x1000, _uid(sop_instance_uid)),
    ]
    if originator is not None:
        elements += [(0x1030, _ae(originator[0])), (0x1031, _US.pack(originator[1]))]
    return _command_set(*elements)


def store_response_command(
    sop_class_uid: str, sop_instance_uid: str, message_id: int, code: int
) -> bytes:
    """The command set of a C-STORE-RSP without an Error Comment (PS3.7 9.3.1.2): what fsqr
    answers each instance it stores."""
    return _command_set(
        (0x0002, _uid(sop_class_uid)),
        (0x0100, _US.pack(_C_STORE_RSP)),
        (0x0120, _US.pack(message_id)),
        (0x0800, _US.pack(_NO_DATA_SET)),
        (0x0900, _US.pack(code)),
        (0x1000, _uid(sop_instance_uid)),
    )


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """A C-STORE-RSP as fsqr reads it (PS3.7 9.3.1.2): the request it answers, and how."""

    message_id: int
    status: int
    comment: str = ""


_ELEMENT = struct.Struct("<HHI")  # PS3.7 6.3.1: tag and 32-bit length, Implicit VR Little Endian


def read_store_response(command: bytes) -> StoreResponse | None:
    """The C-STORE-RSP a whole command set holds; None for any other command, or any doubt.

    >>> read_store_response(bytes(16)) is None  # two empty elements: no C-STORE-RSP
    True
    """
    fields: dict[int, bytes] = {}
    pos = 0
    while pos + _ELEMENT.size <= len(command):
        group, element, length = _ELEMENT.unpack_from(command, pos)
        pos += _ELEMENT.size
        if group != 0x0000 or pos + length > len(command):
            return None
        fields[element] = command[pos : pos + length]
        pos += length
    if (
        pos != len(command)
        or fields.get(0x0100) != _US.pack(_C_STORE_RSP)
        or fields.get(0x0800) != _US.pack(_NO_DATA_SET)
        or len(fields.get(0x0120, b"")) != 2
        or len(fields.get(0x0900, b"")) != 2
    ):
        return None
    comment = fields.get(0x0902, b"").decode("ascii", "replace").strip(" \0")
    return StoreResponse(_US.unpack(fields[0x0120])[0], _US.unpack(fields[0x0900])[0], comment)


def read_store_responses_directly(assoc: Any) -> None:
    """C-STORE responses that come to this association are read here, not by pynetdicom.

    pynetdicom decodes every command set into a pydicom Dataset, validating each value, and then
    into a primitive: some 40 % of the CPU a small instance's sub-operation cost. A response is
    a command set alone, in one PDV (PS3.8 E.2: control header 03, command and last fragment);
    anything else, or a message pynetdicom is part-way through, is left to pynetdicom.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        pdvs = primitive.presentation_data_value_list
        if dimse.message is None and len(pdvs) == 1 and pdvs[0][1][:1] == b"\x03":
            context_id, pdv = pdvs[0]
            response = read_store_response(bytes(pdv[1:]))
            if response is not None:
                dimse.msg_queue.put((context_id, response))
                return
        receive(primitive)

    dimse.receive_primitive = receive_primitive


def room_in_one_pdu(assoc: Any, command: bytes) -> int:
    """How many data set bytes fit in one PDU with `command` (the peer's Maximum Length)."""
    limit = assoc.dimse.maximum_pdu_size or _ONE_PDU_AT_MOST  # 0: the peer sets no limit
    return limit - 2 * _PDV_HEADER - len(command)


def send_in_one_pdu(assoc: Any, context_id: int, command: bytes, data: bytes | None) -> bool:
    """Send a message as one P-DATA-TF; False (nothing sent) when it does not fit in one."""
    if len(data or b"") > room_in_one_pdu(assoc, command):
        return False
    pdata = P_DATA()
    pdvs = pdata.presentation_data_value_list  # appended to, as pynetdicom does
    pdvs.append((context_id, b"\x03" + command))  # command, last fragment
    if data is not None:
        pdvs.append((context_id, b"\x02" + data))  # data set, last fragment
    assoc.dul.send_pdu(pdata)
    return True


def send_answers_in_one_pdu(event: Any) -> None:
    """EVT_CONN_OPEN: pending C-FIND responses of this association go as one PDU each, and
    C-STORE responses without an Error Comment are encoded here rather than by pydicom (half a
    millisecond of each instance a peer stores)."""
    assoc = event.assoc
    if not assoc.is_acceptor:
        return
    send_msg = assoc.dimse.send_msg  # pynetdicom's, for everything else

    def send(primitive: Any, context_id: int) -> None:
        command = None
        data = None
        code = primitive.Status
        message_id = primitive.MessageIDBeingRespondedTo
        if isinstance(primitive, C_FIND):
            if primitive.Identifier is not None and code in _PENDING and message_id is not None:
                command = find_pending_command(
                    str(primitive.AffectedSOPClassUID), message_id, int(code)
                )
                data = primitive.Identifier.getvalue()
        elif (
            isinstance(primitive, C_STORE)
            and code is not None
            and message_id is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
        ):
            command = store_response_command(
                str(primitive.AffectedSOPClassUID),
                str(primitive.AffectedSOPInstanceUID),
                message_id,
                code,
            )
        if command is not None and send_in_one_pdu(assoc, context_id, command, data):
            return
        send_msg(primitive, context_id)

    assoc.dimse.send_msg = send


# -- pynetdicom's log of every message, only when someone reads it -------------------------

_PYNETDICOM_LOG = logging.getLogger("pynetdicom")
# pynetdicom binds these to every association; they describe each message and PDU in its log,
# at INFO and DEBUG, and do that work (some 10 % of a C-MOVE's) even when the lines are dropped.
_MESSAGE_LOGGERS = (
    (logging.INFO, evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (logging.INFO, evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (logging.DEBUG, evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (logging.DEBUG, evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def without_unheard_message_logs(event: Any) -> None:
    """EVT_CONN_OPEN: unbind pynetdicom's per-message log handlers whose lines nobody would see
    (`fsqr serve` keeps pynetdicom's logger at WARNING unless run with `-v`)."""
    for level, event_type, handler in _MESSAGE_LOGGERS:
        if not _PYNETDICOM_LOG.isEnabledFor(level):
            event.assoc.unbind(event_type, handler)


# -- a C-FIND that keeps pace, and C-CANCEL -------------------------------------------------

_AHEAD = 4  # messages or PDUs that may wait in pynetdicom's send queue before one more is put


def keep_pace_with_the_network(assoc: Any, ahead: int = _AHEAD) -> None:
    """Wait until at most `ahead` messages (or PDUs) wait in pynetdicom's send queue.

    pynetdicom queues each one for its DUL thread to send. A C-FIND that ran ahead would
    queue every answer before the first reaches the wire, and a C-CANCEL sent after the SCU
    saw a few answers would then find nothing left to stop; a C-STORE sub-operation read from
    disk faster than the peer takes it would hold the whole file in memory (a 200 MB instance
    took 680 MB). Keeping pace bounds both.
    """
    pending = assoc.dul.to_provider_queue
    deadline = time.monotonic() + 60
    while pending.qsize() > ahead and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0005)


C_CANCEL_RQ = 0x0FFF  # PS3.7 E.1: Command Field of C-CANCEL-RQ
_CANCELLABLE = frozenset({0x0020, 0x0021, 0x0010})  # C-FIND-RQ, C-MOVE-RQ, C-GET-RQ


class CancelRegistry:
    """C-CANCEL requests seen per association, by the Message ID they cancel.

    pynetdicom keeps cancels in a dict that it empties just before it dispatches each request,
    so a C-CANCEL that arrives while the request still waits in its queue is lost. fsqr
    records every C-FIND, C-MOVE and C-GET request and every C-CANCEL as the DUL thread decodes
    them (EVT_DIMSE_RECV), in the order they came, and a handler asks here between responses:
    a cancel is honoured whenever it arrives. A cancel that names no request in progress (one
    that crossed the final response, a Message ID never used) is ignored (PS3.7 9.3.2.3): kept,
    it would cancel the next request that uses that Message ID.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per association: Message IDs of requests received and not finished; of those, the
        # ones cancelled.
        self._open: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()
        self._cancelled: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()

    def on_dimse_recv(self, event: Any) -> None:
        command = event.message.command_set
        field = command.get("CommandField")
        if field in _CANCELLABLE:
            message_id = int(command.MessageID)
            with self._lock:  # a cancel that came before this request was not for it
                self._open.setdefault(event.assoc, set()).add(message_id)
                self._cancelled.get(event.assoc, set()).discard(message_id)
            return
        if field != C_CANCEL_RQ:
            return
        being_cancelled = command.get("MessageIDBeingRespondedTo")
        if being_cancelled is None:
            log.info("C-CANCEL from %s ignored: it names no message", caller(event.assoc))
            return
        message_id = int(being_cancelled)
        with self._lock:
            in_progress = message_id in self._open.get(event.assoc, ())
            if in_progress:
                self._cancelled.setdefault(event.assoc, set()).add(message_id)
        if not in_progress:
            log.info(
                "C-CANCEL from %s for message %d ignored: no request of that ID is in progress",
                caller(event.assoc),
                message_id,
            )
            return
        log.info("C-CANCEL from %s for message %d", caller(event.assoc), message_id)
        explain.cancel_received(caller(event.assoc), message_id)

    def is_cancelled(self, event: Any) -> bool:
        with self._lock:
            return event.request.MessageID in self._cancelled.get(event.assoc, ())

    def forget(self, event: Any) -> None:
        """Called when a request finishes: its message ID may be used again later."""
        message_id = event.request.MessageID
        with self._lock:
            self._open.get(event.assoc, set()).discard(message_id)
            self._cancelled.get(event.assoc, set()).discard(message_id)


# -- --explain: what pynetdicom negotiated, as the plain values explain.py narrates ---------


def peer_of(assoc: Any) -> str:
    """`AE@host:port` of the other end, whichever side fsqr is on."""
    if assoc.is_acceptor:
        peer = assoc.requestor
        # Before negotiation (a rejection) only the request's primitive has the calling AE title.
        request = getattr(peer.primitive, "calling_ae_title", "")
        title = str(peer.ae_title).strip() or str(request or "").strip()
        return f"{title}@{peer.address}:{peer.port}"
    peer = assoc.acceptor
    return f"{str(peer.ae_title).strip()}@{peer.address}:{peer.port}"


def _explained_contexts(assoc: Any) -> list[explain.Context]:
    """Every presentation context of an association, accepted or refused, by context ID."""
    roles = assoc.requestor.role_selection if assoc.is_acceptor else {}
    # What fsqr proposed: an A-ASSOCIATE-AC's transfer syntax for a context it refuses has no
    # meaning (PS3.8 9.3.3.2), so a refused one is shown with the syntaxes it was proposed in.
    requested = [] if assoc.is_acceptor else assoc.requestor.requested_contexts
    proposed = {c.context_id: c for c in requested}
    found = []
    for cx in [*assoc.accepted_contexts, *assoc.rejected_contexts]:
        syntaxes = cx.transfer_syntax
        if cx.result != 0 and cx.context_id in proposed:
            syntaxes = proposed[cx.context_id].transfer_syntax
        said = ""
        if str(cx.abstract_syntax) in roles and cx.result == 0:
            said = "fsqr may send C-STOREs on it" if cx.as_scu else "fsqr may not send on it"
            said += " (SCP/SCU Role Selection, PS3.7 D.3.3.4)"
        found.append(
            explain.Context(
                int(cx.context_id),
                str(cx.abstract_syntax),
                tuple(str(ts) for ts in syntaxes),
                cx.result,
                said,
            )
        )
    return sorted(found, key=lambda cx: cx.context_id)


def explain_association(event: Any) -> None:
    """EVT_ACCEPTED, EVT_REJECTED, EVT_RELEASED, EVT_ABORTED, narrated with --explain."""
    if not explain.on():
        return
    assoc = event.assoc
    peer, ours = peer_of(assoc), assoc.is_requestor
    if event.event is evt.EVT_ACCEPTED:
        other = assoc.requestor if assoc.is_acceptor else assoc.acceptor
        explain.association_accepted(
            peer,
            we_requested=ours,
            contexts=_explained_contexts(assoc),
            max_pdu=int(other.maximum_length or 0),
        )
    elif event.event is evt.EVT_REJECTED:
        answer = assoc.acceptor.primitive
        explain.association_rejected(
            peer,
            we_requested=ours,
            result=str(getattr(answer, "result_str", "")),
            source=str(getattr(answer, "source_str", "")),
            reason=str(getattr(answer, "reason_str", "")),
        )
    elif event.event is evt.EVT_RELEASED:
        explain.association_released(peer, we_requested=ours)
    else:
        explain.association_aborted(peer, we_requested=ours)


EXPLAINED = (evt.EVT_ACCEPTED, evt.EVT_REJECTED, evt.EVT_RELEASED, evt.EVT_ABORTED)
