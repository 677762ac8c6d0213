"""fsqr as a test double, against real clients: the `faults:` rules answer failure statuses,
slow responses down and abort associations on cue (fsqr/faults.py), and `Server.operations`
records what was served (fsqr/operations.py). DCMTK's findscu, movescu and storescp, and
pynetdicom clients, are the clients whose view is checked.

Delays are checked by lower bounds only: a loaded machine may make anything slower, never
faster.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from fsqr import status
from fsqr.faults import Fault
from fsqr.server import Server
from fsqr.synthetic import synthetic_uid
from tests.conftest import dcmtk, instance
from tests.helpers import wait_until
from tests.test_interop_retrieve import (
    SECONDS,
    Destination,
    free_port,
    listening,
    received_files,
    run_dcmtk,
)

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
STUDY = synthetic_uid("study", "PID1")
SERIES = synthetic_uid("series", "PID1")
INSTANCES = 4


@pytest.fixture
def tree(write: Callable[..., Path], tmp_path: Path) -> Path:
    """One series of INSTANCES CT images (the conftest `instance` factory, patient PID1)."""
    for n in range(1, INSTANCES + 1):
        write(f"ct{n}.dcm", n=n)
    return tmp_path / "tree"


def uids() -> list[str]:
    return sorted(synthetic_uid("sop", "PID1", n) for n in range(1, INSTANCES + 1))


@pytest.fixture
def destination() -> Iterator[Destination]:
    """A pynetdicom Storage SCP on a free port, known to fsqr as DEST."""
    dest = Destination().start()
    yield dest
    dest.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """Open pynetdicom associations (C-ECHO, C-FIND, C-MOVE, C-GET with the CT SCP role,
    C-STORE of CT); `received` lists what a C-GET delivered. Each is ended after the test."""
    opened: list[Any] = []

    def associate(
        server: Server, ae_title: str = "PYCLIENT", *, received: list[str] | None = None
    ) -> Any:
        def on_store(event: Any) -> int:
            if received is not None:
                received.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        ae = AE(ae_title=ae_title)
        for context in (Verification, FIND, MOVE, GET):
            ae.add_requested_context(context)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(
            "127.0.0.1",
            server.port,
            ae_title=server.ae_title,
            ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )
        assert assoc.is_established
        opened.append(assoc)
        return assoc

    yield associate
    for assoc in opened:
        if assoc.is_established:
            assoc.release()


def series_identifier(**more: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    for keyword, value in more.items():
        setattr(ds, keyword, value)
    return ds


# -- a chosen status -----------------------------------------------------------------------------


def test_findscu_from_the_flaky_caller_gets_the_injected_status_and_others_are_served(
    tree: Path, start_server: Callable[..., Server]
) -> None:
    rule = {"operation": "find", "caller": "FLAKY", "status": "A700", "comment": "busy, try later"}
    server = start_server(tree, faults=[rule])
    keys = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    address = ["127.0.0.1", str(server.port)]
    flaky = run_dcmtk("findscu", "-d", "-aet", "FLAKY", *keys, *address).stderr
    steady = run_dcmtk("findscu", "-v", "-aet", "STEADY", *keys, *address).stderr
    assert "DIMSE Status                  : 0xa700: Refused: Out of resources" in flaky
    assert "[busy, try later ]" in flaky  # the Error Comment, padded to even length
    assert "Received Final Find Response (Success)" in steady
    assert [
        (s.calling_ae, s.status, s.comment, s.matches, s.fault)
        for s in server.operations.of("C-FIND")
    ] == [("FLAKY", 0xA700, "busy, try later", 0, True), ("STEADY", 0x0000, "", 1, False)]


def _echo(assoc: Any) -> Dataset:
    return assoc.send_c_echo()


def _find(assoc: Any) -> Dataset:
    return list(assoc.send_c_find(series_identifier(), FIND))[-1][0]


def _move(assoc: Any) -> Dataset:
    return list(assoc.send_c_move(series_identifier(), "DEST", MOVE))[-1][0]


def _get(assoc: Any) -> Dataset:
    return list(assoc.send_c_get(series_identifier(), GET))[-1][0]


def _store(assoc: Any) -> Dataset:
    return assoc.send_c_store(instance(n=99, sop_uid="1.2.826.0.1.3680043.8.498.99"))


REQUESTS = {"echo": _echo, "find": _find, "move": _move, "get": _get, "store": _store}


@pytest.mark.parametrize("operation", list(REQUESTS))
def test_each_operation_answers_the_injected_status_instead_of_serving(
    tree: Path,
    start_server: Callable[..., Server],
    clients: Callable[..., Any],
    destination: Destination,
    operation: str,
) -> None:
    rule = {"operation": operation, "status": "C001", "comment": "not today"}
    server = start_server(tree, faults=[rule], ae_table={"DEST": destination.entry()})
    received: list[str] = []
    answer = REQUESTS[operation](clients(server, received=received))
    assert answer.Status == 0xC001
    if operation != "echo":  # a C-ECHO-RSP has no Error Comment (PS3.7 9.3.5.2)
        assert answer.ErrorComment == "not today"
    (served,) = server.operations
    assert (served.operation, served.status, served.comment, served.fault) == (
        f"C-{operation.upper()}",
        0xC001,
        "not today",
        True,
    )
    assert (served.matches, served.completed, served.sop_instance_uids) == (0, 0, ())
    assert (received, destination.connections) == ([], 0)  # nothing sent, no sub-association
    assert server.index.counts().instances == INSTANCES  # nothing stored


@pytest.mark.parametrize("operation", ["echo", "find", "store"])
def test_a_delay_longer_than_the_clients_patience_ends_with_the_association(
    tree: Path,
    start_server: Callable[..., Server],
    clients: Callable[..., Any],
    operation: str,
) -> None:
    """How a test fakes a PACS that never answers: the client gives up and aborts. The delay
    ended only when it had run its course (a thread busy for 30 s, a stop kept waiting 5 s),
    and the record then said 0000 for an answer nobody got."""
    server = start_server(tree, faults=[{"operation": operation, "delay_ms": 30000}])
    assoc = clients(server)
    assoc.dimse_timeout = 0.5
    started = time.monotonic()
    REQUESTS[operation](assoc)  # no answer: pynetdicom aborts when its DIMSE timeout passes
    assert wait_until(lambda: len(server.operations) == 1, timeout=3)
    (served,) = server.operations
    assert served.status is None
    assert "association ended during the fault's delay" in served.comment
    assert time.monotonic() - started < 3
    assert server.index.counts().instances == INSTANCES  # a store never answered stored nothing
    stopped = time.monotonic()
    server.stop()
    assert time.monotonic() - stopped < 1


# -- dropping the association ------------------------------------------------------------------


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on a free port, writing what it receives to a folder."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "--fork", "-od", str(out), str(port)],  # associations at once
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert listening(port), "storescp did not start listening"
    yield port, out
    process.terminate()
    process.wait(SECONDS)


@pytest.mark.parametrize("associations", [1, 4])
def test_movescu_sees_the_abort_after_two_and_only_two_files_arrive(
    tree: Path, start_server: Callable[..., Server], storescp: tuple[int, Path], associations: int
) -> None:
    """Two, also when four sub-associations send at once (each sub-operation is counted as it
    starts, not as it ends)."""
    port, out = storescp
    peers = {"STORESCP": {"host": "127.0.0.1", "port": port, "associations": associations}}
    server = start_server(tree, ae_table=peers, faults=[{"operation": "move", "abort_after": 2}])
    done = run_dcmtk(
        "movescu",
        "-S",
        "-aem",
        "STORESCP",
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"StudyInstanceUID={STUDY}",
        "-k",
        f"SeriesInstanceUID={SERIES}",
        "127.0.0.1",
        str(server.port),
    )
    assert "Peer aborted Association" in done.stdout + done.stderr
    arrived = received_files(out)
    assert len(arrived) == 2
    (served,) = server.operations.of("C-MOVE")
    assert (served.status, served.completed, served.failed, served.fault) == (None, 2, 0, True)
    assert (served.destination, served.level) == ("STORESCP", "SERIES")
    assert sorted(served.sop_instance_uids) == sorted(arrived)
    assert served.comment == "aborted after 2 sub-operations (faults: abort_after)"


def test_a_get_aborted_after_one_sub_operation_delivers_one(
    tree: Path, start_server: Callable[..., Server], clients: Callable[..., Any]
) -> None:
    server = start_server(tree, faults=[{"operation": "get", "abort_after": 1}])
    received: list[str] = []
    assoc = clients(server, received=received)
    responses = list(assoc.send_c_get(series_identifier(), GET))
    assert wait_until(lambda: assoc.is_aborted, SECONDS)  # its reactor thread notes it
    assert not [rsp for rsp, _ in responses if rsp.get("Status") not in (None, status.PENDING)]
    (served,) = server.operations
    assert (served.status, served.completed, list(served.sop_instance_uids)) == (
        None,
        1,
        received,
    )
    assert len(received) == 1


def test_a_delayed_get_waits_before_each_sub_operation_only(
    tree: Path,
    start_server: Callable[..., Server],
    clients: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As fsqr.yaml says: before each C-STORE sub-operation, not once more before them all."""
    waits: list[float] = []
    monkeypatch.setattr(Fault, "pause", lambda self: waits.append(self.rule.delay_ms))
    server = start_server(tree, faults=[{"operation": "get", "delay_ms": 5}])
    received: list[str] = []
    responses = list(clients(server, received=received).send_c_get(series_identifier(), GET))
    assert responses[-1][0].Status == status.SUCCESS
    assert len(received) == INSTANCES
    assert waits == [5] * INSTANCES


