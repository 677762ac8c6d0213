"""The server's lifecycle: watch the tree -> scan it -> fill the index -> bind the port -> serve.

`Server` is what the CLI runs and what another program or a test embeds:

    with Server(config_from_mapping({"root": "sample_data", "port": 0})) as server:
        ...  # server.host, server.port, server.ae_title, server.index

The port is bound only once the initial index is complete, so the first association already
sees everything that was on disk at start. The watcher starts before the scan walks the tree
and applies what changed meanwhile once the scan is indexed (`watch.py`), so nothing changed
during start-up is lost.

With `index_snapshot` set, the scan reads only the files that changed since the snapshot was
written (`snapshot.py`); the snapshot is written again, in the background, after a start-up
that read any file, and on a clean stop.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from fsqr.config import Config, config_from_mapping, with_overrides
from fsqr.handlers import Handlers
from fsqr.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from fsqr.index import Index
from fsqr.keys import FIND_MODELS, GET_MODELS, MODALITY_WORKLIST_FIND, MOVE_MODELS
from fsqr.operations import Operations
from fsqr.records import Parsed, Skipped
from fsqr.scan import ScanHelper, scan_files, start_helpers, stop_helpers
from fsqr.security import server_context
from fsqr.snapshot import StatPass, partition, read_snapshot, write_snapshot
from fsqr.tree import walk
from fsqr.watch import Watcher

log = logging.getLogger(__name__)

# Connections the system may hold completed but not yet accepted (the kernel caps it at
# net.core.somaxconn); associations beyond `max_associations` are still refused with A-ASSOCIATE-RJ.
LISTEN_BACKLOG = socket.SOMAXCONN

# A snapshot this large (some 5,000 files) is checked against the tree in a process of its own;
# below it, the 0.1-0.2 s that process takes to start is more than the pass it would take over.
STAT_PASS_ELSEWHERE_FROM = 1 << 20  # bytes

STOP_GRACE = 5.0  # seconds that handlers still at work get to finish when the server stops

Progress = Callable[[int, int], None]


class Server:
    """A running fsqr: the index of one folder served on one port.

    Give it a `Config`, or settings by keyword, which are the keys of `fsqr.yaml`. Given
    settings alone, as embedded (a test, a script), it listens on 127.0.0.1 and a free port
    unless told otherwise; a `Config` (as `fsqr serve` loads one) listens where it says, by
    default on every interface, port 11112, as a PACS does:

        with Server(root="data", ae_table={"ME": {"host": "127.0.0.1", "port": 11113}}) as pacs:
            print(pacs.host, pacs.port, pacs.ae_title, pacs.index.counts())

    `operations` records the last `keep_operations` requests served (fsqr/operations.py); the
    `faults` setting makes it misbehave on purpose (fsqr/faults.py): fsqr as a test double.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        progress: Progress | None = None,
        keep_operations: int = 100_000,
        **settings: Any,
    ) -> None:
        if config is None:
            config = config_from_mapping({"host": "127.0.0.1", "port": 0, **settings})
        elif settings:
            config = with_overrides(config, **settings)
        self.config = config
        self.index = Index()
        self.skipped: list[Skipped] = []
        self.index_seconds = 0.0  # how long the start-up walk, snapshot and scan took
        self._progress = progress
        self._handlers = Handlers(config, self.index, keep_operations)
        self._listener: Any = None
        self.watcher: Watcher | None = None
        self._snapshot_writer: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Server:
        """Index the tree and listen; returns once the port is bound. A server stopped may be
        started again: it reads the tree afresh, as a new one would."""
        if self._listener is not None:
            raise RuntimeError(f"{self.ae_title} is running already, on port {self.port}")
        root = self.config.root
        if not root.is_dir():
            raise FileNotFoundError(f"root folder {root} does not exist or is not a folder")
        worklist = self.config.worklist
        if worklist is not None and not worklist.is_dir():  # or every worklist query finds nothing
            raise FileNotFoundError(f"worklist folder {worklist} does not exist or is not a folder")
        ssl_context = server_context(self.config.tls)  # before the scan: a bad key fails fast
        _check_free(self.config.host, self.config.port)  # before the scan, too: a port taken
        helpers = self._scan_helpers()  # before any thread starts: then they start at once
        stat_pass = self._stat_pass()  # loads the snapshot's stamps while the watcher starts
        try:
            if self.config.watch != "off":
                self.watcher = Watcher(
                    root, self.index, self.config.watch, self.config.poll_interval
                )
                self.watcher.start()  # before the walk: a change during it is queued, not lost
            self._build_index(stat_pass, helpers)
            if self.watcher is not None:
                self.watcher.release()
            ae = application_entity(self.config)
            try:
                self._listener = ae.start_server(
                    (self.config.host, self.config.port),
                    block=False,
                    evt_handlers=self._handlers.bindings(),
                    ssl_context=ssl_context,
                )
            except OSError as exc:  # taken since _check_free: say which port
                raise _cannot_listen(self.config.host, self.config.port, exc) from exc
            self._listener.contexts = [_CopiedQuickly.of(c) for c in self._listener.contexts]
            # pynetdicom listens with Python's socketserver default, a backlog of 5: the sixth
            # of a burst of clients that connect at once (a CI job's parallel tests, modalities
            # after a network outage) has its SYN dropped and waits a second or more to retry.
            self._listener.socket.listen(LISTEN_BACKLOG)
        except BaseException:  # the port is taken, say: no watcher threads are left behind
            self._stop_watcher()
            raise
        finally:
            if stat_pass is not None:
                stat_pass.close()  # answered by now, unless the start-up failed
            stop_helpers(helpers)  # the scan has stopped them, unless the start-up failed
        log.info(
            "%s listening on %s:%d%s",
            self.ae_title,
            self.host,
            self.port,
            " (TLS only)" if ssl_context is not None else "",
        )
        return self

    def stop(self) -> None:
        running = self._listener is not None
        if running:
            _stop_accepting(self._listener)
            # pynetdicom leaves open associations running, and the process alive, until each
            # ends or its network timeout passes: end them (A-ABORT). Writes are atomic, so an
            # aborted C-STORE leaves no partial file.
            active = self._listener.active_associations
            for assoc in active:
                assoc.abort()
            # A handler still at work, a C-STORE being written say, finishes before stop()
            # returns: the process may end right after, taking any thread with it mid-write.
            deadline = time.monotonic() + STOP_GRACE
            for assoc in active:
                if assoc is not threading.current_thread():
                    assoc.join(max(deadline - time.monotonic(), 0))
            self._listener = None
            log.info("stopped")
        self._stop_watcher()
        if running:
            self._save_snapshot()  # now that nothing changes the index any more

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return str(self._running().server_address[0])

    @property
    def port(self) -> int:
        """The port actually bound: the free one the system chose when configured as 0."""
        return int(self._running().server_address[1])

    def _running(self) -> Any:
        if self._listener is None:  # not "'NoneType' object has no attribute ..."
            raise RuntimeError(f"{self.ae_title} is not listening: start() it first")
        return self._listener

    @property
    def ae_title(self) -> str:
        return self.config.ae_title

    @property
    def operations(self) -> Operations:
        """Every request served so far, oldest first, each recorded before its final response
        was sent: a thread-safe, append-only sequence of frozen `Served` records."""
        return self._handlers.operations

    # -- start-up ---------------------------------------------------------------------------

    def _build_index(self, stat_pass: StatPass | None, helpers: list[ScanHelper]) -> None:
        started = time.perf_counter()
        self.index.clear()  # a restart of this server: the tree may have changed meanwhile
        self.skipped.clear()
        with _collector_paused():
            taken = None if stat_pass is None else self._from_snapshot(stat_pass)
            if taken is None:
                known: list[Parsed | Skipped] = []
                to_read = list(walk(self.config.root))
                current = False
            else:
                known, to_read, gone = taken
                current = not to_read and not gone
                log.info("index snapshot: %d files unchanged, %d to read", len(known), len(to_read))
            scanned = scan_files(to_read, self.config.scan_workers, self._progress, helpers or None)
            for result in scanned:
                self._keep(result)
        paths = len(known) + len(to_read)
        counts = self.index.counts()
        seconds = self.index_seconds = time.perf_counter() - started
        log.info(
            "indexed %s: %d patients, %d studies, %d series, %d instances "
            "from %d files in %.2f s (%.0f files/s)",
            self.config.root,
            counts.patients,
            counts.studies,
            counts.series,
            counts.instances,
            paths,
            seconds,
            paths / seconds if seconds else 0.0,
        )
        if self.skipped:
            log.info(
                "skipped %d files that are not servable DICOM instances "
                "(run with log level debug to see each one and why)",
                len(self.skipped),
            )
        duplicates = counts.files - counts.instances
        if duplicates:
            log.info(
                "%d files repeat a SOP Instance UID already indexed; one is served", duplicates
            )
        if self.config.index_snapshot is not None and not current:
            # so that a crash soon after this start does not mean reading these files again
            self._snapshot_writer = threading.Thread(
                target=self._save_snapshot, name="fsqr-snapshot", daemon=True
            )
            self._snapshot_writer.start()

    def _scan_helpers(self) -> list[ScanHelper]:
        """The start-up scan's helper processes, started now when the scan will read every file
        (no index snapshot yet) and this process runs no other thread: forked before the
        watcher's threads exist, they start in a millisecond, not in the 0.4 s a new
        interpreter takes to import pydicom (`scan.start_helpers`)."""
        snapshot = self.config.index_snapshot
        if snapshot is not None and snapshot.exists():
            return []  # a warm restart reads few files, if any
        return start_helpers(self.config.scan_workers, only_by_fork=True)

    def _stat_pass(self) -> StatPass | None:
        """With a snapshot configured: the pass that stats the tree against it, in a process of
        its own unless the scan is asked to use one core, or there is no snapshot yet, or one
        so small that starting a process costs more than it saves."""
        source = self.config.index_snapshot
        if source is None:
            return None
        try:
            small = os.stat(source).st_size < STAT_PASS_ELSEWHERE_FROM
        except OSError:  # none yet, or unreadable: read_snapshot says which
            small = True
        one_core = self.config.scan_workers == 1 or (os.cpu_count() or 1) == 1
        return StatPass(source, self.config.root, here=one_core or small)

    def _from_snapshot(
        self, stat_pass: StatPass
    ) -> tuple[list[Parsed | Skipped], list[str], bool] | None:
        """Index what the snapshot holds unchanged; returns it, the files still to read, and
        whether any file it holds has changed or gone. None when there is no usable snapshot
        (then every file is read).

        Two things at once, one per core: this process reads and indexes the snapshot's
        records, the stat pass walks the tree and stats every file against the snapshot's
        stamps. Each is a single-core pass over every file; together they were most of a warm
        restart.
        """
        source, root = self.config.index_snapshot, self.config.root
        assert source is not None
        stat_pass.go()
        snapshot = read_snapshot(source, root)
        if snapshot is not None:  # indexed while stat goes on; what it finds stale goes
            self.index.add_many(r for r in snapshot.records if isinstance(r, Parsed))
        stat_found = stat_pass.answer()
        taken = None if snapshot is None else partition(snapshot, stat_found)
        if stat_found is None or taken is None:
            self.index.clear()
            return None
        for path in stat_found.stale:
            self.index.remove_path(path)
        known, to_read = taken
        for result in known:
            if isinstance(result, Skipped):
                self._keep(result)
        return known, to_read, bool(stat_found.stale)

    def _keep(self, result: Parsed | Skipped) -> None:
        if isinstance(result, Parsed):
            self.index.add(result)
        else:
            self.skipped.append(result)
            log.debug("skipped %s: %s", result.path, result.reason)

    def _save_snapshot(self) -> None:
        if self.config.index_snapshot is None:
            return
        if (
            self._snapshot_writer is not None
            and self._snapshot_writer is not threading.current_thread()
        ):
            self._snapshot_writer.join()  # the last one written is the latest
        started = time.perf_counter()
        try:
            count = write_snapshot(
                self.config.index_snapshot, self.config.root, self.index.files(), self.skipped
            )
        except OSError as exc:
            log.warning("cannot write the index snapshot %s: %s", self.config.index_snapshot, exc)
            return
        log.info(
            "index snapshot of %d files written to %s in %.2f s",
            count,
            self.config.index_snapshot,
            time.perf_counter() - started,
        )


