"""The start-up scan: what is indexed, what is skipped and why, and how the tree is walked."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset

from fsqr import scan, server, tree
from fsqr.records import Parsed, Skipped
from fsqr.scan import read_header, scan_files
from fsqr.synthetic import write_instance, write_tree
from fsqr.tree import walk
from tests.conftest import instance, write_dicomdir


def test_a_valid_file_is_split_into_records(write: Callable[..., Path]) -> None:
    path = write("x.dcm", patient_name="Müller^Jürgen", modality="MR", n=3)
    result = read_header(str(path))
    assert isinstance(result, Parsed)
    assert result.patient.get("PatientName") == "Müller^Jürgen"
    assert result.series.get("Modality") == "MR"
    assert result.instance.get("InstanceNumber") == "3"
    assert result.instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert result.instance.size == path.stat().st_size


def _truncate(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _without_sop_instance_uid(path: Path) -> Path:
    ds = dcmread(path)
    del ds.SOPInstanceUID
    ds.save_as(path)
    return path


def _without_preamble(path: Path) -> Path:
    """A bare data set, as some old systems wrote: no preamble, no meta information."""
    ds = dcmread(path)
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    return path


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
        (lambda p: (p.write_text("hello, not DICOM"), p)[1], "not a DICOM file"),
        (lambda p: _truncate(p, p.stat().st_size - 100), "truncated"),
        (lambda p: _truncate(p, 200), ""),
        (_without_sop_instance_uid, "no SOPInstanceUID"),
    ],
    ids=["empty", "text", "pixels-cut-short", "header-cut-short", "no-sop-instance-uid"],
)
def test_junk_is_skipped_with_a_reason(
    write: Callable[..., Path], spoil: Callable[[Path], Path], reason: str
) -> None:
    path = spoil(write("junk.dcm", rows=32, columns=32))
    result = read_header(str(path))
    assert isinstance(result, Skipped), result
    assert reason in result.reason


def test_a_file_without_preamble_is_read(write: Callable[..., Path]) -> None:
    path = _without_preamble(write("bare.dcm"))
    result = read_header(str(path))
    assert isinstance(result, Parsed), result
    assert result.instance.transfer_syntax_uid == "1.2.840.10008.1.2"


def test_a_dicomdir_is_skipped(tmp_path: Path) -> None:
    write_dicomdir(tmp_path / "DICOMDIR")
    result = read_header(str(tmp_path / "DICOMDIR"))
    assert isinstance(result, Skipped)
    assert "DICOMDIR" in result.reason


def test_walk_does_not_follow_symbolic_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "b").mkdir(parents=True)
    outside.mkdir()
    (root / "b" / "f1").write_bytes(b"x")
    (outside / "secret").write_bytes(b"x")
    (root / "b" / ".fsqr-123.tmp").write_bytes(b"x")  # a store still being written
    os.symlink(outside, root / "to-outside")
    os.symlink(outside / "secret", root / "secret-link")
    os.symlink(root / "b", root / "a")  # inside, and sorted first: b is still walked as b
    os.symlink(root / "b" / "f1", root / "f1-link")
    os.symlink(root, root / "b" / "loop")
    found = sorted(Path(p).relative_to(root).as_posix() for p in walk(root))
    assert found == ["b/f1"]
    assert list(walk(root / "a", boundary=root)) == []  # a rescan of a link: nothing


def test_parallel_and_serial_scans_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file is read once, by this process or by a worker, with the same result."""
    paths = [
        str(p)
        for p in write_tree(
            tmp_path,
            patients=2,
            studies_per_patient=2,
            series_per_study=2,
            instances_per_series=150,
        )
    ]
    serial = sorted(
        (r.instance.path, r.instance.values)
        for r in scan_files(paths, workers=1)
        if isinstance(r, Parsed)
    )
    read_here: list[str] = []

    def slow_read_header(path: str) -> Parsed | Skipped:
        # This process reads slowly, so that the worker (a fresh process, which does not see
        # this patch) gets chunks of its own once it has started.
        time.sleep(0.005)
        read_here.append(path)
        return read_header(path)

    monkeypatch.setattr(scan, "_PARALLEL_THRESHOLD", 0)
    monkeypatch.setattr(scan, "read_header", slow_read_header)
    parallel = sorted(
        (r.instance.path, r.instance.values)
        for r in scan_files(paths, workers=2)
        if isinstance(r, Parsed)
    )
    assert len(serial) == len(paths) == 1200
    assert parallel == serial
    assert 0 < len(read_here) < len(paths)


def test_a_helper_that_dies_leaves_its_files_to_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = [
        str(p)
        for p in write_tree(
            tmp_path,
            patients=1,
            studies_per_patient=1,
            series_per_study=2,
            instances_per_series=400,
        )
    ]
    helpers = scan.start_helpers(3)
    helpers[0].process.kill()
    helpers[0].process.join()
    with caplog.at_level(logging.WARNING, logger="fsqr.scan"):
        results = list(scan_files(paths, helpers=helpers))
    assert sorted(r.instance.path for r in results if isinstance(r, Parsed)) == sorted(paths)
    assert "ended early" in caplog.text
    assert not any(helper.process.is_alive() for helper in helpers)


def test_the_files_of_a_series_share_their_patient_study_and_series_records(
    tmp_path: Path,
) -> None:
    """One object per patient, study and series however many files repeat it: for the memory of
    a large index, and for the bytes a helper process sends."""
    paths = [
        str(p)
        for p in write_tree(
            tmp_path, patients=1, studies_per_patient=1, series_per_study=2, instances_per_series=3
        )
    ]
    parsed = [r for r in scan_files(paths, workers=1) if isinstance(r, Parsed)]
    assert len({id(r.patient) for r in parsed}) == 1
    assert len({id(r.study) for r in parsed}) == 1
    assert len({id(r.series) for r in parsed}) == 2
    assert len({id(r.instance) for r in parsed}) == 6


