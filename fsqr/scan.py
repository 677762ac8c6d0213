"""From files to records: one file's header to a `Parsed` or a `Skipped` (pure), and the start-up
scan that does this for every file of a tree (tree.py finds them), on every core. A header is
read by header.py's fast reader first; pydicom reads whatever that one declines, and is the
reference it is tested against.

This module reads files and nothing else: it knows neither the index's locking nor networking.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread, read_partial
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from fsqr.header import (
    DICOMDIR,
    EMPTY,
    MEDIA_STORAGE_DIRECTORY,
    NOT_DICOM,
    TRUNCATED,
    indexed_texts,
    looks_like_raw_dataset,
    read_indexed,
    records_from,
)
from fsqr.header import PIXEL_TAGS as _PIXEL_TAGS
from fsqr.header import SEQUENCE_DELIMITER as _SEQUENCE_DELIMITER
from fsqr.header import UNDEFINED_LENGTH as _UNDEFINED_LENGTH

# Re-exported: query and storage read values as the index stores them, and skip as the scan does.
from fsqr.header import element_text as element_text  # noqa: PLC0414 (mypy's explicit re-export)
from fsqr.header import without_pixel_data as without_pixel_data  # noqa: PLC0414 (ditto)
from fsqr.records import Parsed, Skipped, stat_stamp
from fsqr.tree import open_served

log = logging.getLogger(__name__)

# Below this many files a scan given no helpers reads them in this process alone: a helper
# that cannot be forked (see `_helper_context`) takes 0.3-0.4 s to start and import pydicom,
# time in which this process reads some 5,000 headers itself.
_PARALLEL_THRESHOLD = 5000
_CHUNK = 200  # files per helper's task: enough to amortise pickling, few enough to balance


class PixelProbe:
    """A `stop_when` callback: stops pydicom at the pixel data and remembers where it was.

    pydicom's `stop_before_pixels` does not say how long the pixel data claims to be; knowing it
    lets the scan refuse a file that was cut short (a half-copied file is never served half).
    """

    __slots__ = ("length", "vr")

    def __init__(self) -> None:
        self.length: int | None = None
        self.vr: str | None = None

    def __call__(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            self.length, self.vr = length, vr
            return True
        return False


def _value_offset(fp: BinaryIO, probe: PixelProbe, explicit_vr: bool) -> int:
    """Where the pixel data's value starts; pydicom leaves `fp` at the start of its element."""
    header = 8  # tag + (VR + 2-byte length) or 4-byte length
    if explicit_vr and probe.vr in {"OB", "OW", "OF", "OD", "UN"}:
        header = 12  # PS3.5 7.1.2: these VRs have 2 reserved bytes and a 4-byte length
    return fp.tell() + header


def _is_complete(fp: BinaryIO, probe: PixelProbe, explicit_vr: bool, size: int) -> bool:
    if probe.length is None:
        return True
    if probe.length == _UNDEFINED_LENGTH:
        fp.seek(max(size - 64, 0))
        return _SEQUENCE_DELIMITER in fp.read(64)
    return _value_offset(fp, probe, explicit_vr) + probe.length <= size


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return str(uid)
    # A file without meta information: say what pydicom found the encoding to be.
    implicit, little = ds.original_encoding
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def read_header(path: str) -> Parsed | Skipped:
    """Read one file's header (never its pixels) and split it into the records of each level.

    The fast reader (`header.read_indexed`) goes first; whatever it is not sure of, pydicom reads.
    Never raises: whatever is wrong with the file comes back as `Skipped` with a reason.
    """
    fast = read_indexed(path)
    if fast is not None:
        return fast
    return read_header_with_pydicom(path)


