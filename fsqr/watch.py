"""Keeps the index in step with the disk after the start-up scan: file events (or a polling
rescan) in, `Index` updates out. Knows nothing of DICOM matching or networking.

Only this module imports watchdog. watchdog calls back on its observer thread, where an
exception would end the thread and every later event would be lost, so the callback only turns
an event into a `Change` and queues it, inside a try/except that logs. One worker thread
applies the changes in order: it reads headers, updates the index and runs the timers below,
and it too logs whatever goes wrong with one change and goes on with the next.

When a file is indexed (never half-written):
- closed after writing, where the platform says so (Linux inotify): at once;
- renamed into or within the tree: at once, since a rename moves a finished file (this is how
  C-STORE writes, `storage.py`, and how careful copy tools finish);
- any other sign of life (created, attributes changed, written on a platform without close
  events, seen by a polling rescan): once its size and mtime stayed the same for `settle`
  seconds. A file written to but not yet closed waits for its close, or for `write_grace`
  seconds without change if the close never comes (mmap, a writer that died).
A file that does not parse when it might still be incomplete is looked at again once it has
not changed for `write_grace` seconds, and only then reported, once per version (size, mtime):
a really broken file is reported once, however many events it causes.

A rescan ("reconcile") compares a folder's files on disk (size, mtime) with the index and
mends the difference without re-reading unchanged files. It runs for a folder moved in, for
a symlink to a folder, on an inotify queue overflow, when the inotify watch limit is reached
(and from then on every `poll_interval`), and every `poll_interval` in polling mode.

Start-up: the server starts the watcher before the start-up scan walks the tree and releases
it once the scan is indexed; changes made meanwhile are queued and applied after the scan, so
none is lost and none is undone by the scan's older view of a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import heapq
import logging
import os
import queue
import stat
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from fsqr.config import WatchMode
from fsqr.index import Index
from fsqr.records import Parsed, Skipped
from fsqr.scan import read_header, scan_files
from fsqr.tree import is_candidate_name, walk

log = logging.getLogger(__name__)


class _WatchdogWarnings:
    """The `warnings` module as watchdog's inotify code sees it, but for its "Callback with id"
    warnings, logged at debug instead.

    watchdog warns, from its own thread, when a folder made by `mkdir -p` (or by a C-STORE)
    gets its inotify watch twice: a benign race it resolves itself. Each warning holds its whole
    watch table (a 200-folder `mkdir -p` wrote 12 MB to stderr), and under `-W error` (the
    README's test command, a CI user's) it ended watchdog's thread. Replaced here, at the one
    place fsqr meets watchdog, for every server: the command line's, an embedded one, a test's.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(warnings, name)

    def warn(self, message: Any, category: Any = None, stacklevel: int = 1, **kwargs: Any) -> None:
        if str(message).startswith("Callback with id"):
            log.debug("watchdog: %s", str(message)[:200])
            return
        warnings.warn(message, category, stacklevel + 1, **kwargs)


def _quiet_watchdog() -> None:
    try:
        from watchdog.observers import inotify_c  # noqa: PLC0415 - Linux only
    except ImportError:  # no inotify on this platform: nothing that warns so
        return
    if getattr(inotify_c, "warnings", None) is warnings:
        inotify_c.warnings = _WatchdogWarnings()  # type: ignore[assignment,attr-defined]


_quiet_watchdog()

SETTLE = 0.5  # seconds a file's size and mtime must hold still before it is read
WRITE_GRACE = 5.0  # seconds of quiet after which a file written to but never closed is read
_LIMIT_PROBE_EVERY = 1.0  # seconds between checks that inotify can still add watches
_RESTARTS_AT_MOST, _RESTARTS_WITHIN = 3, 600.0  # native watchers started anew, in seconds
_HEALTH_EVERY = 1.0  # seconds between checks that watchdog's threads still run
_QUIET_REASONS = ("not a DICOM file", "DICOMDIR", "empty file")  # logged at debug, as at start-up
_IN_DELETE_SELF = 0x400  # inotify(7)

# Size, mtime and ctime in ns: a file that changed no longer matches, even one rewritten with
# its size and mtime kept (the ctime no tool can set back).
Stamp = tuple[int, int, int]