def _check_free(host: str, port: int) -> None:
    """Raise OSError, naming `host:port`, if the server could not listen there: bound and let
    go at once, as the listener will bind it (SO_REUSEADDR), so that a port already taken is
    said before the scan, not after it (some 20 s at a million files). Port 0 is always free."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from exc


def _cannot_listen(host: str, port: int, exc: OSError) -> OSError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OSError(exc.errno, f"cannot listen on {host}:{port}: {reason}")


def _stop_accepting(listener: Any) -> None:
    """pynetdicom's `shutdown()` of its listener, without waiting up to half a second for it.

    socketserver's accept loop looks for a stop request only each time its `select()` returns,
    at the latest every 0.5 s: each `Server.stop()` took that long, every test of a suite that
    starts a server paid it. A listening socket that is shut down is readable at once, so the
    loop looks now (should it look before the request is made, accept() fails and it looks
    again; nothing is accepted).
    """
    stopping = threading.Thread(target=listener.shutdown, name="fsqr-stop-accepting")
    stopping.start()
    with contextlib.suppress(OSError):  # already closed: nothing to wake
        listener.socket.shutdown(socket.SHUT_RDWR)
    stopping.join()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the index is built at start-up, then file all
    it holds in the collector's oldest generation at once.

    Every record made then lives on, so a collection while they are made only walks the
    growing heap again and again: 0.4 s of a 5 s cold start over 100,000 files, half of
    reading a snapshot back. And once the collector runs again, its next collection of the
    youngest generation would walk every record made meanwhile (0.08 s at 100,000 files):
    `gc.freeze()` then `gc.unfreeze()` moves them all to the oldest generation without looking
    at them, unless something has frozen objects of its own, which `unfreeze` would thaw
    (other code, or Python 3.12 itself, which starts with a few hundred frozen).
    Reading headers with pydicom, the scan's fallback, leaves no cyclic garbage to collect
    meanwhile (none over pydicom's own test files)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if collecting:
            gc.enable()


class _CopiedQuickly(PresentationContext):
    """A supported presentation context that copies itself in a way fit for its use.

    pynetdicom deep-copies the server's supported contexts for every association it accepts. For
    fsqr's 178 contexts, most with every transfer syntax, a generic deepcopy rebuilds some 7,700
    UID objects, validating each: 30-90 ms of CPU before each association could even be
    negotiated. UIDs are immutable; only the list that holds them needs a copy of its own.
    """

    @classmethod
    def of(cls, context: PresentationContext) -> _CopiedQuickly:
        copied = cls()
        copied.__dict__.update(context.__dict__)
        return copied

    def __deepcopy__(self, memo: dict[int, Any]) -> _CopiedQuickly:
        copied = copy.copy(self)
        copied._transfer_syntax = list(self._transfer_syntax)
        return copied


# Every transfer syntax pynetdicom knows, for the storage SOP Classes. pynetdicom accepts the
# first of these that the peer proposed, whatever the peer's own order: Explicit VR Little
# Endian first, the syntax most files are stored in, so that a C-GET SCU offering it gets them
# as stored rather than converted.
STORAGE_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    *(uid for uid in ALL_TRANSFER_SYNTAXES if uid != ExplicitVRLittleEndian),
)


def application_entity(config: Config) -> Any:
    """The Application Entity fsqr serves as: its timeouts, limits and presentation contexts."""
    ae = AE(ae_title=config.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    timeouts = config.timeouts
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.max_pdu
    ae.require_called_aet = False
    ae.add_supported_context(Verification)
    # Modality Worklist is always accepted, so that a worklist query sent here without a
    # worklist folder gets a failure that says why, not a rejected context.
    for uid in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS, MODALITY_WORKLIST_FIND):
        ae.add_supported_context(uid)
    # Every storage SOP Class in every transfer syntax: C-STORE from peers (stored as sent),
    # and C-GET's sub-operations, which need both roles for role selection (PS3.7 D.3.3.4).
    # The transfer syntaxes are validated once, not once per SOP Class: pynetdicom would build
    # and check some 7,700 UIDs, a tenth of a second of every start.
    syntaxes = PresentationContext()
    syntaxes.transfer_syntax = list(STORAGE_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        sop_class = UID(str(context.abstract_syntax))  # as pynetdicom keys its contexts
        ae.add_supported_context(
            sop_class, syntaxes.transfer_syntax[0], scu_role=True, scp_role=True
        )
        ae._supported_contexts[sop_class]._transfer_syntax = list(syntaxes.transfer_syntax)
    return ae
