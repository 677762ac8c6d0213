"""Faults against a running server, with real peers: the move destination dies, the requestor
aborts, SIGTERM lands during a C-STORE, the disk fills up, a file changes during a send.

After each the server goes on answering, the index is true (a C-FIND shows what is on disk,
neither more nor less) and no partial file is left in the served tree. Other faults are tested
where their subject is: a store cut off mid-transfer and a temporary file left by a crash in
test_interop_store.py; a destination that is down or silent, a lost C-STORE response, files
deleted or replaced before they are sent in test_interop_retrieve.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from fsqr import links, retrieve, status, storage
from fsqr.records import Parsed
from fsqr.scan import read_header
from fsqr.server import Server
from fsqr.tree import TEMP_PREFIX, is_candidate_name
from tests import test_interop_retrieve as retrieve_tests
from tests.conftest import dcmtk, instance
from tests.helpers import wait_until
from tests.test_cli import Running
from tests.test_interop_retrieve import (
    SECONDS,
    STUDY_MOVE,
    Destination,
    Sample,
    associate,
    counts,
    failed_uids,
    final,
    free_port,
    identifier,
    listening,
    move,
)

# The fixtures of the retrieve tests, shared rather than copied.
destination = retrieve_tests.destination
own_sample = retrieve_tests.own_sample

# -- what every fault must leave behind ---------------------------------------------------------


def on_disk(root: Path) -> dict[str, set[str]]:
    """Study Instance UID -> the SOP Instance UIDs of the complete instances under `root`."""
    found: dict[str, set[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            parsed = read_header(str(path))
            if isinstance(parsed, Parsed):
                found.setdefault(parsed.study.study_uid, set()).add(
                    parsed.instance.sop_instance_uid
                )
    return found


def found_by_c_find(port: int) -> dict[str, int]:
    """Study Instance UID -> Number of Study Related Instances, as a C-FIND over the network
    answers; also proves the server still answers."""
    ae = AE(ae_title="CHECKER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="FSQR")
    assert assoc.is_established, "the server no longer accepts associations"
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    try:
        responses = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    assert responses[-1][0].Status == status.SUCCESS
    return {
        str(a.StudyInstanceUID): int(a.NumberOfStudyRelatedInstances)
        for _, a in responses
        if a is not None
    }


def assert_serving_the_truth(
    port: int, root: Path, *, broken_by_the_test: Path | None = None
) -> None:
    """The server answers, C-FIND counts exactly the complete instances on disk, and nothing
    partial or temporary is left in the tree (but the file the test itself broke)."""
    assert found_by_c_find(port) == {s: len(uids) for s, uids in on_disk(root).items()}
    leftovers = [
        p for p in root.rglob("*") if p.is_file() and is_partial(p) and p != broken_by_the_test
    ]
    assert leftovers == [], "a partial or temporary file was left in the served tree"


def is_partial(path: Path) -> bool:
    """A file fsqr was writing, or one that is not a complete instance (worklist items aside)."""
    if path.name.startswith(TEMP_PREFIX):
        return True
    return is_candidate_name(path.name) and not isinstance(read_header(str(path)), Parsed)


def largest_study(sample: Sample) -> tuple[str, list[str]]:
    return max(sample.studies().items(), key=lambda item: len(item[1]))


# -- the move destination dies mid-transfer ------------------------------------------------------


# pynetdicom drops the socket of a refused connection without closing it: see the same mark in
# test_interop_retrieve.py.
@pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning")
def test_a_storescp_killed_after_two_instances_fails_the_rest_without_hanging(
    own_sample: Sample, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    study, uids = largest_study(own_sample)
    port, out, pid_file = free_port(), tmp_path / "received", tmp_path / "storescp.pid"
    out.mkdir()
    # With --exec-sync storescp runs the command after it answered each C-STORE: once two
    # instances are stored it dies (SIGKILL) with the third on its way.
    die_at_two = f'[ "$(ls {out} | wc -l)" -ge 2 ] && kill -9 "$(cat {pid_file})"; true'
    process = subprocess.Popen(
        [dcmtk("storescp"), "-od", str(out), "-xs", "-xcr", die_at_two, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pid_file.write_text(str(process.pid))
        assert listening(port), "storescp did not start listening"
        entry = {"host": "127.0.0.1", "port": port}
        server = start_server(own_sample.root, ae_table={"DEST": entry})
        last, failed = final(move(server, identifier("STUDY", StudyInstanceUID=study), "DEST"))
        assert process.wait(SECONDS) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(SECONDS)
    # Two answered; the third found the association gone; the rest found nobody (the broken
    # association had delivered, so fsqr tried a new one for them: refused).
    assert last.Status == status.SUBOPS_WITH_FAILURES
    assert counts(last)[1:] == (2, len(uids) - 2, 0)
    stored = {p.name.split(".", 1)[1] for p in out.iterdir()}  # storescp names them CT.<UID>
    assert sorted(failed_uids(failed)) == sorted(set(uids) - stored)
    assert_serving_the_truth(server.port, own_sample.root)


def test_a_destination_that_aborts_mid_transfer_gets_that_instance_and_the_rest_again(
    own_sample: Sample, start_server: Callable[..., Server], destination: Callable[..., Destination]
) -> None:
    study, uids = largest_study(own_sample)
    dest = destination()
    aborted: list[str] = []

    def abort_the_third(event: Any) -> int:
        if len(dest.received) == 2 and not aborted:
            aborted.append(str(event.request.AffectedSOPInstanceUID))
            event.assoc.abort()  # A-ABORT instead of the C-STORE response
            return 0xA700
        return dest._on_store(event)

    dest._server.unbind(evt.EVT_C_STORE, dest._on_store)
    dest._server.bind(evt.EVT_C_STORE, abort_the_third)
    server = start_server(own_sample.root, ae_table={"DEST": dest.entry()})
    last, _ = final(move(server, identifier("STUDY", StudyInstanceUID=study), "DEST"))
    # The instance the abort broke on is sent once more, over the new association.
    assert last.Status == status.SUCCESS
    assert counts(last) == (None, len(uids), 0, 0)
    assert set(dest.received) == set(uids)
    assert dest.associations == 2
    assert_serving_the_truth(server.port, own_sample.root)


# -- the requestor aborts mid-move ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["a-abort", "connection-closed"])
def test_a_requestor_that_goes_away_mid_move_ends_the_sub_association(
    own_sample: Sample,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    how: str,
) -> None:
    study, uids = largest_study(own_sample)
    dest = destination(gate=threading.Event())  # holds the first C-STORE until the gate opens
    server = start_server(own_sample.root, ae_table={"DEST": dest.entry()})
    assoc = associate(server)
    assoc.send_c_move(identifier("STUDY", StudyInstanceUID=study), "DEST", STUDY_MOVE)
    assert dest.arrived.wait(SECONDS)
    if how == "a-abort":
        assoc.abort()
    else:
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    assert dest.gate is not None
    dest.gate.set()
    # fsqr notices before the next instance, and releases the sub-association.
    assert wait_until(lambda: not dest._server.active_associations, SECONDS)
    assert wait_until(lambda: not server._listener.active_associations, SECONDS)
    assert len(dest.received) < len(uids)
    assert_serving_the_truth(server.port, own_sample.root)


# -- SIGTERM during a C-STORE --------------------------------------------------------------------


def test_sigterm_during_a_c_store_exits_cleanly_and_the_next_start_serves_complete_files(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    running = Running(str(root), "--port", "0", "--host", "127.0.0.1", cwd=tmp_path)
    try:
        port = running.wait_listening()
        small, big = instance(n=1), instance(n=2, rows=2048, columns=2048)  # 8 MiB of pixels
        pdus = 0
        exited = threading.Event()

        def sigterm_in_flight(event: Any) -> None:
            nonlocal pdus
            pdus += 1
            if pdus == 30:  # the big instance is under way
                running.process.send_signal(signal.SIGTERM)
                exited.set() if running.process.wait(SECONDS) is not None else None

        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="FSQR")
        assert assoc.is_established
        assert assoc.send_c_store(small).Status == status.SUCCESS
        assoc.bind(evt.EVT_PDU_SENT, sigterm_in_flight)
        answer = assoc.send_c_store(big)
        assert exited.is_set()
        assert "Status" not in answer  # no answer: the server stopped with the store in flight
        if assoc.is_established:
            assoc.abort()
        # pynetdicom skips close() when shutdown() fails on a connection the peer reset.
        transport = assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.socket.close()
    finally:
        code = running.stop()
    assert code == 0, "".join(running.lines)
    assert "stopped" in "".join(running.lines)
    assert not list(root.rglob(f"{TEMP_PREFIX}*"))
    with Server(root=str(root), ae_title="FSQR") as again:
        assert again.index.paths() == [str(p) for p in root.rglob("*.dcm")]
        assert again.index.instance(small.SOPInstanceUID) is not None
        assert again.index.instance(big.SOPInstanceUID) is None
        assert_serving_the_truth(again.port, root)


# -- the disk fills up while storing -------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs), or skip where mounting is not permitted."""
    folder = tmp_path / "small"
    folder.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a 1 MiB tmpfs needs root (ENOSPC is injected in test_storage.py)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:  # e.g. a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_answers_a700_leaves_nothing_and_the_server_goes_on(
    small_disk: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(small_disk)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR")
    assert assoc.is_established
    try:
        too_big = instance(n=1, rows=1024, columns=1024)  # 2 MiB on a 1 MiB file system
        answer = assoc.send_c_store(too_big)
        assert answer.Status == status.OUT_OF_RESOURCES  # PS3.4 B.2.3: Refused: Out of Resources
        assert "No space left" in answer.ErrorComment
        assert not [p for p in small_disk.rglob("*") if p.is_file()]
        fits = instance(n=2)
        assert assoc.send_c_store(fits).Status == status.SUCCESS
    finally:
        assoc.release()
    assert server.index.instance(too_big.SOPInstanceUID) is None
    assert server.index.instance(fits.SOPInstanceUID) is not None
    assert_serving_the_truth(server.port, small_disk)


