"""A test PACS in one fixture: fsqr's pytest plugin, registered through the `pytest11` entry point.

Any project that has fsqr installed gets two fixtures:

- `fsqr_server_factory(root, **settings)` starts a `Server` over `root` on a free port of
  127.0.0.1 and stops it when the test ends; `settings` are any keys of `fsqr.yaml`.
- `fsqr_server` is a server over an empty temporary folder, ready for C-STORE and then C-FIND.

    def test_my_viewer_finds_studies(fsqr_server_factory, tmp_path):
        peers = {"ME": {"host": "127.0.0.1", "port": 11113}}
        server = fsqr_server_factory(tmp_path, ae_table=peers)
        assert my_viewer.query("127.0.0.1", server.port, server.ae_title) == []

With `faults=[...]` the server misbehaves on purpose, and `server.operations` records every
request it served (README: "fsqr as a test double").

- `pynetdicom_keeps_its_responses` (session-wide, opt-in) runs the session's pynetdicom clients
  with fsqr's fix for pynetdicom racing itself, which now and then drops the response to a
  request a client has just sent (`fsqr.reactor.get_msg_unless_paused`); fsqr's own suite uses
  it for all its tests.

fsqr is imported only when a fixture is used, so the plugin costs nothing in other test runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fsqr.server import Server

ServerFactory = Callable[..., "Server"]


@pytest.fixture
def fsqr_server_factory() -> Iterator[ServerFactory]:
    """Start fsqr servers over folders; each is stopped when the test ends."""
    # Imported here, not at the top: pytest loads this plugin in every run of every project
    # that has fsqr installed, and most of those runs never start a server.
    from fsqr.server import Server  # noqa: PLC0415

    running: list[Server] = []

    def start(root: Path | str, **settings: Any) -> Server:
        server = Server(root=str(root), **settings).start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def fsqr_server(
    fsqr_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Server:
    """An fsqr server over a new empty folder, on a free port of 127.0.0.1."""
    return fsqr_server_factory(tmp_path_factory.mktemp("fsqr"))


@pytest.fixture(scope="session")
def pynetdicom_keeps_its_responses() -> Iterator[None]:
    """pynetdicom clients in this session keep every response (pynetdicom issues #435, #875)."""
    from fsqr.reactor import pynetdicom_keeps_its_responses  # noqa: PLC0415 - see above

    with pynetdicom_keeps_its_responses():
        yield