class Kind(enum.Enum):
    CREATED = "created"  # a file appeared; its content may still be coming
    WRITTEN = "written"  # bytes were written to it
    CLOSED = "closed"  # closed after writing: complete
    ATTRIB = "attrib"  # attributes changed (touch, chmod)
    DELETED = "deleted"
    MOVED = "moved"  # path -> dest; "" for outside the tree (moved in from, or out to)


@dataclass(frozen=True, slots=True)
class Change:
    """One thing that happened under the root, as the worker thread applies it."""

    kind: Kind
    path: str
    dest: str = ""
    is_dir: bool = False


_KINDS = {
    "created": Kind.CREATED,
    "modified": Kind.WRITTEN,
    "closed": Kind.CLOSED,
    "attrib": Kind.ATTRIB,
    "deleted": Kind.DELETED,
    "moved": Kind.MOVED,
}
# Kinds that matter for a folder. A folder created is followed by events for what it holds;
# it matters only as one more inotify watch.
_FOLDER_KINDS = frozenset({Kind.CREATED, Kind.DELETED, Kind.MOVED})


def change_of(event: FileSystemEvent) -> Change | None:
    """The `Change` a watchdog event stands for, or None for events fsqr does not need.

    >>> from watchdog.events import FileMovedEvent, DirModifiedEvent
    >>> change_of(FileMovedEvent("/r/a.dcm", "/r/b.dcm"))
    Change(kind=<Kind.MOVED: 'moved'>, path='/r/a.dcm', dest='/r/b.dcm', is_dir=False)
    >>> change_of(DirModifiedEvent("/r")) is None
    True
    """
    kind = _KINDS.get(event.event_type)
    if kind is None or (event.is_directory and kind not in _FOLDER_KINDS):
        return None
    dest = os.fsdecode(getattr(event, "dest_path", "") or "")
    return Change(kind, os.fsdecode(event.src_path), dest, event.is_directory)


class _Forward(FileSystemEventHandler):
    """watchdog's callback: queue the change and return; never raise into the observer."""

    def __init__(self, put: Callable[[Change], None]) -> None:
        super().__init__()
        self._put = put

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            change = change_of(event)
            if change is not None:
                self._put(change)
        except Exception:  # the edge: an exception here would end watchdog's thread
            log.exception("cannot queue file event %r", event)


class _OverflowAlarm(logging.Handler):
    """Hears watchdog say that the kernel dropped events (an inotify queue overflow).

    watchdog rebuilds its watches after an overflow but tells no event handler, only its log;
    so this handler listens to that log and asks for a rescan.
    """

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if "overflow" in record.getMessage().lower():
                self._on_overflow()
        except Exception:  # a logging handler must not raise into the code that logged
            self.handleError(record)


