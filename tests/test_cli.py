"""`fsqr serve` as a user runs it: a real process, its log lines, its exit codes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import SAMPLE_DATA

LISTENING = re.compile(r"listening on (?P<host>[\d.]+):(?P<port>\d+)")


class Running:
    """An `fsqr serve` process and the lines it logged so far."""

    def __init__(self, *args: str, cwd: Path, prefix: Sequence[str] = ()) -> None:
        """`prefix`: a command that runs fsqr, such as setpriv with its options."""
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "fsqr", "serve", *args],
            cwd=cwd,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = LISTENING.search(line)
            if found:
                self.port = int(found["port"])
                self._ready.set()
        self._ready.set()  # the process ended

    def wait_listening(self, timeout: float = 30) -> int:
        assert self._ready.wait(timeout), "no 'listening on' line in time"
        assert self.port is not None, "".join(self.lines)
        return self.port

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=20)
        self._reader.join(timeout=5)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Running]]:
    started: list[Running] = []

    class Tracked(Running):
        def __init__(self, *args: str, cwd: Path = tmp_path) -> None:
            super().__init__(*args, cwd=cwd)
            started.append(self)

    yield Tracked
    for running in started:
        if not running.process.stderr or not running.process.stderr.closed:
            running.stop(signal.SIGKILL)


def echo(port: int) -> int:
    ae = AE(ae_title="CLITEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port)
    try:
        assert assoc.is_established
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_serve_on_a_free_port_answers_and_stops_cleanly(serve: type[Running], signum: int) -> None:
    running = serve(str(SAMPLE_DATA), "--port", "0", "--host", "127.0.0.1")
    port = running.wait_listening()
    assert port > 0
    assert echo(port) == 0x0000
    assert running.stop(signum) == 0
    log = "".join(running.lines)
    assert "44 instances" in log
    assert re.search(r"C-ECHO from CLITEST@127\.0\.0\.1:\d+: 0000, [\d.]+ ms", log), log
    assert "Traceback" not in log


def test_the_config_in_the_working_directory_is_used(serve: type[Running], tmp_path: Path) -> None:
    (tmp_path / "fsqr.yaml").write_text(
        f"ae_title: FROMFILE\nhost: 127.0.0.1\nport: 0\nroot: {SAMPLE_DATA.as_posix()}\n"
    )
    running = serve("--ae-title", "FROMFLAG")
    running.wait_listening()
    assert running.stop() == 0
    assert "FROMFLAG listening on 127.0.0.1:" in "".join(running.lines)  # flag beats file


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("port: eleven\n", "fsqr.yaml: port:"),
        ("prot: 104\n", "fsqr.yaml: prot:"),
        ("ae_table:\n  X: {host: 1.2.3.4, port: 0}\n", "fsqr.yaml: ae_table.X.port:"),
        ("port: [1\n", "invalid YAML"),
        ("faults:\n  - {operation: find, status: 0124}\n", "fsqr.yaml: faults[0].status:"),
        # found wrong only once --port is applied: still the file's key, and the file, named
        ("index_snapshot: ./state\n", "fsqr.yaml and the command line: index_snapshot:"),
    ],
    ids=[
        "wrong-type",
        "unknown-key",
        "bad-peer-port",
        "unreadable-yaml",
        "bad-fault-status",
        "with-the-command-line",
    ],
)
def test_a_bad_config_exits_2_with_one_line(tmp_path: Path, config: str, expected: str) -> None:
    (tmp_path / "fsqr.yaml").write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "fsqr", "serve", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("root", "config", "expected"),
    [
        ("nowhere", "", "root folder"),
        # As a missing root: every worklist query would otherwise find nothing, and say Success.
        ("data", "worklist: ./no-such-folder\n", "worklist folder"),
    ],
    ids=["root", "worklist"],
)
def test_a_missing_folder_exits_2(tmp_path: Path, root: str, config: str, expected: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "fsqr.yaml").write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "fsqr", "serve", root, "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert expected in done.stderr and "does not exist" in done.stderr
    assert "(settings from fsqr.yaml and the command line)" in done.stderr  # where to look
    assert "Traceback" not in done.stderr


def test_json_logs_are_one_object_per_line(serve: type[Running]) -> None:
    running = serve(str(SAMPLE_DATA), "--port", "0", "--host", "127.0.0.1", "--log-format", "json")
    port = running.wait_listening()
    assert echo(port) == 0x0000
    assert running.stop() == 0
    records = [json.loads(line) for line in running.lines if line.strip()]
    assert any("listening on 127.0.0.1:" in r["message"] for r in records)
    assert any(r["message"].startswith("C-ECHO from CLITEST") for r in records)
    assert {"time", "level", "logger", "message"} <= set(records[0])
    # UTC with its zone, to the millisecond, as each operation's `started` is.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", records[0]["time"])
    # The request's record (fsqr/operations.py) and the association's summary, as objects.
    (echoed,) = [r["operation"] for r in records if "operation" in r]
    assert (echoed["operation"], echoed["calling_ae"], echoed["status"]) == (
        "C-ECHO",
        "CLITEST",
        "0000",
    )
    (summary,) = [r["association"] for r in records if "association" in r]
    assert (summary["calling_ae"], summary["operations"]) == ("CLITEST", 1)


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fsqr", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert re.fullmatch(r"fsqr \d+\.\d+\.\d+\n", done.stdout)


def test_the_command_line_module_imports_no_dicom_library_until_a_command_runs() -> None:
    """The start-up scan's workers import the `fsqr` script's main module before they read a
    file; with the whole server behind it, each took twice as long to start."""
    code = (
        "import sys, fsqr.cli; "
        "sys.exit(' '.join(m for m in ('pydicom', 'pynetdicom') if m in sys.modules) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("command", "says"),
    [("serve", "C-ECHO, C-FIND, C-MOVE, C-GET and C-STORE"), ("ls", "and lint it; exits 1")],
)
def test_each_command_describes_itself(command: str, says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fsqr", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert says in " ".join(done.stdout.split())  # argparse wraps lines
