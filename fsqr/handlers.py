"""pynetdicom events in, DIMSE statuses out: the only place where errors become statuses.

Each handler reads a request, calls the core (query, retrieve, storage), and yields what
pynetdicom sends back. Anything a peer sends that the core refuses arrives here as a
`DimseError` carrying its status and ErrorComment; anything unexpected is logged with its
traceback and answered with a failure status, and the association and the server go on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt

from fsqr import status
from fsqr.config import Config
from fsqr.errors import DimseError, InvalidIdentifier
from fsqr.index import Index
from fsqr.keys import FIND_MODELS, GET_MODELS, MOVE_MODELS
from fsqr.query import find, parse_identifier
from fsqr.scan import HeaderCache

log = logging.getLogger(__name__)

C_CANCEL_RQ = 0x0FFF  # PS3.7 E.1: Command Field of C-CANCEL-RQ
_QR_MODELS = {**FIND_MODELS, **MOVE_MODELS, **GET_MODELS}

FindResponse = tuple[int | Dataset, Dataset | None]


def caller(assoc: Any) -> str:
    """`AE@host:port` of the peer that requested the association, for log lines."""
    peer = assoc.requestor
    return f"{peer.ae_title.strip()}@{peer.address}:{peer.port}"


def failure(code: int, comment: str) -> Dataset:
    """A failure status with an Error Comment (0000,0902), as pynetdicom sends it."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment
    return ds


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


def _identifier(event: Any) -> Dataset:
    """The request's identifier; bytes that do not decode as a data set are the peer's error."""
    try:
        return cast(Dataset, event.identifier)
    except Exception as exc:
        raise InvalidIdentifier(f"cannot decode the identifier: {exc}") from None


class CancelRegistry:
    """C-CANCEL requests seen per association, by the Message ID they cancel.

    pynetdicom keeps cancels in a dict that it empties just before it dispatches each request,
    so a C-CANCEL that arrives while the request still waits in its queue is lost. fsqr
    records every C-CANCEL as the DUL thread decodes it (EVT_DIMSE_RECV), and a handler asks
    here between responses: a cancel is honoured whenever it arrives.
    """

    _KEEP = 16  # cancels for requests that already finished are forgotten beyond this many

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()

    def on_dimse_recv(self, event: Any) -> None:
        command = event.message.command_set
        if command.get("CommandField") != C_CANCEL_RQ:
            return
        message_id = int(command.MessageIDBeingRespondedTo)
        with self._lock:
            seen = self._seen.setdefault(event.assoc, [])
            seen.append(message_id)
            del seen[: -self._KEEP]

    def is_cancelled(self, event: Any) -> bool:
        with self._lock:
            return event.request.MessageID in self._seen.get(event.assoc, ())

    def forget(self, event: Any) -> None:
        """Called when a request finishes: its message ID may be used again later."""
        with self._lock:
            seen = self._seen.get(event.assoc)
            if seen and event.request.MessageID in seen:
                seen.remove(event.request.MessageID)


class Handlers:
    """The event handlers of one server, bound to its configuration and index."""

    def __init__(self, config: Config, index: Index) -> None:
        self.config = config
        self.index = index
        self.headers = HeaderCache()
        self.cancels = CancelRegistry()

    def bindings(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_DIMSE_RECV, self.cancels.on_dimse_recv),
            (evt.EVT_SOP_EXTENDED, self.on_sop_extended),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_FIND, self.on_find),
        ]

    def on_sop_extended(self, event: Any) -> dict[str, bytes]:
        """Accept relational queries (PS3.4 C.5.1.1: byte 1 of the application information).

        The other bytes (combined date-time matching, fuzzy semantic matching, timezone
        adjustment) are answered 0: fsqr does not offer them.
        """
        accepted = {}
        for uid, info in event.app_info.items():
            if uid in _QR_MODELS and info:
                relational = info[0] == 1 and self.config.relational_queries
                accepted[uid] = bytes([int(relational)])
        return accepted

    def on_echo(self, event: Any) -> int:
        log.info("C-ECHO from %s", caller(event.assoc))
        return status.SUCCESS

    def on_find(self, event: Any) -> Iterator[FindResponse]:
        """C-FIND SCP (PS3.4 C.4.1.2): one pending response per match, then the final status.

        pynetdicom sends 0000 Success by itself once this generator ends without a final
        status of its own.
        """
        started = time.perf_counter()
        busy = 0.0  # time spent here, not waiting for pynetdicom to send
        matches = 0
        outcome = "0000 Success"
        sop_class = str(event.request.AffectedSOPClassUID)
        model = FIND_MODELS[sop_class]
        level = "?"
        try:
            tick = time.perf_counter()
            relational = event.assoc.acceptor.sop_class_extended.get(sop_class, b"")[:1] == b"\1"
            query = parse_identifier(_identifier(event), model, relational=relational)
            level = query.level.value
            log.debug("C-FIND keys: %s", [k.keyword or hex(k.tag) for k in query.keys])
            results = find(self.index, query, self.config.ae_title, self.headers)
            busy += time.perf_counter() - tick
            while True:
                if self.cancels.is_cancelled(event) or event.is_cancelled:
                    outcome = "FE00 Cancel"
                    yield status.CANCEL, None
                    return
                tick = time.perf_counter()
                answer = next(results, None)
                busy += time.perf_counter() - tick
                if answer is None:
                    return
                matches += 1
                yield status.PENDING, answer
        except DimseError as exc:
            outcome = f"{exc.status:04X} {exc.comment}"
            yield failure(exc.status, exc.comment), None
            return
        except Exception as exc:
            log.exception("C-FIND from %s failed", caller(event.assoc))
            outcome = f"{status.UNABLE_TO_PROCESS:04X} {type(exc).__name__}"
            yield failure(status.UNABLE_TO_PROCESS, f"fsqr error: {exc}"), None
            return
        finally:
            self.cancels.forget(event)
            log.info(
                "C-FIND %s %s from %s: %d matches, %s, %.1f ms (fsqr %.1f ms)",
                level,
                model.value,
                caller(event.assoc),
                matches,
                outcome,
                (time.perf_counter() - started) * 1000,
                busy * 1000,
            )