def test_a_find_aborted_after_one_match_sends_one(
    tree: Path, start_server: Callable[..., Server], clients: Callable[..., Any]
) -> None:
    server = start_server(tree, faults=[{"operation": "find", "abort_after": 1}])
    assoc = clients(server)
    query = series_identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID="")
    responses = list(assoc.send_c_find(query, FIND))
    assert wait_until(lambda: assoc.is_aborted, SECONDS)  # its reactor thread notes it
    assert [rsp.Status for rsp, answer in responses if answer is not None] == [status.PENDING]
    (served,) = server.operations
    assert (served.status, served.matches, served.level) == (None, 1, "IMAGE")


def test_other_callers_are_not_touched_by_a_callers_rule(
    tree: Path, start_server: Callable[..., Server], clients: Callable[..., Any]
) -> None:
    server = start_server(tree, faults=[{"operation": "get", "caller": "FLAKY", "abort_after": 0}])
    received: list[str] = []
    answer = _get(clients(server, "STEADY", received=received))
    assert answer.Status == status.SUCCESS
    assert sorted(received) == uids()
    assert server.operations[0].fault is False


# -- slowness ------------------------------------------------------------------------------------


def test_a_delay_holds_each_sub_operation_and_each_response(
    tree: Path, start_server: Callable[..., Server], clients: Callable[..., Any]
) -> None:
    delay = 0.15
    rules = [
        {"operation": "get", "delay_ms": int(delay * 1000)},
        {"operation": "find", "delay_ms": int(delay * 1000)},
        {"operation": "store", "delay_ms": int(delay * 1000)},
    ]
    server = start_server(tree, faults=rules)
    assoc = clients(server, received=(received := []))
    began = time.perf_counter()
    assert _get(assoc).Status == status.SUCCESS
    get_took = time.perf_counter() - began
    began = time.perf_counter()
    assert _find(assoc).Status == status.SUCCESS  # one match: two responses
    find_took = time.perf_counter() - began
    began = time.perf_counter()
    assert _store(assoc).Status == status.SUCCESS  # one response
    store_took = time.perf_counter() - began
    assert len(received) == INSTANCES
    assert get_took >= INSTANCES * delay
    assert find_took >= 2 * delay
    assert store_took >= delay
    got, found, stored = server.operations
    assert got.duration_ms >= INSTANCES * delay * 1000
    assert found.duration_ms >= 2 * delay * 1000
    assert stored.duration_ms >= delay * 1000
    assert (got.fault, got.completed, found.fault, found.matches) == (True, INSTANCES, True, 1)
    assert stored.sop_instance_uids == ("1.2.826.0.1.3680043.8.498.99",)


