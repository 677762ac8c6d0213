"""One log line per association, without --explain: when it ends, who called from where, how
it ended, the operations served and how long it lasted; and one when it is rejected."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from fsqr.server import Server
from tests.helpers import wait_until

SECONDS = 20


def associate(server: Server, ae_title: str = "LOGGED") -> Any:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)


def lines_about(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fsqr.handlers" and words in r.getMessage()]


def ended(caplog: pytest.LogCaptureFixture, assoc: Any) -> logging.LogRecord:
    """The line that says how `assoc` ended, once it is written (from the server's thread)."""
    who = f"association with {assoc.local['ae_title']}@127.0.0.1:{assoc.local['port']} ended"
    assert wait_until(lambda: lines_about(caplog, who), SECONDS), caplog.text
    (line,) = lines_about(caplog, who)
    return line


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="fsqr")
    return caplog


def test_a_released_association_says_so_with_its_operations_and_duration(
    tmp_path: Path, start_server: Callable[..., Server], logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(tmp_path)
    assoc = associate(server)
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    line = ended(logs, assoc)
    assert ": released, 2 operations, " in line.getMessage()
    summary = line.__dict__["association"]  # the JSON log's `association` object
    assert {k: summary[k] for k in ("calling_ae", "peer", "ended", "operations")} == {
        "calling_ae": "LOGGED",
        "peer": f"127.0.0.1:{assoc.local['port']}",
        "ended": "released",
        "operations": 2,
    }
    assert summary["duration_ms"] > 0


def test_an_association_the_peer_aborts(
    tmp_path: Path, start_server: Callable[..., Server], logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(tmp_path)
    assoc = associate(server)
    assoc.abort()
    assert ": aborted by the peer, 0 operations, " in ended(logs, assoc).getMessage()


def test_an_association_fsqr_aborts(
    tmp_path: Path, start_server: Callable[..., Server], logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(tmp_path, faults=[{"operation": "find", "abort_after": 0}])
    assoc = associate(server)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    assert ": aborted by fsqr, 1 operations, " in ended(logs, assoc).getMessage()


def test_an_idle_association_times_out(
    tmp_path: Path, start_server: Callable[..., Server], logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(tmp_path, timeouts={"network": 0.3})
    assoc = associate(server)  # and then says nothing
    assert ": timed out (timeouts.network), 0 operations, " in ended(logs, assoc).getMessage()


def test_a_connection_without_an_association_request(
    tmp_path: Path, start_server: Callable[..., Server], logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(tmp_path, timeouts={"acse": 0.3})
    with socket.create_connection(("127.0.0.1", server.port)) as silent:
        port = silent.getsockname()[1]
        words = f"@127.0.0.1:{port} ended: closed before any association request"
        assert wait_until(lambda: lines_about(logs, words), SECONDS), logs.text


def test_rejections_are_logged_once_with_the_reason(
    tmp_path: Path, start_server: Callable[..., Server], logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(
        tmp_path, access={"callers": "known"}, ae_table={"FRIEND": {"host": "127.0.0.1", "port": 1}}
    )
    stranger = associate(server, "STRANGER")
    assert stranger.is_rejected
    friend = associate(server, "FRIEND")  # a witness: its line comes after the stranger's end
    friend.release()
    ended(logs, friend)
    (line,) = lines_about(logs, "STRANGER")
    assert line.levelno == logging.WARNING
    assert "rejected: calling AE title 'STRANGER' is not in ae_table" in line.getMessage()


def test_a_rejection_by_the_association_limit_is_logged(
    tmp_path: Path, start_server: Callable[..., Server], logs: pytest.LogCaptureFixture
) -> None:
    server = start_server(tmp_path, max_associations=1)
    first = associate(server, "FIRST")
    second = associate(server, "SECOND")
    assert second.is_rejected
    first.release()
    words = "association from SECOND@127.0.0.1:"
    assert wait_until(lambda: lines_about(logs, words), SECONDS), logs.text
    (line,) = lines_about(logs, words)
    assert line.levelno == logging.WARNING
    assert "rejected: Rejected Transient, Local limit exceeded" in line.getMessage()
