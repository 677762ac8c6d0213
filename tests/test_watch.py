"""The live drop folder (watch.py): files and folders changed under a running server's root are
served, or no longer served, within a second; never half-written; and nothing stops the watcher.

Every test changes a real temporary folder while a server runs over it, and waits for the
index (which C-FIND reads) by polling with a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
)

from fsqr import watch
from fsqr.keys import Level
from fsqr.records import Parsed, Skipped
from fsqr.scan import scan_files
from fsqr.server import Server
from fsqr.synthetic import synthetic_uid, write_instance
from fsqr.watch import Change, Kind, change_of
from tests.conftest import instance
from tests.helpers import c_find_image, wait_until

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as written in little endian


def sop(n: int, patient: str = "PID1") -> str:
    return synthetic_uid("sop", patient, n)


@dataclass
class Live:
    """A running server over `root`, and a folder `outside` it on the same file system."""

    root: Path
    outside: Path
    server: Server

    def make(self, name: str, n: int = 1, **fields: Any) -> Path:
        """Write instance `n` outside the root, ready to be copied or renamed in."""
        return write_instance(instance(n=n, **fields), self.outside / name)

    def path_of(self, uid: str) -> str | None:
        served = self.server.index.instance(uid)
        return None if served is None else served.path

    def served_at(self, uid: str, path: Path) -> Callable[[], bool]:
        return lambda: self.path_of(uid) == str(path)

    def gone(self, uid: str) -> Callable[[], bool]:
        return lambda: self.path_of(uid) is None

    def sync(self, name: str, *, settled: bool = False) -> None:
        """Wait until the watcher has handled every change made before this call.

        Changes are applied in order, so once an instance renamed in now is served, every
        earlier event has been handled too. `settled`: arrive as a new link instead, which is
        read once it held still, so that earlier files waiting to settle are handled as well.
        """
        uid = synthetic_uid("sync", name)
        source = write_instance(instance(patient_id="SYNC", sop_uid=uid), self.outside / name)
        (os.link if settled else os.rename)(source, self.root / name)
        assert wait_until(self.served_at(uid, self.root / name))


@pytest.fixture
def live(tmp_path: Path, start_server: Callable[..., Server]) -> Live:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    return Live(tmp_path / "root", tmp_path / "outside", start_server(tmp_path / "root"))


# -- files and folders coming and going -------------------------------------------------------


def test_a_file_copied_in_is_found_by_c_find(live: Live) -> None:
    assert c_find_image(live.server, sop(1)) == 0
    shutil.copy(live.make("a.dcm"), live.root / "a.dcm")
    assert wait_until(live.served_at(sop(1), live.root / "a.dcm"))
    assert c_find_image(live.server, sop(1)) == 1


def test_a_folder_copied_in_is_served(live: Live) -> None:
    for n in (1, 2, 3):
        live.make(f"study/IMG{n}.dcm", n)
    shutil.copytree(live.outside / "study", live.root / "study")
    for n in (1, 2, 3):
        assert wait_until(live.served_at(sop(n), live.root / "study" / f"IMG{n}.dcm"))


def test_a_folder_renamed_in_is_served_at_once(live: Live) -> None:
    for n in (1, 2):
        live.make(f"study/IMG{n}.dcm", n)
    os.rename(live.outside / "study", live.root / "study")
    for n in (1, 2):
        assert wait_until(live.served_at(sop(n), live.root / "study" / f"IMG{n}.dcm"))


def test_renaming_then_deleting_a_file(live: Live) -> None:
    os.rename(live.make("a.dcm"), live.root / "a.dcm")
    assert wait_until(live.served_at(sop(1), live.root / "a.dcm"))
    os.rename(live.root / "a.dcm", live.root / "b.dcm")
    assert wait_until(live.served_at(sop(1), live.root / "b.dcm"))
    assert live.server.index.counts().files == 1
    os.unlink(live.root / "b.dcm")
    assert wait_until(live.gone(sop(1)))


def test_renaming_then_deleting_a_folder(live: Live) -> None:
    for n in (1, 2, 3):
        live.make(f"study/series/IMG{n}.dcm", n)
    os.rename(live.outside / "study", live.root / "study")
    assert wait_until(lambda: live.server.index.counts().instances == 3)
    os.rename(live.root / "study", live.root / "renamed")
    for n in (1, 2, 3):
        assert wait_until(live.served_at(sop(n), live.root / "renamed" / "series" / f"IMG{n}.dcm"))
    assert live.server.index.counts().files == 3
    shutil.rmtree(live.root / "renamed")
    assert wait_until(lambda: live.server.index.counts().files == 0)


def test_moving_a_file_and_a_folder_out_of_the_tree(live: Live) -> None:
    live.make("study/IMG1.dcm", 1)
    os.rename(live.outside / "study", live.root / "study")
    os.rename(live.make("lone.dcm", 2), live.root / "lone.dcm")
    assert wait_until(lambda: live.server.index.counts().instances == 2)
    os.rename(live.root / "lone.dcm", live.outside / "lone.dcm")
    os.rename(live.root / "study", live.outside / "moved-away")
    assert wait_until(lambda: live.server.index.counts().files == 0)


def test_a_file_replaced_by_another_instance(live: Live) -> None:
    target = live.root / "x.dcm"
    os.rename(live.make("x.dcm", 1), target)
    assert wait_until(live.served_at(sop(1), target))
    write_instance(instance(n=2), target)  # overwritten in place
    assert wait_until(live.served_at(sop(2), target))
    assert live.path_of(sop(1)) is None
    os.replace(live.make("y.dcm", 3), target)  # renamed over it
    assert wait_until(live.served_at(sop(3), target))
    assert live.path_of(sop(2)) is None
    assert live.server.index.counts().files == 1


def test_symbolic_links_are_not_followed(live: Live) -> None:
    """A link made while fsqr runs adds nothing: a file or folder inside the root is served
    under its own path, and one outside (a folder link included) is not served at all."""
    os.rename(live.make("a/x.dcm", 1).parent, live.root / "a")
    assert wait_until(live.served_at(sop(1), live.root / "a" / "x.dcm"))
    elsewhere = live.make("elsewhere/y.dcm", 2).parent
    os.symlink(elsewhere / "y.dcm", live.root / "out.dcm")
    os.symlink(elsewhere, live.root / "out-folder")
    os.symlink(live.root / "a" / "x.dcm", live.root / "in.dcm")
    os.symlink(live.root / "a", live.root / "alias")
    live.sync("after-links.dcm")  # every event before it has been handled
    assert live.server.index.paths() == sorted(
        [str(live.root / "a" / "x.dcm"), str(live.root / "after-links.dcm")]
    )
    assert live.path_of(sop(2)) is None


def test_a_folder_linked_before_the_start_is_served_and_watched_where_it_is(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """A link to a folder inside the root does not hide the folder: changes to its files are
    seen (the link sorts first, and the walk used to index the files through it, unwatched)."""
    root = tmp_path / "root"
    real = write_instance(instance(n=1), root / "real" / "a.dcm")
    os.symlink(root / "real", root / "link")
    server = start_server(root)
    assert server.index.paths() == [str(real)]
    write_instance(instance(n=1, patient_name="DOE^CHANGED"), real)  # rewritten in place
    assert wait_until(
        lambda: (
            server.index.instance_at(str(real)) is not None
            and server.index.instance_at(str(real)).get("SOPInstanceUID") == sop(1)
            and server.index.candidates(Level.PATIENT, {})[0].patient.get("PatientName")
            == "DOE^CHANGED"
        )
    )
    real.unlink()
    assert wait_until(lambda: server.index.counts().files == 0)


def test_a_slowly_written_file_is_served_only_once_complete(live: Live) -> None:
    data = live.make("slow.dcm").read_bytes()
    pixels = data.index(PIXEL_DATA_TAG)
    # Cut before the pixel data the file parses as a complete header; cut inside, as truncated.
    chunks = [data[:pixels], data[pixels : pixels + 100], data[pixels + 100 :]]
    target = live.root / "slow.dcm"
    with open(target, "wb") as writer:
        for chunk in chunks[:-1]:
            writer.write(chunk)
            writer.flush()
            # The writer pauses longer than a file takes to settle: still not served.
            pause_until = time.monotonic() + 3 * watch.SETTLE
            while time.monotonic() < pause_until:
                assert live.path_of(sop(1)) is None, "a half-written file is served"
                time.sleep(0.05)
        writer.write(chunks[-1])
    assert wait_until(live.served_at(sop(1), target))


def test_a_broken_file_is_reported_once_and_served_once_mended(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    data = live.make("x.dcm").read_bytes()
    broken = live.outside / "broken.dcm"
    broken.write_bytes(data[:-100])  # the pixel data is cut short
    with caplog.at_level(logging.WARNING, logger="fsqr.watch"):
        os.rename(broken, live.root / "broken.dcm")
        live.sync("sync1.dcm")
        os.chmod(live.root / "broken.dcm", 0o600)  # an event, but the same file
        live.sync("sync2.dcm", settled=True)
    reports = [r for r in caplog.records if "broken.dcm" in r.getMessage()]
    assert len(reports) == 1
    assert "truncated" in reports[0].getMessage()
    assert live.path_of(sop(1)) is None
    with open(live.root / "broken.dcm", "ab") as writer:
        writer.write(data[-100:])
    assert wait_until(live.served_at(sop(1), live.root / "broken.dcm"))


def test_polling_mode(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    server = start_server(root, watch="polling", poll_interval=0.2)
    assert server.watcher is not None and server.watcher.polling
    shutil.copy(write_instance(instance(n=1), tmp_path / "a.dcm"), root / "a.dcm")
    assert wait_until(lambda: server.index.instance(sop(1)) is not None)
    os.rename(root / "a.dcm", root / "b.dcm")
    assert wait_until(lambda: server.index.paths() == [str(root / "b.dcm")])
    os.unlink(root / "b.dcm")
    assert wait_until(lambda: server.index.counts().files == 0)


def test_polling_sees_a_file_rewritten_with_its_size_and_mtime_kept(
    tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    """Another instance written over a file, its mtime set back (`touch -r`, a restore): only
    the ctime tells, as a warm restart's check knows; polling compared size and mtime only."""
    root = tmp_path / "root"
    root.mkdir()
    server = start_server(root, watch="polling", poll_interval=0.2)
    target = write_instance(instance(n=1), root / "a.dcm")
    assert wait_until(lambda: server.index.instance(sop(1)) is not None)
    before = target.stat()
    write_instance(instance(n=2), target)  # the same length: only its UIDs differ
    assert target.stat().st_size == before.st_size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert wait_until(lambda: server.index.instance(sop(2)) is not None)
    assert server.index.instance(sop(1)) is None