def watch_limit_reached(path: str) -> bool:
    """True when inotify cannot add one more watch: `fs.inotify.max_user_watches` is used up,
    and some folders may have gone unwatched (watchdog skips them without a word)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        return False  # out of inotify instances: a different limit, reported by watchdog
    try:
        reached = libc.inotify_add_watch(fd, os.fsencode(path), _IN_DELETE_SELF) < 0
        return reached and ctypes.get_errno() == errno.ENOSPC
    finally:
        os.close(fd)


def observer_alive(observer: BaseObserver) -> bool:
    """True while every thread of `observer` runs: its dispatcher, its emitters and, on Linux,
    the thread that reads inotify (a private attribute of watchdog's, looked up defensively).
    An exception in any of them (a warning turned into an error, say) ends it, and with it
    every later event."""
    threads: list[Any] = [observer, *observer.emitters]
    reader = getattr(observer, "_inotify_fd", None)
    if isinstance(reader, threading.Thread):
        threads.append(reader)
    return all(thread.is_alive() for thread in threads)


def _native_observer() -> tuple[BaseObserver, bool]:
    """The platform's observer, and whether it reports a file closed after writing."""
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver  # noqa: PLC0415 (Linux only)

        # Full events: a file renamed in from outside the tree is a move, not a creation,
        # so it is known to be complete and is read at once.
        return InotifyObserver(generate_full_events=True), True
    observer: BaseObserver = Observer()
    return observer, False


def _event_filter() -> list[type[FileSystemEvent]]:
    """The watchdog event classes fsqr handles; opened and closed-unwritten are left to the
    kernel to drop, since every C-FIND header read and C-MOVE would cause them."""
    from watchdog import events  # noqa: PLC0415 (the names differ between watchdog releases)

    names = [
        "FileCreatedEvent",
        "DirCreatedEvent",
        "FileModifiedEvent",
        "FileClosedEvent",
        "FileAttribEvent",
        "FileDeletedEvent",
        "DirDeletedEvent",
        "FileMovedEvent",
        "DirMovedEvent",
    ]
    return [getattr(events, name) for name in names if hasattr(events, name)]


@dataclass(slots=True)
class _Pending:
    """A file waiting to be read: when to look again, and what it looked like last time."""

    due: float
    timer: float  # when its one live timer fires; earlier timers for it are stale
    stamp: Stamp | None = None
    writing: bool = False  # written to and not closed yet
    suspect: bool = False  # did not parse; read again only after it held still


_STOP = object()  # queued: the worker ends
_WAKE = object()  # queued: the worker looks at its timers and rescans


class Watcher:
    """Applies changes under `root` to `index` while the server runs.

    `start()` begins observing (changes are queued), `release()` lets the worker apply them
    (the server calls it once the start-up scan is indexed), `stop()` ends both threads.
    """

    def __init__(
        self,
        root: Path,
        index: Index,
        mode: WatchMode = "native",
        poll_interval: float = 2.0,
        *,
        settle: float = SETTLE,
        write_grace: float = WRITE_GRACE,
    ) -> None:
        self.root = root
        self.index = index
        self.mode = mode
        self.poll_interval = poll_interval
        self.settle = settle
        self.write_grace = write_grace
        self.polling = mode == "polling"  # rescan every poll_interval (also once limits hit)
        self.rescans = 0  # rescans done, for logs and tests
        self._root = str(root)
        self._queue: queue.SimpleQueue[Change | object] = queue.SimpleQueue()
        self._released = threading.Event()
        self._stopping = threading.Event()
        self._observer: BaseObserver | None = None
        self._closes_reported = False
        self._alarm: _OverflowAlarm | None = None
        self._restarts: list[float] = []  # when the native watcher was started anew
        self._worker: threading.Thread | None = None
        # The worker's own state: only the worker thread touches it.
        self._pending: dict[str, _Pending] = {}
        self._timers: list[tuple[float, str]] = []
        self._reported: dict[str, Stamp] = {}  # files that cannot be indexed, as last reported
        self._rescan_at: float | None = None
        self._limit_checked = 0.0
        self._limit_reported = False
        self._health_checked = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Watcher:
        if self.mode == "native":
            self._start_native()
        self._worker = threading.Thread(target=self._run, name="fsqr-watch", daemon=True)
        self._worker.start()
        return self

    def release(self) -> None:
        """Apply the changes queued so far, and every later one as it comes."""
        self._released.set()

    def stop(self) -> None:
        # Taken in one step: the worker thread drops a dead observer by itself (_check_observer).
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)
        if self._alarm is not None:
            logging.getLogger("watchdog").removeHandler(self._alarm)
            self._alarm = None
        if self._worker is not None:
            self._stopping.set()  # a rescan under way ends early
            self._released.set()
            self._queue.put(_STOP)
            self._worker.join()
            self._worker = None

    def rescan(self, delay: float = 0.0) -> None:
        """Ask for the whole tree to be reconciled with the index after `delay` seconds."""
        due = time.monotonic() + delay
        self._rescan_at = due if self._rescan_at is None else min(self._rescan_at, due)
        self._queue.put(_WAKE)

    def _start_native(self) -> None:
        try:
            observer, self._closes_reported = _native_observer()
            observer.schedule(
                _Forward(self._queue.put), self._root, recursive=True, event_filter=_event_filter()
            )
            observer.start()
        except OSError as exc:
            log.warning(
                "cannot watch %s for changes (%s): rescanning it every %.1f s instead",
                self.root,
                exc,
                self.poll_interval,
            )
            self.polling = True
            return
        self._observer = observer
        self._alarm = _OverflowAlarm(self._on_overflow)
        logging.getLogger("watchdog").addHandler(self._alarm)
        self._check_watch_limit(time.monotonic())

    def _on_overflow(self) -> None:
        if self._rescan_at is None:  # watchdog says it more than once
            log.warning(
                "file events under %s were lost (inotify queue overflow): rescanning", self.root
            )
        # watchdog rebuilds its watches right after saying so; rescan once that is done.
        self.rescan(delay=self.settle)

    def _check_observer(self, now: float) -> None:
        observer = self._observer
        if observer is None or now - self._health_checked < _HEALTH_EVERY:
            return
        self._health_checked = now
        if observer_alive(observer):
            return
        self._observer = None
        self._closes_reported = False
        with contextlib.suppress(Exception):  # the edge: a half-dead observer must not stop us
            observer.stop()
        if self._alarm is not None:
            logging.getLogger("watchdog").removeHandler(self._alarm)
            self._alarm = None
        # watchdog's thread can die of a race of its own (a folder deleted and made again at
        # once: a KeyError in its bookkeeping); a new watcher, and a rescan for what happened
        # meanwhile, bring native watching back. Rescanning every poll_interval instead only
        # once that keeps failing.
        self._restarts = [t for t in self._restarts if now - t < _RESTARTS_WITHIN] + [now]
        if len(self._restarts) <= _RESTARTS_AT_MOST:
            log.warning("the file watcher of %s stopped (see above): started anew", self.root)
            self._start_native()
        if self._observer is None:
            log.error(
                "the file watcher of %s stopped (see above): rescanning it every %.1f s",
                self.root,
                self.poll_interval,
            )
            self.polling = True
        self.rescan()

    def _check_watch_limit(self, now: float) -> None:
        if self._limit_reported or now - self._limit_checked < _LIMIT_PROBE_EVERY:
            return
        self._limit_checked = now
        if not watch_limit_reached(self._root):
            return
        self._limit_reported = True
        self.polling = True
        log.warning(
            "the inotify watch limit is reached (fs.inotify.max_user_watches): some folders "
            "under %s may be unwatched, so it is also rescanned every %.1f s",
            self.root,
            self.poll_interval,
        )
        self.rescan()

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._released.wait()
        next_poll = time.monotonic() + self.poll_interval
        while True:
            now = time.monotonic()
            deadlines = [next_poll if self.polling else now + _HEALTH_EVERY]
            if self._timers:
                deadlines.append(self._timers[0][0])
            if self._rescan_at is not None:
                deadlines.append(self._rescan_at)
            try:
                change = self._queue.get(timeout=max(0.0, min(deadlines) - now))
            except queue.Empty:
                change = None
            if change is _STOP:
                return
            try:
                if isinstance(change, Change):
                    self._apply(change)
                now = time.monotonic()
                if self._rescan_at is not None and now >= self._rescan_at:
                    self._rescan_at = None
                    self.reconcile(self._root, settle=False, whole=False)
                self._check_observer(now)
                if self.polling and now >= next_poll:
                    self.reconcile(self._root, settle=True, whole=False)
                    next_poll = time.monotonic() + self.poll_interval
                self._run_timers(time.monotonic())
                if self._queue.empty():  # after a burst of changes, not during it
                    self._refresh_records()
            except Exception:  # the edge: one bad change must not stop the watcher
                log.exception("watching %s: cannot apply %s", self.root, change)

    def _apply(self, change: Change) -> None:
        path = change.path
        if change.is_dir and change.kind is Kind.CREATED:
            self._check_watch_limit(time.monotonic())
        elif change.kind is Kind.MOVED:
            self._moved(path, change.dest, change.is_dir)
        elif not change.is_dir and not is_candidate_name(os.path.basename(path)):
            return  # fsqr's own temporary file: C-STORE indexes it once it is renamed
        elif change.kind is Kind.DELETED:
            self._removed(path, change.is_dir)
        elif change.kind is Kind.CLOSED:
            self._pending.pop(path, None)
            self._read(path, whole=True, force=True)
        elif change.kind is Kind.WRITTEN:
            self._schedule(path, writing=self._closes_reported)
        elif not self._allowed(path):  # a symbolic link, to a file or a folder: not followed
            log.debug("not following %s: a symbolic link", path)
        else:
            self._schedule(path, writing=False, stamp=_stamp(path))

    def _refresh_records(self) -> None:
        """A patient, study or series whose records came from a file now gone takes them from
        a file still there, as a restart would (`Index.stale_sources`)."""
        for path in self.index.stale_sources():
            result = read_header(path)
            if isinstance(result, Parsed) and self.index.refresh(result):
                log.debug("records read again from %s: the file they came from is gone", path)

    def _removed(self, path: str, is_dir: bool) -> None:
        self._forget(path, under=is_dir)
        removed = 0 if is_dir or self.index.remove_path(path) is None else 1
        if not removed:  # a folder, or a symlink to one
            self._forget(path, under=True)
            removed = self.index.remove_under(path)
        if removed:
            log.debug("removed %d file%s at %s", removed, "s"[: removed != 1], path)

    def _moved(self, src: str, dest: str, is_dir: bool) -> None:
        arrives = (
            bool(dest)
            and (is_dir or is_candidate_name(os.path.basename(dest)))
            and self._allowed(dest)
        )
        if dest and not arrives:  # a link or a worklist item renamed over a file: it goes
            self._removed(dest, is_dir)
        if src:
            if not arrives:
                self._removed(src, is_dir)  # moved out of the tree, or out of sight
            else:
                self._forget(src, under=is_dir)
                moved = self.index.move(src, dest)
                if moved:
                    log.debug("moved %d file%s: %s -> %s", moved, "s"[: moved != 1], src, dest)
        if not arrives:
            return
        if src and not is_candidate_name(os.path.basename(src)):
            return  # C-STORE's rename of its temporary file: it indexes the instance itself
        if is_dir or os.path.isdir(dest):
            self._check_watch_limit(time.monotonic())
            self.reconcile(dest, settle=False, whole=True)
        else:
            self._pending.pop(dest, None)
            self._read(dest, whole=True)

    def _forget(self, path: str, *, under: bool) -> None:
        """Drop the timers and reports of `path`, and with `under` of everything below it."""
        self._pending.pop(path, None)
        self._reported.pop(path, None)
        if under:
            prefix = path.rstrip(os.sep) + os.sep
            for table in (self._pending, self._reported):
                for p in [p for p in table if p.startswith(prefix)]:
                    del table[p]

    # -- timers --------------------------------------------------------------------------------

    def _schedule(
        self, path: str, *, writing: bool, stamp: Stamp | None = None, suspect: bool = False
    ) -> None:
        """Read `path` once it holds still: `settle` seconds after the last change, or
        `write_grace` seconds while it is written and not closed yet, or did not parse."""
        entry = self._pending.get(path)
        if entry is None:
            entry = self._pending[path] = _Pending(due=0.0, timer=float("inf"))
        entry.writing = entry.writing or writing
        entry.suspect = suspect
        if stamp is not None:
            entry.stamp = stamp
        self._arm(path, entry)

    def _arm(self, path: str, entry: _Pending) -> None:
        wait = self.write_grace if entry.writing or entry.suspect else self.settle
        entry.due = time.monotonic() + wait
        if entry.due < entry.timer:
            entry.timer = entry.due
            heapq.heappush(self._timers, (entry.timer, path))
        # Otherwise the live timer fires first and finds the due date moved on.

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            fired, path = heapq.heappop(self._timers)
            entry = self._pending.get(path)
            if entry is None or fired != entry.timer:
                continue  # stale: the file was read, forgotten, or given an earlier timer
            if now < entry.due:  # it changed since the timer was set
                entry.timer = entry.due
                heapq.heappush(self._timers, (entry.timer, path))
                continue
            stamp = _stamp(path)
            if stamp is None:  # gone: its delete or move event says what became of it
                del self._pending[path]
            elif stamp != entry.stamp:  # first look, or still changing: wait until it holds still
                entry.stamp = stamp
                entry.timer = float("inf")
                self._arm(path, entry)
            else:
                del self._pending[path]
                self._read(path, whole=entry.suspect)

    # -- reading -------------------------------------------------------------------------------

    def _allowed(self, path: str) -> bool:
        """False for a symbolic link, which is not followed, as the scan decides (`tree.walk`):
        the watched folders are real ones, so only the last part of a path can be a link."""
        return not os.path.islink(path)

    def _read(self, path: str, *, whole: bool, force: bool = False) -> None:
        """Index `path` from its header. `whole`: it is known complete (closed, renamed), so a
        failure to parse is final. `force`: read it even if its size and mtime are unchanged."""
        try:
            st = os.lstat(path)  # a link is not followed: not even to a regular file
        except OSError:
            return  # gone again: its delete or move event follows
        if not stat.S_ISREG(st.st_mode):
            # A link, a FIFO, a socket put where a file was: what was indexed there is gone.
            if self.index.remove_path(path) is not None:
                log.debug("removed %s: no longer a regular file", path)
            return
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        held = self.index.instance_at(path)
        if not force and held is not None and (held.size, held.mtime_ns, held.ctime_ns) == stamp:
            return  # already indexed as it is: a C-STORE's rename, a rescan, a repeated event
        if not force and self._reported.get(path) == stamp:
            return
        self._indexed(path, read_header(path), whole=whole, force=force)

    def _indexed(self, path: str, result: Parsed | Skipped, *, whole: bool, force: bool) -> None:
        if isinstance(result, Parsed):
            self._reported.pop(path, None)
            if force:
                self.index.add(result)
            elif not self.index.update(result):
                return  # C-STORE or an earlier event got there first
            log.debug("indexed %s", path)
            return
        stamp = _stamp(path)
        if not whole and stamp is not None:
            # Perhaps still being written: look again once it has held still for a while.
            self._schedule(path, writing=False, stamp=stamp, suspect=True)
            return
        if self.index.remove_path(path) is not None:
            log.debug("removed %s: it is no longer a servable instance", path)
        if stamp is not None and self._reported.get(path) != stamp:
            self._reported[path] = stamp
            quiet = result.reason.startswith(_QUIET_REASONS)
            level = logging.DEBUG if quiet else logging.WARNING
            log.log(level, "not indexing %s: %s", path, result.reason)

    # -- rescans -------------------------------------------------------------------------------

    def reconcile(self, folder: str, *, settle: bool, whole: bool) -> None:
        """Mend the index under `folder` from the disk. `settle`: new or changed files are read
        once they held still (a polling rescan); otherwise at once, `whole` saying whether they
        are known to be complete (a folder moved in) or may still be written (an overflow)."""
        started = time.perf_counter()
        self.rescans += 1
        on_disk: dict[str, Stamp] = {}
        for path in walk(Path(folder), self.root):
            if self._stopping.is_set():
                return
            stamp = _stamp(path)
            if stamp is not None:
                on_disk[path] = stamp
        held = self.index.stamps_under(folder)
        gone = [p for p in held if p not in on_disk]
        for path in gone:
            self.index.remove_path(path)
        if os.path.normpath(folder) == os.path.normpath(self._root):
            for path in [p for p in self._reported if p not in on_disk]:
                del self._reported[path]
        changed = [
            p
            for p, stamp in on_disk.items()
            if held.get(p) != stamp and self._reported.get(p) != stamp and p not in self._pending
        ]
        if settle:
            for path in changed:
                self._schedule(path, writing=False, stamp=on_disk[path])
        else:
            for result in scan_files(changed):
                if self._stopping.is_set():
                    return
                path = result.path if isinstance(result, Skipped) else result.instance.path
                self._indexed(path, result, whole=whole, force=False)
        if gone or (changed and not settle):
            log.debug("rescanned %s", folder)  # a folder's name may hold a patient's ID
            log.info(
                "rescan: %d files gone, %d new or changed, %.0f ms",
                len(gone),
                len(changed),
                (time.perf_counter() - started) * 1000,
            )


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns) if stat.S_ISREG(st.st_mode) else None
