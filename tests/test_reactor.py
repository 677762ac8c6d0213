"""The association loops of reactor.py: fsqr's threads wait for work instead of polling for it,
with DCMTK's tools as the peers so that every pynetdicom thread in this process is fsqr's."""

from __future__ import annotations

import copy
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from fsqr import reactor
from fsqr.config import config_from_mapping
from fsqr.keys import FIND_MODELS, GET_MODELS, MODALITY_WORKLIST_FIND, MOVE_MODELS
from fsqr.server import STORAGE_TRANSFER_SYNTAXES, Server, application_entity
from fsqr.synthetic import write_sample_data
from tests import test_interop_retrieve
from tests.helpers import wait_until
from tests.test_interop_retrieve import received_files, run_dcmtk

storescp = test_interop_retrieve.storescp  # the fixture, shared

POLLING_MODULES = {"pynetdicom.dul", "pynetdicom.association"}


@pytest.fixture
def polls() -> Iterator[list[tuple[str, float]]]:
    """Every short sleep (1 ms or less: pynetdicom's polling) taken in pynetdicom's association
    and DUL modules while the test runs, as (module, seconds)."""
    taken: list[tuple[str, float]] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        module = sys._getframe(1).f_globals.get("__name__", "")
        if module in POLLING_MODULES and seconds <= 0.001:
            taken.append((module, seconds))
        real_sleep(seconds)

    time.sleep = sleep
    try:
        yield taken
    finally:
        time.sleep = real_sleep