# Run in a process of its own: one that runs no other thread, as `fsqr serve` is when it starts.
_STARTS_HELPERS_BEFORE_ANY_THREAD = """
import sys, threading
from pathlib import Path
from fsqr import scan
from fsqr.config import config_from_mapping
from fsqr.server import Server

started = []
real_init = scan.ScanHelper.__init__
def recording_init(self, context):
    started.append((context.get_start_method(), threading.active_count()))
    real_init(self, context)
scan.ScanHelper.__init__ = recording_init

root = sys.argv[1]
config = config_from_mapping({"root": root, "host": "127.0.0.1", "port": 0, "scan_workers": 3})
with Server(config) as server:
    print(started, server.index.counts().instances)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="helpers are forked on Linux only")
def test_a_server_forks_its_scan_helpers_before_its_threads_start(tmp_path: Path) -> None:
    """Forked before the watcher's threads exist, the scan's helpers start at once; a helper
    started later takes 0.4 s to import pydicom in a new interpreter."""
    write_tree(
        tmp_path, patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=5
    )
    done = subprocess.run(
        [sys.executable, "-c", _STARTS_HELPERS_BEFORE_ANY_THREAD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split() == ["[('fork',", "1),", "('fork',", "1)]", "5"]


@pytest.mark.skipif(
    gc.get_freeze_count() > 0, reason="this Python freezes objects of its own (3.12 does)"
)
def test_what_the_start_up_makes_goes_straight_to_the_collectors_oldest_generation() -> None:
    """Records made while the index is built all live on: walking them in a collection of the
    youngest generation would find nothing to free (0.08 s at 100,000 files)."""
    with server._collector_paused():
        made = [[] for _ in range(5000)]  # more than a young collection's threshold
    assert gc.isenabled()
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(m) in oldest for m in made)


def test_objects_frozen_by_other_code_stay_frozen_through_a_start_up() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with server._collector_paused():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


@pytest.mark.skipif(sys.platform != "linux", reason="helpers are forked on Linux only")
@pytest.mark.timeout(60)
def test_a_scan_does_not_wait_for_a_helper_to_read_what_it_has_read_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk taken back from a helper that has not answered yet is read here; the helper's
    late answer is not waited for (a small tree's whole start-up would wait on it)."""
    paths = [
        str(p)
        for p in write_tree(
            tmp_path, patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=5
        )
    ]
    scanning = os.getpid()

    def stuck_in_a_helper(path: str) -> Parsed | Skipped:
        if os.getpid() != scanning:
            time.sleep(600)  # a helper (forked: it has this patch) that never answers
        return read_header(path)

    monkeypatch.setattr(scan, "read_header", stuck_in_a_helper)
    helpers = scan.start_helpers(2)
    results = list(scan_files(paths, helpers=helpers))
    assert sorted(r.instance.path for r in results if isinstance(r, Parsed)) == sorted(paths)
    assert not any(helper.process.is_alive() for helper in helpers)


def test_a_folder_gone_while_the_walk_reaches_it_is_not_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder renamed twice in a row (`mv A B; mv B C`): the rescan of B finds it gone.
    Not news (the churn probe saw thousands of such warnings); a folder that cannot be read
    for another reason still is."""
    (tmp_path / "gone").mkdir()
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if str(path).endswith("gone"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(tree.os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="fsqr.tree"):
        assert list(tree.walk(tmp_path)) == []
    assert [m for m in caplog.messages if "cannot read folder" in m] == [
        f"cannot read folder {tmp_path / 'locked'}: [Errno 13] Permission denied: "
        f"'{tmp_path / 'locked'}'"
    ]


def test_the_header_cache_is_bounded_by_bytes_not_only_by_count(tmp_path: Path) -> None:
    """A PDF, a report or an RT structure set holds megabytes before any pixels: 512 such
    headers (a count alone bounded the cache) were gigabytes held after one query."""
    small = write_instance(instance(n=1), tmp_path / "small.dcm")
    big = instance(n=2)
    big.EncapsulatedDocument = bytes(300_000)  # read with the header: no pixels to stop at
    big_path = write_instance(big, tmp_path / "big.dcm")
    cache = scan.HeaderCache(capacity=100, budget=400_000)
    for _ in range(2):
        assert cache.get(str(small)) is not None
        header = cache.get(str(big_path))
        assert header is not None and len(header.EncapsulatedDocument) == 300_000
    assert list(cache._items) == [str(small)]  # over a budget's eighth: read, never kept
    for n in range(3, 40):
        write_instance(instance(n=n), tmp_path / f"{n}.dcm")
        assert cache.get(str(tmp_path / f"{n}.dcm")) is not None
    assert 0 < cache._bytes <= 400_000  # the oldest were dropped by their cost
    assert len(cache._items) < 38
    assert cache._bytes == sum(size for _, _, size in cache._items.values())


def test_a_header_of_many_small_elements_is_costed_by_its_elements(tmp_path: Path) -> None:
    """4 MB on disk of 400,000 small elements took 137 MB read: by file bytes alone 16 such
    headers (2 GB) fitted a 64 MB budget."""
    ds = instance(n=1)
    for element in range(0x1000, 0x1000 + 20_000):
        ds.add_new((0x0011 << 16) | element, "US", 1)  # a private group of small elements
    path = write_instance(ds, tmp_path / "many.dcm")
    assert path.stat().st_size < 400_000
    cache = scan.HeaderCache(capacity=100, budget=40_000_000)
    assert cache.get(str(path)) is not None
    assert not cache._items  # 20,000 elements: some 8 MB held, over a budget's eighth
