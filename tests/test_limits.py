"""Limits against a running server: C-FIND responses per query (A700, PS3.4 C.4.1.1.4),
simultaneous associations, the PDU size we announce, and the ACSE and network timeouts."""

from __future__ import annotations

import select
import socket
import socketserver
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from fsqr import status
from fsqr.server import Server
from tests.helpers import wait_until

FIND = StudyRootQueryRetrieveInformationModelFind


def associate(server: Server) -> Any:
    ae = AE(ae_title="LIMITS")
    ae.add_requested_context(Verification)
    ae.add_requested_context(FIND)
    return ae.associate("127.0.0.1", server.port, ae_title="FSQR")


def all_studies(assoc: Any) -> list[tuple[Dataset, Dataset | None]]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    return list(assoc.send_c_find(query, FIND))


def test_a_c_find_past_its_cap_ends_with_a700_after_the_cap(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, max_find_responses=3)  # the sample has 7 studies
    assoc = associate(server)
    responses = all_studies(assoc)
    assoc.release()
    assert [int(s.Status) for s, _ in responses] == [0xFF00] * 3 + [status.OUT_OF_RESOURCES]
    assert "narrow the query" in responses[-1][0].ErrorComment


def test_a_c_find_within_its_cap_succeeds(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, max_find_responses=7)
    assoc = associate(server)
    responses = all_studies(assoc)
    assoc.release()
    assert len(responses) == 8 and responses[-1][0].Status == status.SUCCESS


def test_associations_beyond_the_maximum_are_rejected(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, max_associations=1)
    first = associate(server)
    assert first.is_established
    second = associate(server)
    answer = second.acceptor.primitive
    # PS3.8 9.3.4: rejected-transient, by the service provider (presentation), local limit
    assert second.is_rejected and (answer.result, answer.result_source, answer.diagnostic) == (
        2,
        3,
        2,
    )
    first.release()
    # The slot is free once the server's thread for `first` has ended, just after its release.
    assert wait_until(lambda: not server._listener.active_associations)
    third = associate(server)
    assert third.is_established
    third.release()


def test_a_burst_of_connections_waits_to_be_accepted_instead_of_being_dropped(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """With pynetdicom's listen backlog of 5, the sixth of a burst of connections has its SYN
    dropped while the server is busy, and waits a second or more to try again."""
    server = start_server(sample_tree)
    socketserver.BaseServer.shutdown(server._listener)  # busy: accepts nothing for now
    burst = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(40)]
    try:
        for client in burst:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", server.port))
        connected: set[socket.socket] = set()
        deadline = time.monotonic() + 0.9  # a dropped SYN is sent again only after 1 s
        while True:  # looks at least once, however late this process gets to run
            _, writable, _ = select.select([], [c for c in burst if c not in connected], [], 0.05)
            connected.update(writable)
            if len(connected) == len(burst) or time.monotonic() >= deadline:
                break
        assert len(connected) == len(burst)
    finally:
        for client in burst:
            client.close()


def test_the_maximum_pdu_size_is_announced(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, max_pdu=65536)
    assoc = associate(server)
    assert assoc.acceptor.maximum_length == 65536
    assoc.release()


def test_a_connection_that_never_requests_an_association_is_closed(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, timeouts={"acse": 0.5})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
        assert silent.recv(1) == b""  # closed by fsqr after the ACSE timeout, not by us


def test_an_idle_association_is_ended_after_the_network_timeout(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(sample_tree, timeouts={"network": 0.5})
    assoc = associate(server)
    assert assoc.is_established
    assert wait_until(lambda: not assoc.is_established, timeout=10)
    assert assoc.is_aborted or assoc.is_released


def test_stopping_the_server_ends_open_associations(
    sample_tree: Path, start_server: Callable[..., Server]
) -> None:
    """Else SIGTERM would leave `fsqr serve` running until each idle association timed out."""
    server = start_server(sample_tree)
    assoc = associate(server)
    assert assoc.is_established
    server.stop()
    assert wait_until(lambda: assoc.is_aborted, timeout=10)
