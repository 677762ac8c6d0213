"""Shared fixtures: dataset factories, folders of files, a running server, DCMTK's tools."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from fsqr.config import Config, config_from_mapping
from fsqr.index import Index
from fsqr.records import Parsed
from fsqr.scan import read_header
from fsqr.server import Server
from fsqr.synthetic import make_instance, synthetic_uid, write_instance, write_sample_data
from fsqr.tree import walk

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"

# `.ci/run` sets this so that a DCMTK test which cannot find its tools fails instead of skipping.
REQUIRE_DCMTK = os.environ.get("FSQR_REQUIRE_DCMTK") == "1"


def instance(**fields: Any) -> FileDataset:
    """A small valid image; every attribute can be overridden by keyword (see make_instance)."""
    n = fields.pop("n", 1)
    defaults: dict[str, Any] = {
        "patient_id": "PID1",
        "patient_name": "DOE^JOHN",
        "study_uid": synthetic_uid("study", fields.get("patient_id", "PID1")),
        "series_uid": synthetic_uid("series", fields.get("patient_id", "PID1")),
        "sop_uid": synthetic_uid("sop", fields.get("patient_id", "PID1"), n),
        "instance_number": n,
    }
    defaults.update(fields)
    return make_instance(**defaults)


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write an instance (factory `instance`) under tmp_path/tree; returns its path."""

    def _write(relative: str, **fields: Any) -> Path:
        return write_instance(instance(**fields), tmp_path / "tree" / relative)

    (tmp_path / "tree").mkdir(exist_ok=True)
    return _write


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the sample data, written by the generator."""
    root = tmp_path_factory.mktemp("sample")
    write_sample_data(root)
    return root


def write_dicomdir(path: Path) -> Path:
    """A media directory (PS3.10 8.6): it names files; it is no instance to serve."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "MEDIA"
    ds.DirectoryRecordSequence = []
    ds.save_as(path, enforce_file_format=True)
    return path


def index_of(root: Path) -> Index:
    """The index of every file under `root`, each of which must be a servable instance."""
    index = Index()
    for path in walk(root):
        result = read_header(path)
        assert isinstance(result, Parsed), result
        index.add(result)
    return index


def server_config(root: Path, **settings: Any) -> Config:
    return config_from_mapping(
        {"root": str(root), "host": "127.0.0.1", "port": 0, "ae_title": "FSQR", **settings}
    )


@pytest.fixture
def start_server(fsqr_server_factory: Callable[..., Server]) -> Callable[..., Server]:
    """Start `Server`s on free ports over given folders (fsqr's pytest plugin, as users get it)."""

    def _start(root: Path, **settings: Any) -> Server:
        return fsqr_server_factory(root, ae_title="FSQR", **settings)

    return _start


@pytest.fixture(scope="module")
def sample_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server over a copy of the sample data, shared by a module's tests."""
    root = tmp_path_factory.mktemp("served")
    write_sample_data(root)
    with Server(server_config(root)) as server:
        yield server


def dcmtk(tool: str) -> str:
    """The path of a DCMTK command-line tool, or skip (fail under .ci/run) if it is missing.

    pynetdicom installs Python scripts with DCMTK's names (findscu, storescp, ...) that may come
    first on PATH; a tool counts only if it says it is DCMTK.
    """
    candidates = [shutil.which(tool, path=p) for p in os.environ.get("PATH", "").split(os.pathsep)]
    for path in [c for c in candidates if c] + [f"/usr/bin/{tool}"]:
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except OSError:
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    message = f"DCMTK's {tool} is not installed (Debian/Ubuntu: apt-get install dcmtk)"
    if REQUIRE_DCMTK:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True, scope="session")
def _pynetdicom_clients_keep_their_responses(pynetdicom_keeps_its_responses: None) -> None:
    """The tests' pynetdicom clients run with fsqr's fix for pynetdicom racing itself (the
    plugin's fixture): without it, a client's reactor thread now and then takes a response
    meant for the request just sent, and a test fails for the client's sake."""