def read_header_with_pydicom(path: str) -> Parsed | Skipped:
    """`read_header` by pydicom alone: the fallback, and what the fast reader is tested against."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _read_header(path)
        for warning in caught:
            log.debug("%s: %s", path, warning.message)
        return result
    except Exception as exc:  # a broken file must never stop the scan
        return Skipped(path, f"cannot be read: {type(exc).__name__}: {exc}")


def _read_header(path: str) -> Parsed | Skipped:
    fd, st = open_served(path)
    with os.fdopen(fd, "rb") as fp:
        result = _read_stated(path, st, fp)
    if isinstance(result, Skipped):  # remembered by this stamp in an index snapshot
        return Skipped(path, result.reason, stat_stamp(st))
    return result


def _read_stated(path: str, st: os.stat_result, fp: BinaryIO) -> Parsed | Skipped:
    if st.st_size == 0:
        return Skipped(path, EMPTY)
    probe = PixelProbe()
    try:
        ds = read_partial(fp, stop_when=probe)
    except InvalidDicomError:
        fp.seek(0)
        if not looks_like_raw_dataset(fp.read(8)):
            return Skipped(path, NOT_DICOM)
        fp.seek(0)
        ds = read_partial(fp, stop_when=probe, force=True)
    if ds.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        return Skipped(path, DICOMDIR)
    transfer_syntax = _transfer_syntax(ds)
    explicit = transfer_syntax != ImplicitVRLittleEndian
    if transfer_syntax != DeflatedExplicitVRLittleEndian and not _is_complete(
        fp, probe, explicit, st.st_size
    ):
        return Skipped(path, TRUNCATED)
    parsed = parsed_from_dataset(
        ds, path, st.st_size, st.st_mtime_ns, transfer_syntax, ctime_ns=st.st_ctime_ns
    )
    return without_pixel_data(parsed, probe.length is not None)


def parsed_from_dataset(
    ds: Dataset, path: str, size: int, mtime_ns: int, transfer_syntax: str, *, ctime_ns: int = 0
) -> Parsed | Skipped:
    """Split a header into records; used by the scan and by C-STORE for what it just wrote."""
    return records_from(
        indexed_texts(lambda tag: element_text(ds.get(tag))),
        lambda: str(ds.file_meta.get("MediaStorageSOPClassUID", "")),
        path=path,
        size=size,
        mtime_ns=mtime_ns,
        transfer_syntax=transfer_syntax,
        ctime_ns=ctime_ns,
    )


def _read_chunk(paths: list[str]) -> list[Parsed | Skipped]:
    """Read a chunk of files. The files of a series share their patient, study and series
    records (`header.records_from`), so a helper pickles each once per chunk, and the scanning
    process unpickles and keeps it once."""
    return [read_header(path) for path in paths]


_Context = (
    multiprocessing.context.ForkContext
    | multiprocessing.context.ForkServerContext
    | multiprocessing.context.SpawnContext
)


class ScanHelper:
    """A scan's helper: a process that reads the chunks of paths it is sent and sends their
    results back, in order, over one pipe. This process keeps count of what it has sent and
    not yet had back."""

    def __init__(self, context: _Context) -> None:
        self.conn, child_end = context.Pipe()
        self.process = context.Process(
            target=_help, args=(child_end,), name="fsqr-scan", daemon=True
        )
        self.process.start()
        child_end.close()
        self.pending: deque[list[str] | None] = deque()  # None: a chunk read here meanwhile
        self.answered = False  # whether it has sent anything yet, that is, has started

    def send(self, chunk: list[str]) -> None:
        self.pending.append(chunk)
        with contextlib.suppress(OSError):  # it has died: `receive` finds out, and says so
            self.conn.send(chunk)

    def receive(self) -> list[Parsed | Skipped] | None:
        """The results of its oldest chunk, or None when this process has read that one.
        Raises EOFError or OSError when the helper has died."""
        results: list[Parsed | Skipped] = self.conn.recv()
        self.answered = True
        return results if self.pending.popleft() is not None else None

    def take_back(self) -> list[str] | None:
        """The newest chunk it has not answered yet, to be read here instead."""
        for i in range(len(self.pending) - 1, -1, -1):
            chunk = self.pending[i]
            if chunk is not None:
                self.pending[i] = None
                return chunk
        return None

    def owes(self) -> bool:
        """Whether it holds a chunk that nobody else reads."""
        return any(chunk is not None for chunk in self.pending)

    def unanswered(self) -> list[list[str]]:
        """Every chunk it still holds, taken back: for a helper that died."""
        chunks = [chunk for chunk in self.pending if chunk is not None]
        self.pending.clear()
        return chunks

    def stop(self) -> None:
        if self.conn.closed:
            return
        if self.pending:  # still reading what this process has read meanwhile: no use waiting
            self.process.kill()
        with contextlib.suppress(OSError):  # it may have died: nothing to tell then
            self.conn.send(None)
        self.conn.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _help(conn: multiprocessing.connection.Connection) -> None:
    """A helper process's life: chunks in, results out, until told to stop (None) or until the
    scanning process is gone. Ctrl-C is the scanning process's to handle: it stops the helpers.
    A forked helper would otherwise run the handlers it inherited (`fsqr serve` logs a SIGTERM
    and sets an event only its parent waits on): SIGTERM ends it, as it ends any process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        while (chunk := conn.recv()) is not None:
            conn.send(_read_chunk(chunk))
    except (EOFError, OSError):
        pass


