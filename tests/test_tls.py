"""DICOM TLS (PS3.15 B.9) against a running server: server authentication, mutual TLS, C-MOVE to a
destination that requires TLS; with pynetdicom and DCMTK's echoscu/findscu. Each test run makes
its own CA and certificates with the openssl command-line tool."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from fsqr import status
from fsqr.keys import Level
from fsqr.server import Server
from tests.conftest import dcmtk
from tests.helpers import wait_until

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove


@dataclass(frozen=True)
class Pki:
    """A test CA and two certificates it signed, for 127.0.0.1 and localhost."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        if with_certificate:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command-line tool is needed to make test certificates")
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca = folder / "ca.key", folder / "ca.crt"
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key)),
        *("-out", str(ca), "-days", "2", "-subj", "/CN=fsqr test CA"),
    )
    extensions = folder / "leaf.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="ascii")
    made = {}
    for name in ("server", "client"):
        key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
        _openssl(
            *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr)),
            *("-subj", f"/CN=fsqr test {name}"),
        )
        _openssl(
            *("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key)),
            *("-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions)),
        )
        made[name] = (cert, key)
    return Pki(ca, *made["server"], *made["client"])


def tls_settings(pki: Pki, *, mutual: bool) -> dict[str, Any]:
    tls = {"certificate": str(pki.server_cert), "key": str(pki.server_key)}
    return {"tls": {**tls, "ca": str(pki.ca)} if mutual else tls}


def echo(server: Server, context: ssl.SSLContext | None, hostname: str = "localhost") -> Any:
    """The C-ECHO response's status, or None when no association was established."""
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(Verification)
    tls_args = (context, hostname) if context is not None else None
    sockets: list[socket.socket] = []
    keep = [(evt.EVT_CONN_OPEN, lambda event: sockets.append(event.assoc.dul.socket.socket))]
    assoc = ae.associate(
        "127.0.0.1", server.port, ae_title="FSQR", tls_args=tls_args, evt_handlers=keep
    )
    if not assoc.is_established:
        for sock in sockets:  # pynetdicom leaves it open when the peer hangs up unanswered
            sock.close()
        return None
    answer = assoc.send_c_echo()
    assoc.release()
    return int(answer.Status)


def test_tls_server_answers_tls_and_refuses_plain_tcp(
    sample_tree: Path, start_server: Callable[..., Server], pki: Pki
) -> None:
    server = start_server(sample_tree, **tls_settings(pki, mutual=False))
    assert echo(server, pki.client_context(with_certificate=False)) == status.SUCCESS
    assert echo(server, None) is None  # no TLS: no association
    assert echo(server, pki.client_context(with_certificate=False)) == status.SUCCESS


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    sample_tree: Path, start_server: Callable[..., Server], pki: Pki
) -> None:
    server = start_server(sample_tree, **tls_settings(pki, mutual=True))
    assert echo(server, pki.client_context(with_certificate=False)) is None
    assert echo(server, pki.client_context(with_certificate=True)) == status.SUCCESS


def test_a_failed_handshake_is_one_line_saying_why(
    sample_tree: Path,
    start_server: Callable[..., Server],
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A caller without the certificate mutual TLS asks for: a warning naming the failure, no
    traceback (pynetdicom's, when the handshake was left to its first read)."""
    server = start_server(sample_tree, **tls_settings(pki, mutual=True))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=20)  # a bare TLS client
    context = pki.client_context(with_certificate=False)
    with contextlib.suppress(OSError), context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.recv(1)  # TLS 1.3: the server's refusal comes as an alert after the client's handshake
    assert wait_until(lambda: "TLS handshake with 127.0.0.1:" in caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_tls_caller_silent_after_the_handshake_is_closed_after_the_acse_timeout(
    sample_tree: Path, start_server: Callable[..., Server], pki: Pki
) -> None:
    """As a plain one is (timeouts.acse), not after the network timeout."""
    settings = tls_settings(pki, mutual=False)
    server = start_server(sample_tree, **settings, timeouts={"acse": 0.5, "network": 60})
    context = pki.client_context(with_certificate=False)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:  # handshake done
        assert sock.recv(1) == b""  # then closed by fsqr, long before the 60 s


def test_a_tls_file_that_cannot_be_loaded_is_named(sample_tree: Path, pki: Pki) -> None:
    """Before the scan, in the one line `fsqr serve` prints: which file, not only why."""
    missing = pki.server_cert.with_name("nowhere.crt")
    server = Server(root=sample_tree, tls={"certificate": str(missing), "key": str(pki.server_key)})
    with pytest.raises(OSError, match=f"tls: cannot load {missing} with {pki.server_key}"):
        server.start()
    server = Server(
        root=sample_tree, tls={**tls_settings(pki, mutual=False)["tls"], "ca": str(missing)}
    )
    with pytest.raises(OSError, match=f"tls: cannot load the CAs in {missing}"):
        server.start()
    assert server.index.counts().files == 0


def test_a_ca_without_a_certificate_warns_that_callers_are_not_checked(
    sample_tree: Path,
    start_server: Callable[..., Server],
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Valid (tls.ca then checks C-MOVE destinations only), but easily taken for mutual TLS."""
    start_server(sample_tree, tls={"ca": str(pki.ca)})
    assert "fsqr listens without TLS" in caplog.text


def test_a_silent_connection_does_not_hold_up_other_tls_callers(
    sample_tree: Path, start_server: Callable[..., Server], pki: Pki
) -> None:
    """The handshake runs in the association's thread, not in the thread that accepts."""
    server = start_server(sample_tree, **tls_settings(pki, mutual=True))
    with socket.create_connection(("127.0.0.1", server.port)):  # connects, never says hello
        assert echo(server, pki.client_context(with_certificate=True)) == status.SUCCESS


@pytest.mark.dcmtk
def test_dcmtk_echoscu_and_findscu_over_mutual_tls(
    sample_tree: Path, start_server: Callable[..., Server], pki: Pki
) -> None:
    server = start_server(sample_tree, **tls_settings(pki, mutual=True))
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
    where = ["-aec", "FSQR", "127.0.0.1", str(server.port)]
    echoed = subprocess.run(
        [dcmtk("echoscu"), *tls, *where], check=False, capture_output=True, text=True, timeout=60
    )
    assert echoed.returncode == 0, echoed.stdout + echoed.stderr
    plain = subprocess.run(
        [dcmtk("echoscu"), *where], check=False, capture_output=True, text=True, timeout=60
    )
    assert plain.returncode != 0
    keys = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    found = subprocess.run(
        [dcmtk("findscu"), "-v", *tls, *keys, *where],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = found.stdout + found.stderr
    assert found.returncode == 0, output
    assert "Received Final Find Response (Success)" in output
    assert output.count("Find Response: 1 (Pending)") == 1


@pytest.fixture
def tls_storage_scp(pki: Pki) -> Iterator[tuple[int, list[str]]]:
    """A Storage SCP that accepts only TLS: its port, and the SOP Instance UIDs it received."""
    received: list[str] = []
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title="TLSDEST")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    listener = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        ssl_context=pki.server_context(),
    )
    yield int(listener.server_address[1]), received
    listener.shutdown()


def test_c_move_to_a_tls_destination(
    sample_tree: Path,
    start_server: Callable[..., Server],
    pki: Pki,
    tls_storage_scp: tuple[int, list[str]],
) -> None:
    port, received = tls_storage_scp
    peers = {"TLSDEST": {"host": "127.0.0.1", "port": port, "tls": True}}
    server = start_server(sample_tree, ae_table=peers, **tls_settings(pki, mutual=True))
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(FIND)
    ae.add_requested_context(MOVE)
    context = pki.client_context(with_certificate=True)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR", tls_args=(context, "localhost"))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    studies = [a for _, a in assoc.send_c_find(query, FIND) if a is not None]
    study = studies[0]
    move = Dataset()
    move.QueryRetrieveLevel = "STUDY"
    move.StudyInstanceUID = study.StudyInstanceUID
    final = list(assoc.send_c_move(move, "TLSDEST", MOVE))[-1][0]
    assoc.release()
    assert final.Status == status.SUCCESS
    expected = int(study.NumberOfStudyRelatedInstances)
    assert final.NumberOfCompletedSuboperations == expected
    assert len(received) == expected


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        # listed without tls: true, so fsqr speaks plain DICOM to a TLS-only peer
        ({}, "connection closed without an answer"),
        # tls: true, but its certificate is signed by a CA fsqr was not told to trust
        ({"tls": True}, "connection refused, or TLS handshake failed"),
    ],
    ids=["plain-to-tls", "untrusted-certificate"],
)
# pynetdicom drops the socket of a connection whose TLS handshake failed without closing it, as
# it does a refused one (see test_interop_retrieve): a ResourceWarning that is not fsqr's to fix.
@pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning")
def test_a_tls_destination_fsqr_cannot_reach_is_a702_saying_why(
    sample_tree: Path,
    start_server: Callable[..., Server],
    tls_storage_scp: tuple[int, list[str]],
    entry: dict[str, Any],
    reason: str,
) -> None:
    """The reason pynetdicom does not give, told by how soon it failed: not a timeout."""
    port, received = tls_storage_scp
    peers = {"TLSDEST": {"host": "127.0.0.1", "port": port, **entry}}
    server = start_server(sample_tree, ae_table=peers, timeouts={"acse": 30, "connect": 30})
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(MOVE)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FSQR")
    move = Dataset()
    move.QueryRetrieveLevel = "STUDY"
    move.StudyInstanceUID = server.index.entities(Level.STUDY, {})[0].study.study_uid
    final = list(assoc.send_c_move(move, "TLSDEST", MOVE))[-1][0]
    assoc.release()
    assert final.Status == status.OUT_OF_RESOURCES_SUBOPS
    assert final.ErrorComment.startswith(reason), final.ErrorComment
    assert received == []
