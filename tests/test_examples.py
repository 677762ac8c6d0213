"""Every example in examples/ runs against a server over the sample data, and so does the DCMTK
command line its docstring shows as the equivalent."""

from __future__ import annotations

import ast
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fsqr.index import SeriesView
from fsqr.keys import Level
from fsqr.server import Server
from fsqr.synthetic import write_sample_data
from tests.conftest import REPO, dcmtk

EXAMPLES = REPO / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dcmtk_command(script: str) -> list[str]:
    """The `$ ...` command line in a script's docstring, continuation lines joined."""
    doc = ast.get_docstring(ast.parse((EXAMPLES / script).read_text(encoding="utf-8"))) or ""
    text = doc.split("$ ", 1)[1].replace("\\\n", " ")
    return shlex.split(text.splitlines()[0])


@pytest.fixture
def served(start_server: Callable[..., Server], tmp_path: Path) -> tuple[Server, int]:
    """A server over a copy of the sample data that knows the examples' AE title."""
    root = tmp_path / "data"
    write_sample_data(root)
    my_port = free_port()
    peers = {"EXAMPLE": {"host": "127.0.0.1", "port": my_port}}
    return start_server(root, ae_table=peers), my_port


def placeholders(server: Server, my_port: int, out: Path) -> dict[str, str]:
    series = [v for v in server.index.candidates(Level.SERIES, {}) if isinstance(v, SeriesView)]
    first = series[0]
    return {
        "host": "127.0.0.1",
        "port": str(server.port),
        "my_port": str(my_port),
        "out": str(out),
        "study": first.study.study_uid,
        "series": first.series.series_uid,
        "file": str(
            REPO
            / "sample_data"
            / "FSQR0002"
            / "20230920_MR_KNEE_LEFT"
            / "SE01_PD_FS_CORONAL"
            / "IMG0001.dcm"
        ),
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script: str, served: tuple[Server, int], tmp_path: Path) -> None:
    server, my_port = served
    out = tmp_path / "out"
    args = ["127.0.0.1", str(server.port)]
    if script in ("move_to_myself.py", "get.py"):
        args += ["--out", str(out)]
    if script == "move_to_myself.py":
        args += ["--my-port", str(my_port)]
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if script in ("move_to_myself.py", "get.py"):
        assert list(out.glob("*.dcm")), done.stdout


@pytest.mark.dcmtk
@pytest.mark.parametrize("script", SCRIPTS)
def test_dcmtk_equivalent_runs(script: str, served: tuple[Server, int], tmp_path: Path) -> None:
    server, my_port = served
    out = tmp_path / "out"
    out.mkdir()
    tool, *args = dcmtk_command(script)
    values = placeholders(server, my_port, out)
    done = subprocess.run(
        [dcmtk(tool), *(a.format(**values) for a in args)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if tool in ("movescu", "getscu"):
        assert list(out.iterdir()), "nothing received"