@pytest.mark.dcmtk
def test_queries_and_a_move_are_served_without_polling(
    tmp_path: Path,
    start_server: Callable[..., Server],
    storescp: Callable[..., tuple[int, Path]],
    polls: list[tuple[str, float]],
) -> None:
    """C-ECHO, C-FIND and a C-MOVE (whose sub-association fsqr requests) take no polling sleep
    in pynetdicom's loops; pynetdicom alone takes one per idle turn of each loop."""
    write_sample_data(tmp_path / "data")
    port, folder = storescp()
    server = start_server(
        tmp_path / "data", ae_table={"STORESCP": {"host": "127.0.0.1", "port": port}}
    )
    assert run_dcmtk("echoscu", "-aec", "FSQR", "127.0.0.1", str(server.port)).returncode == 0
    found = run_dcmtk(
        "findscu", "-S", "-aec", "FSQR", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*",
        "-k", "StudyInstanceUID", "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert found.stderr.count("Find Response:") >= 5  # one pending response per study, and more
    moved = run_dcmtk(
        "movescu", "-P", "-aec", "FSQR", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=PATIENT",
        "-k", "PatientID=FSQR0001", "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert len(received_files(folder)) > 0
    assert polls == []


def test_pynetdicom_alone_polls(polls: list[tuple[str, float]]) -> None:
    """The fixture above sees pynetdicom's polling: without it the test before proves nothing."""
    ae = AE()
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        client = AE()
        client.add_requested_context("1.2.840.10008.1.1")
        assoc = client.associate("127.0.0.1", server.server_address[1])
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        server.shutdown()
    assert {module for module, _ in polls} == POLLING_MODULES


def test_the_pynetdicom_internals_the_loops_use_are_still_there() -> None:
    """reactor.py's docstring lists them; a pynetdicom release that changes one fails here."""
    assoc = Association(AE(), "requestor")
    dul = assoc.dul
    assert isinstance(dul, DULServiceProvider)
    for name in ("to_provider_queue", "to_user_queue", "event_queue"):
        assert isinstance(getattr(dul, name), queue.Queue)
    assert isinstance(assoc.dimse.msg_queue, queue.Queue)
    for method in ("_process_recv_primitive", "_is_transport_event", "idle_timer_expired"):
        assert callable(getattr(dul, method))
    assert callable(dul._idle_timer.start) and callable(dul._idle_timer.restart)
    assert isinstance(dul.artim_timer.expired, bool)
    assert isinstance(dul.artim_timer.remaining, float | int)
    assert dul._kill_thread is False
    assert dul.state_machine.current_state == "Sta1"
    assert callable(assoc._run_reactor) and callable(assoc._serve_request)
    assert assoc._kill is False
    assert assoc._sent_abort is False
    assert isinstance(assoc._is_paused, bool)
    assert isinstance(assoc._reactor_checkpoint, threading.Event)
    assert isinstance(assoc._dul_ready, threading.Event)
    assert assoc.network_timeout_response in ("A-ABORT", "A-RELEASE")
    assert callable(AE()._create_socket)
    assert reactor._GET_MSG.__code__.co_varnames[:2] == ("self", "block")  # pynetdicom's own


def test_a_reactor_that_went_through_its_checkpoint_leaves_the_senders_response_alone() -> None:
    """The interleaving of pynetdicom issues #435 and #875, step by step, as two threads can
    take it: the reactor is through its checkpoint with `_is_paused` still true when a sender
    pauses it, sends, and gets its response queued before the reactor looks at the queue."""
    assoc = Association(AE(), "requestor")
    response = C_ECHO()
    response.MessageIDBeingRespondedTo = 1
    response.Status = 0x0000

    assoc._is_paused = True  # reactor: before its checkpoint ...
    assoc._reactor_checkpoint.wait()  # ... which is open, so it goes through
    assoc._reactor_checkpoint.clear()  # sender: pause the reactor
    assert assoc._is_paused  # sender: it looks paused, so send; the response comes
    assoc.dimse.msg_queue.put((1, response))
    assoc._is_paused = False  # reactor: after its checkpoint, it looks at the queue

    assert reactor.get_msg_unless_paused(assoc.dimse) == (None, None)
    assert assoc.dimse.get_msg(block=True) == (1, response)  # the sender's, as it should be

    # pynetdicom's own get_msg would have handed the response to the reactor, which drops it.
    assoc.dimse.msg_queue.put((1, response))
    assert reactor._GET_MSG(assoc.dimse, False) == (1, response)


def test_an_open_checkpoint_lets_the_reactor_take_requests() -> None:
    assoc = Association(AE(), "requestor")
    assert reactor.get_msg_unless_paused(assoc.dimse) == (None, None)  # nothing queued
    assoc.dimse.msg_queue.put((3, "request"))
    assert reactor.get_msg_unless_paused(assoc.dimse) == (3, "request")


def test_leaving_the_fix_puts_back_what_was_there(monkeypatch: pytest.MonkeyPatch) -> None:
    def elsewhere(dimse: Any, block: bool = False) -> Any:  # another patch, made before
        return None, None

    monkeypatch.setattr(DIMSEServiceProvider, "get_msg", elsewhere)
    with reactor.pynetdicom_keeps_its_responses():
        assert DIMSEServiceProvider.get_msg is reactor.get_msg_unless_paused
    assert DIMSEServiceProvider.get_msg is elsewhere


def test_the_suites_pynetdicom_clients_run_with_the_fix() -> None:
    """conftest.py sets it on pynetdicom's class; without it, tests fail now and then for the
    clients' sake (a CI run once lost a pending C-FIND response to it)."""
    assert DIMSEServiceProvider.get_msg is reactor.get_msg_unless_paused


def test_pynetdicoms_message_logs_are_unbound_while_nobody_would_see_them(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """pynetdicom describes every message and PDU in its log whether or not the lines are kept;
    fsqr unbinds those handlers unless pynetdicom's logger would keep their lines."""
    pynetdicom_log = logging.getLogger("pynetdicom")
    server = start_server(tmp_path)
    bound = {}
    for level in (logging.WARNING, logging.DEBUG):
        pynetdicom_log.setLevel(level)
        try:
            client = AE()
            client.add_requested_context("1.2.840.10008.1.1")
            assoc = client.associate("127.0.0.1", server.port, ae_title=server.ae_title)
            assert assoc.is_established
            (served,) = server._listener.active_associations
            bound[level] = {
                handler.__name__
                for event in (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT, evt.EVT_PDU_RECV)
                for handler, _ in served.get_handlers(event)
            }
            assoc.release()
            assert wait_until(lambda: not server._listener.active_associations)
        finally:
            pynetdicom_log.setLevel(logging.NOTSET)
    standard = {"standard_dimse_recv_handler", "standard_dimse_sent_handler"}
    assert not bound[logging.WARNING] & (standard | {"standard_pdu_recv_handler"})
    assert standard | {"standard_pdu_recv_handler"} <= bound[logging.DEBUG]


def test_each_association_gets_its_own_contexts_without_a_generic_deepcopy(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """pynetdicom deep-copies the server's contexts per association; fsqr's copy shares the
    immutable UIDs and copies only the lists, so an association cannot change the server's."""
    server = start_server(tmp_path)
    originals = server._listener.contexts
    copies = copy.deepcopy(originals)
    assert len(copies) == len(originals) > 100
    for original, copied in zip(originals, copies, strict=True):
        assert copied is not original
        assert copied.as_tuple == original.as_tuple
        assert copied.transfer_syntax == original.transfer_syntax
        assert copied.transfer_syntax is not original.transfer_syntax
        assert copied.transfer_syntax[0] is original.transfer_syntax[0]  # shared, not rebuilt
        assert (copied.as_scu, copied.as_scp) == (original.as_scu, original.as_scp)
    copies[0].transfer_syntax.clear()
    assert originals[0].transfer_syntax


def test_the_application_entitys_contexts_are_pynetdicoms_built_in_one_go(
    tmp_path: Path,
) -> None:
    """`application_entity` validates the transfer syntaxes once for every storage SOP Class;
    the contexts must be what pynetdicom's own `add_supported_context` builds, one by one."""
    ae = application_entity(config_from_mapping({"root": str(tmp_path)}))
    reference = AE()
    reference.add_supported_context(Verification)
    for uid in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS, MODALITY_WORKLIST_FIND):
        reference.add_supported_context(uid)
    for context in AllStoragePresentationContexts:
        reference.add_supported_context(
            context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
        )

    def described(contexts: list[Any]) -> list[tuple[str, list[str], Any, Any]]:
        return [
            (str(c.abstract_syntax), [str(t) for t in c.transfer_syntax], c.scu_role, c.scp_role)
            for c in contexts
        ]

    assert described(ae.supported_contexts) == described(reference.supported_contexts)
    built = ae._supported_contexts  # each context its own list, not one shared by all
    lists = {id(c._transfer_syntax) for c in built.values()}
    assert len(lists) == len(built) > 100