def _helper_context() -> _Context:
    # fork: a helper then starts in a millisecond with everything imported, where any other way
    # costs it a new interpreter and pydicom's import (~0.4 s, as long as this process takes for
    # 5,000 headers). Only from a process with one thread, though: forking one that runs others
    # (a server's watcher, say) can copy a lock that another thread holds, and deadlock.
    # And only on Linux: macOS's system libraries are not safe to use in a forked child.
    # forkserver otherwise: helpers fork from a clean single-threaded process. Nothing is
    # preloaded into it: each helper imports fsqr.scan itself while this process reads files.
    methods = multiprocessing.get_all_start_methods()
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([])
        return ctx
    return multiprocessing.get_context("spawn")


def start_helpers(workers: int = 0, *, only_by_fork: bool = False) -> list[ScanHelper]:
    """Start the helper processes of a scan, `workers` - 1 of them (0: one per core, less one
    for this process), for `scan_files`, which stops them.

    `only_by_fork`: none unless they can be forked (see `_helper_context`). For a caller that
    is about to start threads and scan after (a server its watcher): forked now, the helpers
    start in a millisecond; started later, in 0.4 s.
    """
    workers = workers or os.cpu_count() or 1
    context = _helper_context()
    if workers < 2 or (only_by_fork and context.get_start_method() != "fork"):
        return []
    return [ScanHelper(context) for _ in range(workers - 1)]


def stop_helpers(helpers: list[ScanHelper]) -> None:
    """Stop helpers from `start_helpers`; stopping one twice does nothing."""
    for helper in helpers:
        helper.stop()


def scan_files(
    paths: list[str],
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    helpers: list[ScanHelper] | None = None,
) -> Iterator[Parsed | Skipped]:
    """Read the headers of `paths`, in parallel when there are many; results in any order.

    `workers` 0 means one per CPU core, this process included. This process reads a chunk
    itself whenever no helper's results are waiting, so it works while the helpers start; once
    no chunk is left to hand out, it reads the chunks a helper has not answered yet rather than
    wait for one that may still be starting (the helper's answer for such a chunk is dropped).
    A helper that dies leaves its chunks to the others. `helpers` from `start_helpers` are used
    whatever the number of files, and stopped at the end; without them, the scan starts its own
    for `_PARALLEL_THRESHOLD` files or more. `progress(done, total)` is called as chunks finish.
    """
    total = len(paths)
    chunks = deque(paths[i : i + _CHUNK] for i in range(0, total, _CHUNK))
    if helpers is None:
        many = total >= _PARALLEL_THRESHOLD
        helpers = start_helpers(workers) if many else []
    by_conn = {helper.conn: helper for helper in helpers}
    done = 0
    try:
        for helper in helpers:
            for _ in range(2):  # each helper has its next chunk waiting
                if chunks:
                    helper.send(chunks.popleft())
        while chunks or any(h.owes() for h in by_conn.values()):
            ready = multiprocessing.connection.wait(list(by_conn), timeout=0)
            if ready:
                results = _receive(by_conn[ready[0]], by_conn, chunks)  # type: ignore[index]
            elif chunks:
                results = _read_chunk(chunks.pop())
            else:
                results = _read_taken_back(by_conn, chunks)
            if results is None:
                continue
            done += len(results)
            yield from results
            if progress:
                progress(done, total)
    finally:
        stop_helpers(helpers)
    if progress and not total:
        progress(0, 0)