# -- the record of what was served -------------------------------------------------------------


def test_the_record_says_what_each_request_was_and_how_it_went(
    tree: Path,
    start_server: Callable[..., Server],
    clients: Callable[..., Any],
    destination: Destination,
) -> None:
    server = start_server(tree, ae_table={"DEST": destination.entry()})
    assoc = clients(server, "RECORDED", received=(received := []))
    assert _echo(assoc).Status == status.SUCCESS
    assert _find(assoc).Status == status.SUCCESS
    assert _move(assoc).Status == status.SUCCESS
    assert _get(assoc).Status == status.SUCCESS
    assert _store(assoc).Status == status.SUCCESS
    bad = Dataset()
    bad.QueryRetrieveLevel = "NONSENSE"
    assert list(assoc.send_c_find(bad, FIND))[-1][0].Status == status.IDENTIFIER_DOES_NOT_MATCH
    # Recorded before each final response went: no waiting needed.
    echo, find, move, get, store, refused = server.operations
    port = assoc.local["port"]
    assert {(s.calling_ae, s.peer, s.fault) for s in server.operations} == {
        ("RECORDED", f"127.0.0.1:{port}", False)
    }
    assert [s.operation for s in server.operations] == [
        "C-ECHO",
        "C-FIND",
        "C-MOVE",
        "C-GET",
        "C-STORE",
        "C-FIND",
    ]
    assert (echo.status, echo.model, echo.level) == (0x0000, "", "")
    assert (find.status, find.model, find.level, find.matches) == (0, "Study Root", "SERIES", 1)
    assert (move.status, move.destination, move.completed, move.failed) == (0, "DEST", 4, 0)
    assert sorted(move.sop_instance_uids) == sorted(destination.received) == uids()
    assert sorted(get.sop_instance_uids) == sorted(received) == uids()
    assert (store.model, store.sop_instance_uids) == (
        CTImageStorage,
        ("1.2.826.0.1.3680043.8.498.99",),
    )
    assert (refused.status, refused.matches) == (status.IDENTIFIER_DOES_NOT_MATCH, 0)
    assert refused.comment  # says what was wrong with the identifier
    assert [s.started for s in server.operations] == sorted(s.started for s in server.operations)
    assert all(s.started.endswith("Z") and s.duration_ms >= 0 for s in server.operations)
