"""fsqr embedded in another program: `from fsqr import Server`."""

from __future__ import annotations

import socket
import socketserver
import threading
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from fsqr import Server
from fsqr.synthetic import write_sample_data


def test_a_context_manager_on_a_free_local_port(tmp_path: Path) -> None:
    write_sample_data(tmp_path)
    peers = {"ME": {"host": "127.0.0.1", "port": 11113}}
    with Server(root=tmp_path, ae_title="EMBEDDED", ae_table=peers) as server:
        assert (server.host, server.ae_title) == ("127.0.0.1", "EMBEDDED")
        assert server.port > 0
        assert server.index.counts().instances == 44
        assert server.config.peer("ME") is not None
        ae = AE()
        ae.add_requested_context(Verification)
        assoc = ae.associate(server.host, server.port, ae_title="EMBEDDED")
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        port = server.port
    with socket.socket() as probe:  # stopped: nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    with pytest.raises(RuntimeError, match="EMBEDDED is not listening: start"):
        _ = server.port  # not "'NoneType' object has no attribute 'server_address'"


def test_stop_does_not_wait_for_the_accept_loop_to_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """socketserver's accept loop looks for a stop request each time its select() returns (every
    0.5 s); here it would return only once an hour, and stop() must not wait for it."""
    monkeypatch.setattr(socketserver.BaseServer.serve_forever, "__defaults__", (3600.0,))
    server = Server(root=tmp_path, watch="off").start()
    port = server.port
    stopping = threading.Thread(target=server.stop, daemon=True)
    stopping.start()
    stopping.join(30)
    assert not stopping.is_alive()
    with socket.socket() as probe:  # stopped: nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_port_taken_is_said_before_the_tree_is_read(tmp_path: Path) -> None:
    """With a million files the scan takes some 20 s: a port already taken fails before it,
    and the error names the address."""
    write_sample_data(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = Server(root=tmp_path, port=port)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: "):
            server.start()
    assert server.index.counts().files == 0  # nothing was read
    assert server.watcher is None


def test_a_server_started_again_reads_the_tree_afresh_and_runs_once(tmp_path: Path) -> None:
    paths = write_sample_data(tmp_path)
    server = Server(root=tmp_path)
    server.start()
    with pytest.raises(RuntimeError, match="running already"):
        server.start()  # would have left a second listener behind
    server.stop()
    dicom = [p for p in paths if p.suffix == ".dcm"]
    dicom[0].unlink()  # while stopped
    with server:
        assert server.index.counts().instances == 43
        assert str(dicom[0]) not in server.index.paths()
