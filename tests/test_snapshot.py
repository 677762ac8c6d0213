"""The index snapshot (warm restart): a file is taken from it only if stat finds it unchanged;
anything wrong with the snapshot means reading every file, never a wrong answer."""

from __future__ import annotations

import hashlib
import logging
import marshal
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fsqr import server as server_module
from fsqr.records import Parsed, Skipped
from fsqr.scan import read_header
from fsqr.server import Server
from fsqr.snapshot import (
    Changes,
    Snapshot,
    StatPass,
    changes,
    partition,
    read_snapshot,
    write_snapshot,
)
from fsqr.synthetic import synthetic_uid
from fsqr.tree import walk
from tests.conftest import server_config
from tests.helpers import c_find_image, wait_until

Write = Callable[..., Path]


def _snapshot_of(root: Path, target: Path) -> None:
    """Read every file under `root` as the start-up scan does and write its snapshot."""
    results = [read_header(p) for p in walk(root)]
    parsed = [r for r in results if isinstance(r, Parsed)]
    skipped = [r for r in results if isinstance(r, Skipped)]
    write_snapshot(target, root, parsed, skipped)


def _reloaded(root: Path, target: Path) -> Snapshot:
    snapshot = read_snapshot(target, root)
    assert snapshot is not None
    return snapshot


def _split(root: Path, target: Path) -> tuple[dict[str, Parsed | Skipped], list[str]]:
    taken = partition(_reloaded(root, target), changes(target, root))
    assert taken is not None
    known, to_read = taken
    return {(r.instance.path if isinstance(r, Parsed) else r.path): r for r in known}, to_read


@pytest.fixture
def tree(write: Write, tmp_path: Path) -> Path:
    for n in (1, 2, 3):
        write(f"study/{n}.dcm", n=n)
    return tmp_path / "tree"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "state" / "index.snapshot"


def test_an_unchanged_file_is_taken_as_it_was_read(tree: Path, target: Path) -> None:
    _snapshot_of(tree, target)
    known, to_read = _split(tree, target)
    assert to_read == []
    path = str(tree / "study" / "2.dcm")
    assert known[path] == read_header(path)  # the same records, stamp and all


def test_a_changed_file_is_read_again(write: Write, tree: Path, target: Path) -> None:
    _snapshot_of(tree, target)
    changed = write("study/2.dcm", n=2, patient_name="DOE^JANE^CHANGED")
    known, to_read = _split(tree, target)
    assert to_read == [str(changed)]
    assert len(known) == 2


def test_a_file_touched_but_the_same_size_is_read_again(tree: Path, target: Path) -> None:
    _snapshot_of(tree, target)
    touched = tree / "study" / "1.dcm"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert _split(tree, target)[1] == [str(touched)]


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_is_read_again(
    write: Write, tree: Path, target: Path
) -> None:
    _snapshot_of(tree, target)
    original = tree / "study" / "3.dcm"
    # Another patient's name of the same length: same size; the mtime is set back as it was
    # (a restore from backup). Only the ctime tells the two files apart.
    other = write("elsewhere.tmp", n=3, patient_name="DOE^JOHO")
    assert other.stat().st_size == original.stat().st_size
    st = original.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, original)
    known, to_read = _split(tree, target)
    assert to_read == [str(original)]
    assert str(original) not in known