# -- a file changes while it is being sent -------------------------------------------------------


def replace_with_another(path: Path, other: Path) -> None:
    """What a copy tool that writes a temporary file and renames it does."""
    temp = path.with_name("incoming.tmp")
    shutil.copyfile(other, temp)
    os.replace(temp, path)


def truncate_in_place(path: Path, other: Path) -> None:
    """What `cp other path` does in its first moment: the file cut to nothing, then rewritten."""
    with open(path, "r+b") as fp:
        fp.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    "case",
    [
        (op, change)
        for op in ("move", "get")
        for change in (replace_with_another, truncate_in_place)
    ],
    ids=["move-replaced", "move-truncated", "get-replaced", "get-truncated"],
)
def test_a_file_changed_during_its_send_fails_or_goes_whole_and_the_index_follows(
    own_sample: Sample,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, Callable[[Path, Path], None]],
) -> None:
    operation, change = case
    study, uids = largest_study(own_sample)
    victim, other = sorted(uids)[:2]
    paths = own_sample.paths()
    whole = {uid: retrieve_tests.data_set_bytes(paths[uid])[1] for uid in uids}
    prepare = retrieve.prepare

    def change_after_the_check(instance: Any, accepted: Any, index: Any) -> retrieve.Outgoing:
        outgoing = prepare(instance, accepted, index)
        if instance.sop_instance_uid == victim:  # checked and ready to go: now it changes
            change(paths[victim], paths[other])
        return outgoing

    monkeypatch.setattr(retrieve, "prepare", change_after_the_check)
    dest = destination()
    server = start_server(own_sample.root, ae_table={"DEST": dest.entry()}, watch="off")
    request = identifier("STUDY", StudyInstanceUID=study)
    if operation == "move":
        last, failed = final(move(server, request, "DEST"))
        received = dest.received
    else:
        # Offered as stored, so that the files are streamed rather than read whole to convert.
        monkeypatch.setattr(retrieve_tests, "ALL_TRANSFER_SYNTAXES", [ExplicitVRLittleEndian])
        sop_classes = sorted({own_sample.by_uid[u].instance.sop_class_uid for u in uids})
        responses, received = retrieve_tests.get(server, request, sop_classes)
        last, failed = final(responses)
    assert last.Status == status.SUBOPS_WITH_FAILURES
    assert counts(last)[1:] == (len(uids) - 1, 1, 0)
    assert failed_uids(failed) == [victim]
    # Never a half file: what arrived is a whole data set, as it was checked.
    for uid, got in received.items():
        assert got.data == whole[uid], f"{uid}: not the whole data set"
    assert set(received) <= set(uids)
    assert set(received) >= set(uids) - {victim}
    # The index follows the file as it now is, without a watcher.
    assert server.index.instance(victim) is None
    assert_serving_the_truth(server.port, own_sample.root, broken_by_the_test=paths[victim])


