"""Wait, don't poll: event-driven loops for the associations fsqr accepts and opens.

pynetdicom runs two loops for each association, and each sleeps 1 ms whenever it finds nothing to
do (its own source calls this a TODO):
  - the DUL thread (PS3.8 9.2, the Upper Layer state machine) reads PDUs from the socket and
    sends the PDUs that others queue for it;
  - the association thread takes each complete DIMSE message the DUL has decoded and dispatches
    it to a handler, and notices A-RELEASE, A-ABORT and the network timeout.
So a request could wait up to 1 ms to be read and 1 ms more to be dispatched, each response up
to 1 ms to be sent, and an idle association woke a thousand times a second, twice.

`serve_without_polling` gives one association, before its threads start, loops that block until
there is work: the DUL thread in `select()` on its socket and on a wake-up socket, the association
thread on an Event. handlers.py calls it for every association fsqr accepts (EVT_CONN_OPEN comes
before they start), and `WaitingAE` for every one it requests (C-MOVE sub-associations).
Every queue the two loops read from wakes its reader when something is put on it. Each wait
still ends after `IDLE_CHECK` seconds, so a timer (ARTIM, the network timeout) or a flag that
nothing signals is seen as pynetdicom would see it, only a little later.

The loops do what pynetdicom's `DULServiceProvider.run_reactor` and
`Association._run_reactor` do, step for step, with the sleeps replaced by waits. They use these
pynetdicom internals, here only: DULServiceProvider's queues, `_process_recv_primitive`,
`_is_transport_event`, `_idle_timer`, `artim_timer`, `_kill_thread`, `state_machine` and `socket`;
Association's `_run_reactor`, `_serve_request`, `_kill`, `_sent_abort`, `_is_paused`,
`_reactor_checkpoint`, `_dul_ready` and `dimse.msg_queue`; DIMSEServiceProvider's `get_msg`;
AE's `_create_socket`.
tests/test_reactor.py fails if a release changes them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu import A_ABORT_RQ

log = logging.getLogger(__name__)

# Longest wait before a loop looks again at what nothing signals: timers and kill flags.
IDLE_CHECK = 0.05  # seconds


class _WakeUp:
    """A socket pair: `wake()` makes the read end readable, so `select()` returns at once.

    Only while the DUL thread waits (`waiting`): a busy one looks at its queues anyway, and a
    C-STORE of a large instance queues a PDU every 16 KiB. The DUL thread sets `waiting` before
    it looks at its queues a last time, and a producer puts before it reads `waiting`, so either
    the DUL thread sees the item or the producer sees it waiting (threads interleave only
    between the GIL's steps).
    """

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.waiting = False

    def fileno(self) -> int:
        return self._read.fileno()

    def wake(self) -> None:
        if not self.waiting:
            return
        # A full buffer already means "wake up"; a closed pair means nobody waits any more.
        with contextlib.suppress(OSError):
            self._write.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self._read.recv(4096):
                pass

    def close(self) -> None:
        self._read.close()
        self._write.close()


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls `wake()` after each put: its reader waits instead of polling."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class WaitingAE(AE):
    """An AE whose requested associations wait rather than poll.

    pynetdicom's `AE.associate()` starts the DUL thread itself, and no event comes before it
    does; `_create_socket` is the last step before, and it is handed the association.
    """

    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> Any:
        serve_without_polling(assoc)
        return super()._create_socket(assoc, address, tls_args)


_GET_MSG = DIMSEServiceProvider.get_msg


def get_msg_unless_paused(dimse: Any, block: bool = False) -> Any:
    """`DIMSEServiceProvider.get_msg`, but the reactor's look (`block=False`) finds nothing while
    the association's reactor checkpoint is cleared.

    pynetdicom's send_*() and release() pause the association's reactor thread so that it keeps
    off the responses they wait for: they clear `_reactor_checkpoint`, then wait for
    `_is_paused`. The reactor sets `_is_paused` before its checkpoint and clears it after, so a
    clear that lands just after the reactor went through finds `_is_paused` still true; the
    sender goes on, and the reactor takes the response off the queue and drops it as an
    unexpected message (pynetdicom issues #435, #875). A pynetdicom client then misses a pending
    C-FIND response, or waits out its DIMSE timeout for a C-STORE response. Looking at the
    checkpoint again here, after `_is_paused` was cleared, closes that gap: a sender that cleared
    it before this look is kept out, and one that clears it after waits for `_is_paused`, which
    the reactor sets only once this look is over.

    fsqr's own association loop uses it; `pynetdicom_keeps_its_responses` gives it to every
    association of the process, pynetdicom clients' included.
    """
    if not block and not dimse.assoc._reactor_checkpoint.is_set():
        return None, None
    return _GET_MSG(dimse, block)


@contextlib.contextmanager
def pynetdicom_keeps_its_responses() -> Iterator[None]:
    """While inside, every association of this process, its clients' included, looks at its
    DIMSE queue through `get_msg_unless_paused`: for the pynetdicom clients of a test suite (the
    pytest plugin's fixture) or a benchmark, which would otherwise lose a response now and then."""
    before = DIMSEServiceProvider.get_msg
    DIMSEServiceProvider.get_msg = get_msg_unless_paused  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        DIMSEServiceProvider.get_msg = before  # type: ignore[method-assign]


def serve_without_polling(assoc: Any, ended: Callable[[Any, str], None] | None = None) -> None:
    """Give an association, before its threads start, loops that wait rather than poll.

    `ended(assoc, how)` is called once its thread has finished, with how it ended: "released",
    "aborted by the peer", "aborted by fsqr", "timed out (timeouts.network)", "connection
    lost", "rejected", "closed before any association request" or "closed before it was
    established". Read from the loop that saw it
    end, this does not depend on the order in which pynetdicom's two threads raise their events.
    """
    dul = assoc.dul
    socket_or_queue = _WakeUp()  # wakes the DUL thread: data to send, or a stop
    message_or_primitive = threading.Event()  # wakes the association thread
    dul.to_provider_queue = _WakingQueue(socket_or_queue.wake)
    dul.to_user_queue = _WakingQueue(message_or_primitive.set)
    assoc.dimse.msg_queue = _WakingQueue(message_or_primitive.set)

    def stop_dul() -> bool:
        # As pynetdicom's: only an idle state machine (Sta1) may stop; then wait for the thread.
        if dul.state_machine.current_state != "Sta1":
            return False
        dul._kill_thread = True
        socket_or_queue.wake()
        dul.join()
        return True

    def run_dul() -> None:
        try:
            _dul_loop(dul, socket_or_queue)
        finally:
            message_or_primitive.set()  # the association thread sees that the DUL has ended
            socket_or_queue.close()

    how: list[str] = []  # set by the association loop, if the association was established

    def run_association() -> None:
        try:
            type(assoc).run(assoc)  # pynetdicom's: negotiation, then `_run_reactor`
        except Exception as exc:
            # pynetdicom failed on what the peer asked for (a presentation context without a
            # transfer syntax, say): the peer is aborted at once, not left waiting, and the
            # connection and its thread are freed (they were held until the peer hung up).
            log.warning(
                "association from %s aborted: fsqr cannot negotiate what it asked for (%s: %s)",
                _peer(dul),
                type(exc).__name__,
                exc,
            )
            how.append("aborted by fsqr")
            _abort(dul)
            with contextlib.suppress(Exception):
                dul.socket.close()
            socket_or_queue.wake()
        finally:
            if ended is not None:
                ended(assoc, how[0] if how else _never_established(assoc))

    dul.stop_dul = stop_dul
    dul.run = run_dul  # Thread.start() calls run(); the instance's wins over the class's
    assoc.run = run_association
    assoc._run_reactor = lambda: how.append(_association_loop(assoc, message_or_primitive))


def _never_established(assoc: Any) -> str:
    if assoc.is_rejected:
        return "rejected"
    if assoc._sent_abort:  # by fsqr, on a request it could not take
        return "aborted by fsqr"
    if assoc.is_acceptor and assoc.requestor.primitive is None:
        return "closed before any association request"
    return "closed before it was established"


def _dul_loop(dul: Any, wake_up: _WakeUp) -> None:
    """pynetdicom's DUL reactor, blocking in select() where it slept."""
    dul._idle_timer.start()
    _tls_handshake(dul)
    while True:
        dul.assoc._dul_ready.set()  # let the association thread go on (it waits for this)
        if dul._kill_thread:
            return
        if dul.artim_timer.expired:
            dul.event_queue.put("Evt18")  # PS3.8 9.2: ARTIM timer expired
        try:
            # One thing per turn, as pynetdicom does: send a queued primitive, or read a PDU.
            if dul._process_recv_primitive():
                pass
            elif dul._is_transport_event():
                dul._idle_timer.restart()
        except Exception:
            log.exception("association from %s: upper layer failed; aborted", _peer(dul))
            _abort(dul)
            return
        try:
            event = dul.event_queue.get(block=False)
        except queue.Empty:
            _wait_for_work(dul, wake_up)
            continue
        state = dul.state_machine.current_state
        awaiting_request = state == "Sta2"  # connected, no A-ASSOCIATE-RQ yet
        if event == "Evt15" and state in ("Sta1", "Sta2"):
            # An A-ABORT asked for (the server stopping) before the peer sent anything: the
            # state table (PS3.8 9.2) has no abort here, nothing being negotiated yet, and
            # pynetdicom would raise. The connection is closed instead (Evt17, next turn),
            # unless it is already (Sta1).
            if awaiting_request:
                dul.socket.close()
            continue
        try:
            dul.state_machine.do_action(event)
        except Exception as exc:
            # A PDU pynetdicom cannot take (an even presentation context ID, a User Identity
            # of an unknown type): one line, an A-ABORT at once, and both threads end; the
            # thread died with a traceback, and the peer waited for its own timeout.
            log.warning(
                "association from %s aborted: %s in what it sent (%s)",
                _peer(dul),
                type(exc).__name__,
                exc,
            )
            _abort(dul)
            with contextlib.suppress(Exception):
                dul.socket.close()
            dul.to_user_queue.put(None)  # the association thread may wait for a request
            return
        no_request_yet = dul.assoc.is_acceptor and dul.assoc.requestor.primitive is None
        if event == "Evt17" and (awaiting_request or (state == "Sta13" and no_request_yet)):
            # Closed before any request (a port check, a stop), or after fsqr aborted one it
            # could not read: pynetdicom tells the association thread nothing, and it would
            # wait out its ACSE timeout for a request that cannot come. None is what that wait
            # returns when it gives up.
            dul.to_user_queue.put(None)


def _tls_handshake(dul: Any) -> None:
    """The TLS handshake of a connection fsqr accepted, before anything else is read, within
    the ACSE timeout. The listening context defers it to here (`security.server_context`);
    done at the first read instead, a failure was only pynetdicom's traceback followed by
    "closed before any association request", and a caller silent after it was held for the
    network timeout. A failure is one line saying why, and the connection is closed."""
    sock = getattr(dul.socket, "socket", None)
    if not isinstance(sock, ssl.SSLSocket) or not dul.assoc.is_acceptor:
        return
    timeout = sock.gettimeout()
    give_up = time.monotonic() + (dul.assoc.acse_timeout or math.inf)
    try:
        sock.settimeout(IDLE_CHECK)  # in short waits, so that a stop is not kept waiting
        while True:
            try:
                sock.do_handshake()
                break
            except TimeoutError:  # the handshake goes on where it was, unless it is time to stop
                stopping = dul._kill_thread or not dul.to_provider_queue.empty()  # an A-ABORT
                if stopping or time.monotonic() > give_up:
                    raise
        sock.settimeout(timeout)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or type(exc).__name__
        log.warning("TLS handshake with %s failed (%s): connection closed", _peer(dul), reason)
        dul.socket.close()  # Evt17: the association ends without waiting for a request
        sock.close()  # pynetdicom's close stops at a shutdown() that fails on a dead peer


def _wait_for_work(dul: Any, wake_up: _WakeUp) -> None:
    """Block until the peer sends, something is queued to send, or IDLE_CHECK has passed.

    An SSL socket may hold decrypted bytes that select() cannot see, but `_is_transport_event`
    has just found none (it asks `pending()`), so select() on the raw socket misses nothing.
    """
    timeout = max(0.0, min(IDLE_CHECK, dul.artim_timer.remaining))
    waiting_on: list[Any] = [wake_up]
    sock = getattr(dul.socket, "socket", None)
    if sock is not None and sock.fileno() >= 0 and getattr(dul.socket, "_is_connected", False):
        waiting_on.append(sock)
    wake_up.waiting = True
    try:
        if dul._kill_thread or dul.to_provider_queue.qsize() or dul.event_queue.qsize():
            return  # came while this turn went by: no wake-up was sent for it
        with contextlib.suppress(OSError, ValueError):  # closed under us: the next turn: Evt17
            select.select(waiting_on, [], [], timeout)
    finally:
        wake_up.waiting = False
        wake_up.drain()


def _abort(dul: Any) -> None:
    """As pynetdicom does when its DUL loop fails: A-ABORT the peer and end both threads."""
    abort = A_ABORT_RQ()
    abort.source = 0x02  # PS3.8 9.3.8: the service provider
    abort.reason_diagnostic = 0x00  # reason not specified
    with contextlib.suppress(Exception):
        dul.socket.send(abort.encode())
    dul.assoc.is_aborted = True
    dul.assoc._sent_abort = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True


def _association_loop(assoc: Any, work: threading.Event) -> str:
    """pynetdicom's association reactor, waiting on `work` where it slept; says how it ended."""
    assoc._is_paused = False
    while not assoc._kill:
        # pynetdicom's send_*() and release() clear the checkpoint to have this thread keep off
        # the DIMSE queue while they wait for their own responses.
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        work.clear()  # anything put from here on wakes the wait below

        context_id, msg = get_msg_unless_paused(assoc.dimse)
        if isinstance(msg, C_CANCEL):
            # pynetdicom keeps ten cancels aside and queues the rest as if requests: fsqr has
            # recorded each already (dimse.CancelRegistry), and one served would raise.
            continue
        if msg and _is_invalid_request(assoc, msg):
            _refuse_invalid(assoc, msg, context_id)
            continue
        if msg:
            try:
                assoc._serve_request(msg, context_id)
            except Exception as exc:  # the thread would die, and leave its connection open
                log.warning(
                    "association from %s aborted: cannot serve a %s (%s: %s)",
                    _peer(assoc.dul),
                    type(msg).__name__,
                    type(exc).__name__,
                    exc,
                )
                assoc.abort()
                return "aborted by fsqr"
            continue
        if assoc.is_established and assoc.acse.is_release_requested():
            _released(assoc)
            return "released"
        if assoc.acse.is_aborted():
            by_the_peer = assoc.acse.is_aborted("a-abort")
            _aborted(assoc)
            return "aborted by the peer" if by_the_peer else "connection lost"
        if not assoc.dul.is_alive():
            assoc.kill()
            return "connection lost"
        if assoc.dul.idle_timer_expired():
            log.warning("association from %s: network timeout reached", _peer(assoc.dul))
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True  # release() waits for this loop to be paused
                assoc.release()
            else:
                assoc.abort()
            assoc.kill()
            return "timed out (timeouts.network)"
        work.wait(IDLE_CHECK)
    # Ended from outside the loop: by fsqr's abort(), or by fsqr's own release of it.
    if assoc.is_released:
        return "released"
    return "aborted by fsqr" if assoc._sent_abort else "connection lost"


# What a request that lacks a required command element (PS3.7 9.3) is answered: pynetdicom
# only logs "unexpected message" and answers nothing, and the peer waits out its own timeout.
_INVALID_REQUEST_STATUS = {
    C_ECHO: 0x0212,  # mistyped argument (PS3.7 9.1.5.1.4)
    C_STORE: 0xC000,  # cannot understand (PS3.4 B.2.3)
    C_FIND: 0xA900,  # identifier does not match SOP Class (PS3.4 C.4.1.1.4)
    C_GET: 0xA900,
    C_MOVE: 0xA900,
}


def _is_invalid_request(assoc: Any, msg: Any) -> bool:
    """A request a peer sent fsqr that lacks a required element. A stray response (one that
    came late, say) is not one: pynetdicom drops it with a warning, as before."""
    return bool(
        assoc.is_acceptor
        and getattr(msg, "MessageIDBeingRespondedTo", None) is None
        and not msg.is_valid_request
        and not assoc._sent_release
    )


def _refuse_invalid(assoc: Any, msg: Any, context_id: int) -> None:
    """Answer a request that lacks a required command element with a failure status, saying
    which, or A-ABORT the association when it cannot be answered (no Message ID to answer, no
    service of this kind here)."""
    missing = [k for k in msg.REQUEST_KEYWORDS if getattr(msg, k) is None]
    code = _INVALID_REQUEST_STATUS.get(type(msg))
    if isinstance(msg, C_MOVE) and "MoveDestination" in missing:
        code = 0xA801  # move destination unknown (PS3.4 C.4.2.1.5)
    who = _peer(assoc.dul)
    if code is None or msg.MessageID is None:
        log.warning(
            "association from %s aborted: a %s request without %s", who, msg.msg_type, *missing[:1]
        )
        assoc.abort()
        return
    log.warning(
        "%s from %s refused %04X: the request has no %s",
        msg.msg_type,
        who,
        code,
        ", ".join(missing),
    )
    response = type(msg)()
    response.MessageIDBeingRespondedTo = msg.MessageID
    response.AffectedSOPClassUID = msg.AffectedSOPClassUID
    response.Status = code
    if hasattr(response, "ErrorComment"):
        response.ErrorComment = f"the request has no {', '.join(missing)}"[:64]
    try:
        assoc.dimse.send_msg(response, context_id)
    except Exception:  # not even a response can be made of it
        assoc.abort()


def _released(assoc: Any) -> None:
    """The peer asked to release (PS3.8 7.2): answer A-RELEASE-RP and end, as pynetdicom does."""
    assoc.acse.send_release(is_response=True)
    assoc.is_released = True
    assoc.is_established = False
    evt.trigger(assoc, evt.EVT_RELEASED, {})
    assoc.kill()


def _aborted(assoc: Any) -> None:
    """The peer or the provider aborted (PS3.8 7.3, 7.4): end, as pynetdicom does."""
    assoc.dul.receive_pdu(wait=False)  # lets EVT_ACSE_RECV fire for the A-ABORT
    assoc.is_aborted = True
    assoc.is_established = False
    evt.trigger(assoc, evt.EVT_ABORTED, {})
    assoc.kill()


def _peer(dul: Any) -> str:
    requestor = dul.assoc.requestor
    return f"{requestor.address}:{requestor.port}"