def _receive(
    helper: ScanHelper, by_conn: dict[Any, ScanHelper], chunks: deque[list[str]]
) -> list[Parsed | Skipped] | None:
    """A helper's next answer, and its next chunk sent; a dead helper's chunks go back."""
    try:
        results = helper.receive()
    except (EOFError, OSError):
        log.warning("a scan helper process ended early; its files are read by the others")
        del by_conn[helper.conn]
        chunks.extend(helper.unanswered())
        return None
    if chunks:
        helper.send(chunks.popleft())
    return results


def _read_taken_back(
    by_conn: dict[Any, ScanHelper], chunks: deque[list[str]]
) -> list[Parsed | Skipped] | None:
    """With no chunk left to hand out: read here what a helper that has not started yet still
    holds; once every helper has started, wait for the first answer instead (a helper that
    owes nothing more is not waited for: it is stopped)."""
    for helper in by_conn.values():
        if not helper.answered:
            chunk = helper.take_back()
            if chunk is not None:
                return _read_chunk(chunk)
    ready = multiprocessing.connection.wait([c for c, h in by_conn.items() if h.owes()])
    return _receive(by_conn[ready[0]], by_conn, chunks)


def with_items_decoded(element: DataElement) -> DataElement:
    """`element` from a file's header, every value in its sequence items (if any) decoded now,
    in that file's character set. pydicom reads an Implicit VR file's items at once but leaves
    their values encoded until each is first read, and writes a value never read as the file's
    bytes: in an answer with its own Specific Character Set those would be garbled."""
    if element.VR == "SQ":
        for item in element.value:
            for _ in item.iterall():  # reading each element decodes it
                pass
    return element


class HeaderCache:
    """Whole headers (no pixels), read on demand for keys the index does not hold.

    Keyed by path and checked against the file's size and mtime, so a changed file is read
    again; the least recently used headers are dropped beyond `capacity` headers or `budget`
    bytes of them (as read from the file). A header is not big because its image is (the
    pixels are never read), but a PDF, an RT structure set or a report may hold megabytes
    before any pixels: 512 of those were kept, gigabytes, by a count alone. Thread-safe.
    """

    def __init__(self, capacity: int = 512, budget: int = 64 << 20) -> None:
        self._capacity = capacity
        self._budget = budget
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[tuple[int, int], Dataset | None, int]] = OrderedDict()
        self._bytes = 0

    def get(self, path: str) -> Dataset | None:
        """The header of `path`, or None when the file is gone or no longer readable."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._items.get(path)
            if cached is not None and cached[0] == stamp:
                self._items.move_to_end(path)
                return cached[1]
        header, size = _read_whole_header(path)
        if size > self._budget // 8:  # one that would push out a crowd of others: not kept
            return header
        with self._lock:
            replaced = self._items.pop(path, None)
            self._bytes += size - (replaced[2] if replaced else 0)
            self._items[path] = (stamp, header, size)
            while len(self._items) > self._capacity or self._bytes > self._budget:
                _, (_, _, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
        return header


_ELEMENT_COST = 400  # bytes of Python objects for one element held, beyond its value's bytes


def _read_whole_header(path: str) -> tuple[Dataset | None, int]:
    """The header of `path` and what holding it costs: the bytes of the file it took, and
    some 400 bytes for each element (a file of 400,000 small elements, 4 MB on disk, took
    137 MB read); (None, 0) if unreadable. Opened as every served file is
    (`tree.open_served`: no link followed, no FIFO waited on)."""
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with os.fdopen(open_served(path)[0], "rb") as fp:
                header = dcmread(fp, stop_before_pixels=True, force=True)
                elements = sum(1 for _ in header.iterall())
                return header, fp.tell() + _ELEMENT_COST * elements
    except Exception as exc:  # the file changed or broke since it was indexed
        log.debug("cannot read header of %s: %s", path, exc)
        return None, 0