def test_watch_off_has_no_watcher(tmp_path: Path, start_server: Callable[..., Server]) -> None:
    assert start_server(tmp_path, watch="off").watcher is None


# -- start-up -----------------------------------------------------------------------------------


def test_changes_during_the_start_up_scan_are_not_lost(
    tmp_path: Path, start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    early = write_instance(instance(n=1), root / "early.dcm")
    late_source = write_instance(instance(n=2), tmp_path / "late.dcm")

    def scan_then_change_the_disk(paths: list[str], *args: Any) -> Any:
        results = list(scan_files(paths, *args))  # the scan has read early.dcm ...
        early.unlink()  # ... which is deleted before its result reaches the index,
        os.rename(late_source, root / "late.dcm")  # and a file arrives after the walk
        return iter(results)

    monkeypatch.setattr("fsqr.server.scan_files", scan_then_change_the_disk)
    server = start_server(root)
    assert wait_until(lambda: server.index.paths() == [str(root / "late.dcm")])


# -- nothing stops the watcher ------------------------------------------------------------------


def test_an_error_while_applying_a_change_is_logged_and_the_watcher_goes_on(
    live: Live, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_read = watch.read_header

    def read_or_fail(path: str) -> Parsed | Skipped:
        if path.endswith("boom.dcm"):
            raise RuntimeError("a bug")
        return real_read(path)

    monkeypatch.setattr(watch, "read_header", read_or_fail)
    with caplog.at_level(logging.ERROR, logger="fsqr.watch"):
        os.rename(live.make("boom.dcm", 1), live.root / "boom.dcm")
        os.rename(live.make("fine.dcm", 2), live.root / "fine.dcm")
        assert wait_until(live.served_at(sop(2), live.root / "fine.dcm"))
    (failure,) = [r for r in caplog.records if r.exc_info]
    assert "boom.dcm" in failure.getMessage()


def test_watchdogs_callback_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    from watchdog.events import FileCreatedEvent  # noqa: PLC0415 (only this test needs it)

    def broken_queue(change: Change) -> None:
        raise RuntimeError("queue broken")

    with caplog.at_level(logging.ERROR, logger="fsqr.watch"):
        watch._Forward(broken_queue).dispatch(FileCreatedEvent("/r/x.dcm"))
    assert caplog.records and caplog.records[0].exc_info


def test_change_of_ignores_folder_noise() -> None:
    from watchdog.events import DirDeletedEvent, DirModifiedEvent  # noqa: PLC0415

    assert change_of(DirModifiedEvent("/r/a")) is None
    assert change_of(DirDeletedEvent("/r/a")) == Change(Kind.DELETED, "/r/a", is_dir=True)


def test_a_simulated_overflow_rescans_and_mends_the_index(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    os.rename(live.make("a.dcm"), live.root / "a.dcm")
    assert wait_until(live.served_at(sop(1), live.root / "a.dcm"))
    live.server.index.remove_path(str(live.root / "a.dcm"))  # the index is now wrong
    with caplog.at_level(logging.WARNING):
        # What watchdog logs when the kernel dropped events (its only way of saying so).
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        assert wait_until(live.served_at(sop(1), live.root / "a.dcm"))
    assert any("overflow" in r.getMessage() and r.name == "fsqr.watch" for r in caplog.records)


def test_a_real_inotify_overflow_rescans(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    watcher = live.server.watcher
    assert watcher is not None
    os.rename(live.make("a.dcm"), live.root / "a.dcm")
    assert wait_until(live.served_at(sop(1), live.root / "a.dcm"))
    live.server.index.remove_path(str(live.root / "a.dcm"))  # only a rescan puts it back
    flood = live.root / "flood"
    flood.mkdir()
    with caplog.at_level(logging.WARNING, logger="fsqr.watch"):
        for attempt in range(3):  # fsqr's own temporary names: the rescan skips them cheaply
            subprocess.run(
                f"seq {20000 * attempt} {20000 * (attempt + 1) - 1} "
                f"| sed 's/^/.fsqr-/; s/$/.tmp/' | xargs touch",
                shell=True,
                cwd=flood,
                check=True,
            )
            if wait_until(lambda: watcher.rescans > 0, timeout=2):
                break
        else:
            pytest.skip("the kernel's inotify queue never overflowed: this machine keeps up")
        assert wait_until(live.served_at(sop(1), live.root / "a.dcm"))
    assert any("overflow" in r.getMessage() for r in caplog.records)


def test_the_watch_limit_falls_back_to_rescans(
    tmp_path: Path,
    start_server: Callable[..., Server],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(watch, "watch_limit_reached", lambda path: True)
    write_instance(instance(n=1), tmp_path / "a.dcm")
    with caplog.at_level(logging.WARNING, logger="fsqr.watch"):
        server = start_server(tmp_path, poll_interval=0.2)
    assert server.watcher is not None and server.watcher.polling
    assert any("watch limit" in r.getMessage() for r in caplog.records)
    server.index.remove_path(str(tmp_path / "a.dcm"))  # as if its folder had no watch
    assert wait_until(lambda: server.index.instance(sop(1)) is not None)


def test_a_dead_file_watcher_is_started_anew_then_falls_back_to_rescans(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """watchdog's thread dies of a race of its own (a folder deleted and made again at once):
    a new watcher, and a rescan for what happened meanwhile; rescans every poll_interval only
    once it has died more than 3 times in 10 minutes. It used to poll for good at once."""
    watcher = live.server.watcher
    assert watcher is not None and watcher._observer is not None
    with caplog.at_level(logging.WARNING, logger="fsqr.watch"):
        for n in range(1, 5):
            dying = watcher._observer
            assert dying is not None
            dying.stop()  # as if an exception had ended watchdog's threads
            assert wait_until(lambda d=dying: watcher._observer is not d)
            expected_polling = n > 3
            assert watcher.polling is expected_polling
            os.rename(live.make(f"{n}.dcm", n), live.root / f"{n}.dcm")
            assert wait_until(live.served_at(sop(n), live.root / f"{n}.dcm"), timeout=10)
    said = [r.getMessage() for r in caplog.records]
    assert sum("started anew" in m for m in said) == 3
    assert any("rescanning it every" in m for m in said)


def find_values(server: Server, level: str, *keywords: str) -> list[tuple[str, ...]]:
    """Every answer to a C-FIND at `level` (Patient Root) returning `keywords`, as text."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.PatientID = "PID1"
    for keyword in keywords:
        setattr(identifier, keyword, "")
    found = [
        tuple(str(answer.get(k, "")) for k in keywords)
        for _, answer in assoc.send_c_find(identifier, PatientRootQueryRetrieveInformationModelFind)
        if answer is not None
    ]
    assoc.release()
    return found


def test_records_come_from_a_file_still_there_once_theirs_is_deleted(live: Live) -> None:
    """The latest file's attributes are served at every level; once that file is deleted, a
    file still on disk says what they are, not the one that is gone."""
    older, newer = live.root / "older.dcm", live.root / "newer.dcm"
    os.rename(live.make("o.dcm", 1, patient_name="DOE^OLD", study_description="OLD"), older)
    assert wait_until(live.served_at(sop(1), older))
    os.rename(live.make("n.dcm", 2, patient_name="DOE^NEW", study_description="NEW"), newer)
    assert wait_until(live.served_at(sop(2), newer))
    server = live.server
    assert find_values(server, "PATIENT", "PatientName") == [("DOE^NEW",)]
    assert find_values(server, "STUDY", "PatientName", "StudyDescription") == [("DOE^NEW", "NEW")]
    newer.unlink()
    assert wait_until(lambda: find_values(server, "PATIENT", "PatientName") == [("DOE^OLD",)])
    assert find_values(server, "STUDY", "PatientName", "StudyDescription") == [("DOE^OLD", "OLD")]
    assert server.index.stale_sources() == []  # told once


@pytest.mark.parametrize("replacement", ["fifo", "link"])
def test_a_file_replaced_by_a_fifo_or_a_link_is_no_longer_served(
    live: Live, replacement: str
) -> None:
    """Neither is a file fsqr reads: a link is not followed (it might lead outside the root),
    and a FIFO would hold a reader until someone writes to it."""
    target = live.root / "x.dcm"
    os.rename(live.make("x.dcm", 1), target)
    assert wait_until(live.served_at(sop(1), target))
    made = live.root / ".made"
    if replacement == "fifo":
        os.mkfifo(made)
    else:
        os.symlink(live.make("outside.dcm", 1, patient_name="OUTSIDE^SECRET"), made)
    os.rename(made, target)
    assert wait_until(live.gone(sop(1)))


def test_watchdogs_duplicate_watch_warning_never_reaches_a_test_run_with_w_error(
    live: Live,
) -> None:
    """watchdog warns, from its own thread, when a folder made by `mkdir -p` gets its watch
    twice (a race it resolves itself); under -W error that ended its thread, in an embedded
    server and in the pytest plugin's alike. Deep folders made at once, under "error"."""
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in range(5):
            deep = live.root.joinpath(*[f"d{n}"] * 30)
            deep.mkdir(parents=True)
            write_instance(instance(n=n + 1), deep / "x.dcm")
        for n in range(5):
            assert wait_until(lambda n=n: live.path_of(sop(n + 1)) is not None)
    assert live.server.watcher is not None and not live.server.watcher.polling