def test_a_file_rewritten_in_place_with_its_size_and_mtime_kept_is_read_again(
    write: Write, tree: Path, target: Path
) -> None:
    """`cp -p other original` onto an existing file: the same inode, size and mtime; only the
    ctime has changed."""
    _snapshot_of(tree, target)
    original = tree / "study" / "3.dcm"
    other = write("elsewhere.tmp", n=3, patient_name="DOE^JOHO")
    before = original.stat()
    original.write_bytes(other.read_bytes())  # in place: truncated and written, same inode
    other.unlink()
    os.utime(original, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = original.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    known, to_read = _split(tree, target)
    assert to_read == [str(original)]
    assert str(original) not in known


def test_a_new_file_is_read_and_a_vanished_one_is_dropped(
    write: Write, tree: Path, target: Path
) -> None:
    _snapshot_of(tree, target)
    new = write("study/4.dcm", n=4)
    (tree / "study" / "1.dcm").unlink()
    known, to_read = _split(tree, target)
    assert to_read == [str(new)]
    assert sorted(known) == [str(tree / "study" / "2.dcm"), str(tree / "study" / "3.dcm")]


def test_a_skipped_file_is_remembered_with_its_reason_until_it_changes(
    tree: Path, target: Path
) -> None:
    junk = tree / "notes.txt"
    junk.write_text("not DICOM")
    _snapshot_of(tree, target)
    known, to_read = _split(tree, target)
    assert to_read == []
    assert isinstance(known[str(junk)], Skipped)
    assert known[str(junk)].reason == "not a DICOM file"
    junk.write_text("still not DICOM, but changed")
    assert _split(tree, target)[1] == [str(junk)]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut short: a crash while copying it, a full disk
        lambda data: data[:-10] + bytes(b ^ 0xFF for b in data[-10:]),  # corrupted on disk
        lambda data: b"PK\x03\x04" + data,  # not a snapshot at all
        lambda data: data.replace(b"fsqr-index-snapshot ", b"fsqr-index-snapshot 0", 1),
        lambda data: b"",
    ],
    ids=["truncated", "corrupted", "not-a-snapshot", "another-version", "empty"],
)
def test_a_damaged_snapshot_is_ignored_with_one_log_line(
    tree: Path, target: Path, damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    _snapshot_of(tree, target)
    target.write_bytes(damage(target.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="fsqr.snapshot"):
        assert read_snapshot(target, tree) is None
    (line,) = caplog.messages
    assert line.startswith(f"index snapshot {target} not used")


def test_a_fifo_where_the_snapshot_should_be_is_ignored_not_waited_on(
    write: Write, tree: Path, target: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A start waited for the FIFO's writer for ever (and read /dev/zero through a link until
    memory ran out): a warning, and every file is read."""
    write("study/1.dcm", n=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(target)
    config = server_config(tree, index_snapshot=str(target))
    with caplog.at_level(logging.WARNING, logger="fsqr.snapshot"), Server(config) as server:
        assert c_find_image(server, _uid(1)) == 1
    assert any("not a regular file" in m for m in caplog.messages)


def test_a_whole_snapshot_that_does_not_hold_together_is_ignored(
    tree: Path, target: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _snapshot_of(tree, target)  # then its files point at a series it does not have
    header, body = target.read_bytes().split(b"\n", 1)
    magic, fingerprint, stamps_length, _, _ = header.split()
    stamps, records = body[: int(stamps_length)], body[int(stamps_length) :]
    root, patients, studies, series, parents, folders, skipped = marshal.loads(records)
    body = stamps + marshal.dumps(
        (
            root,
            patients,
            studies,
            series,
            parents,
            [(folder, names, [(99, *row[1:]) for row in rows]) for folder, names, rows in folders],
            skipped,
        )
    )
    digest = hashlib.blake2b(body, digest_size=16).hexdigest().encode()
    target.write_bytes(
        b" ".join([magic, fingerprint, stamps_length, str(len(body)).encode(), digest])
        + b"\n"
        + body
    )
    with caplog.at_level(logging.WARNING, logger="fsqr.snapshot"):
        assert read_snapshot(target, tree) is None  # whole, as far as its digest tells
    assert "not used, reading every file: it cannot be decoded (IndexError" in caplog.text


def test_a_snapshot_of_another_root_is_ignored(
    tree: Path, target: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _snapshot_of(tree, target)
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    with caplog.at_level(logging.WARNING, logger="fsqr.snapshot"):
        assert read_snapshot(target, other) is None
    assert "another root" in caplog.text


def test_no_snapshot_yet_is_not_a_warning(
    tree: Path, target: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert read_snapshot(target, tree) is None
    assert caplog.messages == []


def test_the_snapshot_is_readable_by_its_owner_alone(tree: Path, target: Path) -> None:
    _snapshot_of(tree, target)  # it holds patient names
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# -- the server, started twice ------------------------------------------------------------------


@pytest.fixture(params=["another-process", "one-core", "small-snapshot"])
def stat_passes(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[bool]]:
    """Where a restart's stat pass should run (set up for it), and where the server's stat
    passes ran: True (another process) or False (here), one per start."""
    if request.param == "another-process":  # as if the small snapshot held many thousand files
        monkeypatch.setattr(server_module, "STAT_PASS_ELSEWHERE_FROM", 0)
    started: list[bool] = []

    def stat_pass(*args: Any, here: bool) -> StatPass:
        started.append(not here)
        return StatPass(*args, here=here)

    monkeypatch.setattr(server_module, "StatPass", stat_pass)
    return request.param, started


def test_a_restart_answers_for_what_changed_while_the_server_was_down(
    write: Write,
    tree: Path,
    target: Path,
    caplog: pytest.LogCaptureFixture,
    stat_passes: tuple[str, list[bool]],
) -> None:
    where, started = stat_passes
    scan_workers = 1 if where == "one-core" else 0
    write("study/4.dcm", n=4)  # left alone while the server is down
    config = server_config(tree, index_snapshot=str(target), scan_workers=scan_workers)
    with Server(config) as server:
        assert c_find_image(server, _uid(1)) == 1
        assert wait_until(target.exists)  # written after the start-up scan: a crash keeps it
    # While it is down: one file deleted, one rewritten with another SOP Instance UID of the
    # same length, one replaced by another file of the same size and mtime, one added.
    (tree / "study" / "1.dcm").unlink()
    write("study/2.dcm", n=2, sop_uid=_uid(8))
    original = tree / "study" / "3.dcm"
    st = original.stat()
    replacement = write("elsewhere.tmp", n=3, sop_uid=_uid(9))
    assert replacement.stat().st_size == st.st_size
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, original)
    write("study/5.dcm", n=5)
    with caplog.at_level(logging.INFO, logger="fsqr.server"), Server(config) as server:
        found = {n: c_find_image(server, _uid(n)) for n in (1, 2, 3, 4, 5, 8, 9)}
    assert found == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 8: 1, 9: 1}
    assert "index snapshot: 1 files unchanged, 3 to read" in caplog.messages
    # The first start had no snapshot yet: no process for it.
    assert started == [False, where == "another-process"]


def test_a_stat_pass_for_another_snapshot_means_every_file_is_read(
    write: Write, tree: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server indexes the snapshot's records while stat runs; if what stat found belongs to
    another snapshot, all of that goes, and a file deleted while it was down is not served."""
    config = server_config(tree, index_snapshot=str(target), watch="off")
    with Server(config):
        pass
    (tree / "study" / "1.dcm").unlink()

    def another_snapshots(self: StatPass) -> Changes:
        return Changes("0" * 32, [], [])

    monkeypatch.setattr(StatPass, "answer", another_snapshots)
    with Server(config) as server:
        assert [c_find_image(server, _uid(n)) for n in (1, 2, 3)] == [0, 1, 1]
        assert server.index.counts().files == 2


def test_a_second_copy_of_an_instance_survives_the_snapshot(
    write: Write, tree: Path, target: Path
) -> None:
    shutil.copy2(tree / "study" / "1.dcm", tree / "copy-of-1.dcm")
    config = server_config(tree, index_snapshot=str(target), watch="off")
    with Server(config) as server:
        before = server.index.counts()
    with Server(config) as server:
        assert server.index.counts() == before
        assert (before.instances, before.files) == (3, 4)


def test_a_snapshot_that_cannot_be_written_is_a_warning_not_a_failure(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("")
    config = server_config(tree, index_snapshot=str(tmp_path / "a-file" / "index.snapshot"))
    with caplog.at_level(logging.WARNING, logger="fsqr.server"), Server(config) as server:
        assert c_find_image(server, _uid(1)) == 1
    assert "cannot write the index snapshot" in caplog.text


def _uid(n: int) -> str:
    """The SOP Instance UID the conftest `instance` factory gives instance `n` of PID1."""
    return synthetic_uid("sop", "PID1", n)


def test_stat_results_for_another_snapshot_are_not_used(
    tree: Path, target: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The side process and the server each read the snapshot file; if it was rewritten in
    between, what stat found belongs to another snapshot, and every file is read."""
    _snapshot_of(tree, target)
    found = changes(target, tree)
    assert found is not None and found.to_read == found.stale == []
    elsewhere = Changes("0" * 32, found.to_read, found.stale)
    with caplog.at_level(logging.WARNING, logger="fsqr.snapshot"):
        assert partition(_reloaded(tree, target), elsewhere) is None
    assert "changed while being read" in caplog.text


def test_the_stat_pass_imports_no_pydicom() -> None:
    """It runs in a process of its own during a warm restart, and must start at once."""
    code = "import sys, fsqr.snapshot; sys.exit('pydicom' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_stat_pass_in_another_process_answers_as_here(tree: Path, target: Path) -> None:
    _snapshot_of(tree, target)
    (tree / "study" / "1.dcm").unlink()
    (tree / "study" / "2.dcm").write_bytes(b"changed")
    for here in (False, True):
        stat_pass = StatPass(target, tree, here=here)
        stat_pass.go()
        assert stat_pass.answer() == changes(target, tree)
    found = changes(target, tree)
    assert found is not None
    assert sorted(Path(p).name for p in found.stale) == ["1.dcm", "2.dcm"]
    assert [Path(p).name for p in found.to_read] == ["2.dcm"]


def test_a_stat_process_that_fails_costs_only_time(
    tree: Path, target: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _snapshot_of(tree, target)
    monkeypatch.setattr(sys, "executable", shutil.which("false"))
    with caplog.at_level(logging.WARNING, logger="fsqr.snapshot"):
        stat_pass = StatPass(target, tree)
        stat_pass.go()
        assert stat_pass.answer() == changes(target, tree)
    assert "the process that stats the tree failed (exit status 1)" in caplog.text


def test_a_stat_pass_waits_for_go_and_ends_when_told_to_stop(tree: Path, target: Path) -> None:
    _snapshot_of(tree, target)
    stat_pass = StatPass(target, tree)
    process = stat_pass._process
    assert process is not None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(0.5)  # stamps loaded, waiting for the watcher to be there
    stat_pass.close()
    assert process.returncode is not None
    assert stat_pass.answer() == changes(target, tree)  # closed: answered here, if asked