def cut_the_second_file_while_it_is_sent(
    monkeypatch: pytest.MonkeyPatch, paths: dict[str, Path]
) -> list[str]:
    """Cut the file of the second C-STORE request sent short, once its command has gone and
    before its data set is read; returns the SOP Instance UID it cut, once it has."""
    cut: list[str] = []
    requests = 0
    encode_msg = C_STORE_RQ.encode_msg

    def cut_while_sending(message: C_STORE_RQ, context_id: int, max_pdu: int) -> Iterator[Any]:
        nonlocal requests
        for n, pdata in enumerate(encode_msg(message, context_id, max_pdu)):
            yield pdata
            if n == 0:
                requests += 1
                if requests == 2:
                    cut.append(str(message.command_set.AffectedSOPInstanceUID))
                    path = paths[cut[0]]
                    with open(path, "r+b") as fp:
                        fp.truncate(path.stat().st_size // 2)

    monkeypatch.setattr(C_STORE_RQ, "encode_msg", cut_while_sending)
    # Stream every file, as one too large for a single PDU is: a small one is read whole, and
    # checked, before it is sent (see test_retrieve's data_set_bytes tests).
    monkeypatch.setattr(links, "room_in_one_pdu", lambda assoc, command: 0)
    return cut


def test_a_file_cut_short_while_a_c_move_reads_it_is_never_delivered_as_complete(
    own_sample: Sample,
    start_server: Callable[..., Server],
    destination: Callable[..., Destination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study, uids = largest_study(own_sample)
    paths = own_sample.paths()
    whole = {uid: retrieve_tests.data_set_bytes(paths[uid])[1] for uid in uids}
    dest = destination()
    cut = cut_the_second_file_while_it_is_sent(monkeypatch, paths)
    server = start_server(own_sample.root, ae_table={"DEST": dest.entry()}, watch="off")
    last, failed = final(move(server, identifier("STUDY", StudyInstanceUID=study), "DEST"))
    (victim,) = cut
    # The sub-association was aborted before the last fragment; a new one took the rest.
    assert last.Status == status.SUBOPS_WITH_FAILURES
    assert counts(last)[1:] == (len(uids) - 1, 1, 0)
    assert failed_uids(failed) == [victim]
    assert set(dest.received) == set(uids) - {victim}
    assert all(got.data == whole[uid] for uid, got in dest.received.items())
    assert dest.associations == 2
    assert server.index.instance(victim) is None
    assert_serving_the_truth(server.port, own_sample.root, broken_by_the_test=paths[victim])


def test_a_file_cut_short_while_a_c_get_reads_it_aborts_the_association(
    own_sample: Sample, start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    study, uids = largest_study(own_sample)
    paths = own_sample.paths()
    whole = {uid: retrieve_tests.data_set_bytes(paths[uid])[1] for uid in uids}
    cut = cut_the_second_file_while_it_is_sent(monkeypatch, paths)
    # Offered as stored, so that the files are streamed rather than read whole to convert.
    monkeypatch.setattr(retrieve_tests, "ALL_TRANSFER_SYNTAXES", [ExplicitVRLittleEndian])
    server = start_server(own_sample.root, watch="off")
    sop_classes = sorted({own_sample.by_uid[u].instance.sop_class_uid for u in uids})
    request = identifier("STUDY", StudyInstanceUID=study)
    responses, received = retrieve_tests.get(server, request, sop_classes)
    (victim,) = cut
    # The C-GET's only association carried the half-sent instance: it was aborted, so the SCU
    # has the first instance, whole, and no final response (PS3.8 7.3: an abort ends it all).
    assert all(rsp.get("Status") != status.SUCCESS for rsp, _ in responses)
    assert len(received) == 1
    assert victim not in received
    assert all(got.data == whole[uid] for uid, got in received.items())
    assert wait_until(lambda: not server._listener.active_associations, SECONDS)
    assert server.index.instance(victim) is None
    assert_serving_the_truth(server.port, own_sample.root, broken_by_the_test=paths[victim])


def test_stop_waits_for_a_c_store_being_written(
    tmp_path: Path, start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(tmp_path, watch="off")
    writing, written = threading.Event(), threading.Event()
    write_atomic = storage.write_atomic

    def write_once_aborted(*args: Any, **kwargs: Any) -> os.stat_result:
        writing.set()
        association = threading.current_thread()  # pynetdicom runs handlers in its thread
        assert wait_until(lambda: association.is_aborted, SECONDS)  # type: ignore[attr-defined]
        try:
            return write_atomic(*args, **kwargs)
        finally:
            written.set()

    monkeypatch.setattr(storage, "write_atomic", write_once_aborted)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR")
    assert assoc.is_established
    sending = threading.Thread(target=assoc.send_c_store, args=(instance(),))
    sending.start()
    assert writing.wait(SECONDS)
    server.stop()  # what SIGTERM does; the process could end right after this returns
    assert written.is_set(), "stop() returned with a C-STORE still being written"
    sending.join(SECONDS)
    (stored,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert isinstance(read_header(str(stored)), Parsed)
