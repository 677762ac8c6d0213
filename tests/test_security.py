"""Access control against a running server: who may associate (A-ASSOCIATE-RJ, PS3.8 9.3.4) and
what each caller may do (0124 Refused: Not Authorized, PS3.7 C.5), with pynetdicom and DCMTK."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from fsqr import security, status
from fsqr.config import config_from_mapping
from fsqr.server import Server
from tests.conftest import dcmtk, instance

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
LOCAL = {"host": "127.0.0.1", "port": 11113}


# -- the decisions, without a socket -----------------------------------------------------------


@pytest.mark.parametrize(
    ("access", "calling", "called", "address", "reason"),
    [
        ({}, "ANYONE", "ANYTHING", "10.1.2.3", None),  # the default: open
        ({"callers": "known"}, "PACS", "FSQR", "10.1.2.3", None),
        ({"callers": "known"}, "pacs", "FSQR", "127.0.0.1", 3),  # AE titles are case sensitive
        ({"callers": "known"}, " PACS ", "FSQR", "127.0.0.1", None),  # spaces do not count
        ({"check_address": True}, "PACS", "FSQR", "127.0.0.1", None),
        ({"check_address": True}, "PACS", "FSQR", "::ffff:127.0.0.1", None),  # IPv4-mapped
        ({"check_address": True}, "PACS", "FSQR", "10.1.2.3", 3),
        ({"check_address": True}, "OTHER", "FSQR", "10.1.2.3", None),  # unknown, callers: any
        ({"require_called_ae_title": True}, "PACS", "FSQR  ", "127.0.0.1", None),
        ({"require_called_ae_title": True}, "PACS", "ANY-SCP", "127.0.0.1", 7),
    ],
    ids=[
        "open",
        "known",
        "case-sensitive",
        "padded",
        "address-ok",
        "address-mapped",
        "address-wrong",
        "address-unknown-caller",
        "called-ours",
        "called-other",
    ],
)
def test_admission_follows_access_settings(
    access: dict[str, Any], calling: str, called: str, address: str, reason: int | None
) -> None:
    config = config_from_mapping({"ae_table": {"PACS": LOCAL}, "access": access})
    refusal = security.admit(config, calling, called, address, resolver=lambda host: {host})
    assert (refusal.reason if refusal else None) == reason
    if refusal:  # PS3.8 9.3.4: rejected-permanent, by the DICOM UL service-user
        assert (refusal.result, refusal.source) == (1, 1)


def test_an_unresolvable_peer_host_is_refused_when_addresses_are_checked() -> None:
    peers = {"PACS": {"host": "no-such-host.invalid", "port": 104}}
    config = config_from_mapping({"ae_table": peers, "access": {"check_address": True}})
    refusal = security.admit(config, "PACS", "FSQR", "127.0.0.1")
    assert refusal is not None and refusal.reason == security.CALLING_AE_NOT_RECOGNIZED


# -- over the network ---------------------------------------------------------------------------


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """Associate as a given AE title with echo, find, move, get and CT storage contexts."""
    opened: list[Any] = []

    def _associate(server: Server, calling: str, called: str = "FSQR") -> Any:
        ae = AE(ae_title=calling)
        for context in (Verification, FIND, MOVE, GET):
            ae.add_requested_context(context)
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        roles = [build_role(CTImageStorage, scu_role=True, scp_role=True)]
        assoc = ae.associate("127.0.0.1", server.port, ae_title=called, ext_neg=roles)
        opened.append(assoc)
        return assoc

    yield _associate
    for assoc in opened:
        if assoc.is_established:
            assoc.release()


def rejection(assoc: Any) -> tuple[int, int, int]:
    answer = assoc.acceptor.primitive
    return (answer.result, answer.result_source, answer.diagnostic)


def test_only_known_callers_may_associate(
    sample_tree: Path, start_server: Callable[..., Server], clients: Callable[..., Any]
) -> None:
    server = start_server(sample_tree, ae_table={"PACS": LOCAL}, access={"callers": "known"})
    stranger = clients(server, "STRANGER")
    assert stranger.is_rejected
    assert rejection(stranger) == (1, 1, 3)  # rejected-permanent, service-user, calling AE
    known = clients(server, "PACS")
    assert known.is_established
    assert known.send_c_echo().Status == status.SUCCESS


def test_the_called_ae_title_must_be_ours_when_required(
    sample_tree: Path, start_server: Callable[..., Server], clients: Callable[..., Any]
) -> None:
    server = start_server(sample_tree, access={"require_called_ae_title": True})
    wrong = clients(server, "ME", called="ANY-SCP")
    assert wrong.is_rejected
    assert rejection(wrong) == (1, 1, 7)  # called AE title not recognised
    assert clients(server, "ME", called="FSQR").is_established


def test_a_known_title_from_the_wrong_address_is_rejected(
    sample_tree: Path, start_server: Callable[..., Server], clients: Callable[..., Any]
) -> None:
    peers = {"FAR": {"host": "192.0.2.7", "port": 104}, "NEAR": {"host": "localhost", "port": 104}}
    server = start_server(sample_tree, ae_table=peers, access={"check_address": True})
    impostor = clients(server, "FAR")  # TEST-NET-1: it cannot be us
    assert impostor.is_rejected
    assert rejection(impostor) == (1, 1, 3)
    assert clients(server, "NEAR").is_established
    assert clients(server, "UNLISTED").is_established  # callers: any


def study_query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    return query


def final_status(responses: Iterator[tuple[Dataset, Any]]) -> int:
    answers = list(responses)
    return int(answers[-1][0].Status)


def test_each_operation_is_refused_0124_unless_allowed(
    sample_tree: Path, start_server: Callable[..., Server], clients: Callable[..., Any]
) -> None:
    peers = {"VIEWER": {**LOCAL, "allow": ["find"]}, "DEST": LOCAL}
    server = start_server(sample_tree, ae_table=peers, access={"allow": ["echo"]})
    viewer = clients(server, "VIEWER")
    assert viewer.send_c_echo().Status == status.NOT_AUTHORIZED
    assert final_status(viewer.send_c_find(study_query(), FIND)) == status.SUCCESS
    move = study_query()
    move.StudyInstanceUID = "1.2.3"
    assert final_status(viewer.send_c_move(move, "DEST", MOVE)) == status.NOT_AUTHORIZED
    assert final_status(viewer.send_c_get(move, GET)) == status.NOT_AUTHORIZED
    stored = viewer.send_c_store(instance(patient_id="SEC1"))
    assert stored.Status == status.NOT_AUTHORIZED
    assert not list(sample_tree.rglob("*SEC1*")), "a refused C-STORE wrote nothing"

    stranger = clients(server, "STRANGER")  # not in ae_table: access.allow
    assert stranger.send_c_echo().Status == status.SUCCESS
    assert final_status(stranger.send_c_find(study_query(), FIND)) == status.NOT_AUTHORIZED
    # Each refusal is recorded with the level it asked for, though refused before parsing.
    refused = [op for op in server.operations if op.status == status.NOT_AUTHORIZED]
    assert {(op.operation, op.level) for op in refused} >= {("C-FIND", "STUDY"), ("C-GET", "STUDY")}


def test_a_refusal_is_logged_with_the_peers_address(
    sample_tree: Path,
    start_server: Callable[..., Server],
    clients: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server(sample_tree, access={"callers": "known", "allow": []})
    with caplog.at_level("WARNING", logger="fsqr.handlers"):
        assert clients(server, "STRANGER").is_rejected
    assert any("STRANGER@127.0.0.1:" in r.getMessage() for r in caplog.records)


@pytest.mark.dcmtk
def test_dcmtk_echoscu_is_rejected_then_accepted(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, ae_table={"PACS": LOCAL}, access={"callers": "known"})
    echoscu = dcmtk("echoscu")
    base = [echoscu, "-aec", "FSQR", "127.0.0.1", str(server.port)]
    refused = subprocess.run(
        [*base, "-aet", "STRANGER"], check=False, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    accepted = subprocess.run([*base, "-aet", "PACS"], check=False, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


@pytest.mark.dcmtk
def test_dcmtk_findscu_is_refused_0124(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, access={"allow": ["echo"]})
    findscu = dcmtk("findscu")
    command = [findscu, "-v", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    done = subprocess.run(
        [*command, "-aec", "FSQR", "127.0.0.1", str(server.port)],
        check=False,
        capture_output=True,
        text=True,
    )
    output = done.stdout + done.stderr
    # 0124 is a general DIMSE status (PS3.7 C.5.x), not in C-FIND's table: DCMTK names it unknown,
    # and takes it as the final, failed response.
    assert "Received Final Find Response (Unknown Status: 0x124)" in output, output
