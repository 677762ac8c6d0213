"""From files to records: one file's header to a `Parsed` or a `Skipped` (pure), and the start-up
scan that does this for every file of a tree (tree.py finds them), on every core. A header is
read by header.py's fast reader first; pydicom reads whatever that one declines, and is the
reference it is tested against.

This module reads files and nothing else: it knows neither the index's locking nor networking.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import BinaryIO

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
from fsqr.records import Parsed, Patient, Series, Skipped, Study, stat_stamp

log = logging.getLogger(__name__)

# Below this many files the start-up scan reads them in this process alone: a worker process
# takes about a quarter of a second to start and import pydicom, time in which this process
# reads some 5,000 headers itself (header.py reads ~20,000 a second on one core).
_PARALLEL_THRESHOLD = 5000
_CHUNK = 200  # files per worker task: large enough to amortise pickling, small enough to balance


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
    st = os.stat(path)
    result = _read_stated(path, st)
    if isinstance(result, Skipped):  # remembered by this stamp in an index snapshot
        return Skipped(path, result.reason, stat_stamp(st))
    return result


def _read_stated(path: str, st: os.stat_result) -> Parsed | Skipped:
    if st.st_size == 0:
        return Skipped(path, EMPTY)
    probe = PixelProbe()
    with open(path, "rb") as fp:
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
        ds, path, st.st_size, st.st_mtime_ns, transfer_syntax, inode=st.st_ino
    )
    return without_pixel_data(parsed, probe.length is not None)


def parsed_from_dataset(
    ds: Dataset, path: str, size: int, mtime_ns: int, transfer_syntax: str, *, inode: int = 0
) -> Parsed | Skipped:
    """Split a header into records; used by the scan and by C-STORE for what it just wrote."""
    return records_from(
        lambda tag: element_text(ds.get(tag)),
        lambda: str(ds.file_meta.get("MediaStorageSOPClassUID", "")),
        path=path,
        size=size,
        mtime_ns=mtime_ns,
        transfer_syntax=transfer_syntax,
        inode=inode,
    )


def _read_chunk(paths: list[str]) -> list[Parsed | Skipped]:
    """Read a chunk of files. Equal patient, study and series records become one object, so that
    a worker pickles each once per chunk and the scanning process unpickles and keeps it once."""
    patients: dict[Patient, Patient] = {}
    studies: dict[Study, Study] = {}
    series: dict[Series, Series] = {}
    results: list[Parsed | Skipped] = []
    for path in paths:
        result = read_header(path)
        if isinstance(result, Parsed):
            result = Parsed(
                patients.setdefault(result.patient, result.patient),
                studies.setdefault(result.study, result.study),
                series.setdefault(result.series, result.series),
                result.instance,
            )
        results.append(result)
    return results


def _pool_context() -> multiprocessing.context.BaseContext:
    # forkserver: workers fork from a clean single-threaded process, never from a server that
    # already runs threads (forking those can deadlock). Nothing is preloaded into it: with a
    # preload the first task waits until the forkserver has imported pydicom (~0.25 s); without
    # one each worker imports fsqr.scan itself while this process goes on reading files.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([])
        return ctx
    return multiprocessing.get_context("spawn")


def scan_files(
    paths: list[str],
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Parsed | Skipped]:
    """Read the headers of `paths`, in parallel when there are many; results in any order.

    `workers` 0 means one per CPU core, this process included: it reads a chunk itself whenever
    no worker's result is waiting, so it works while the worker processes start, and it reads
    the last chunks itself rather than wait for a worker that may still be starting (a worker's
    answer for a chunk read here is dropped). `progress(done, total)` is called as chunks finish.
    """
    total = len(paths)
    workers = workers or os.cpu_count() or 1
    chunks = deque(paths[i : i + _CHUNK] for i in range(0, total, _CHUNK))
    pool = None
    if total >= _PARALLEL_THRESHOLD and workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers - 1, mp_context=_pool_context())
    sent: deque[tuple[Future[list[Parsed | Skipped]], list[str]]] = deque()
    done = 0
    try:
        while chunks or sent:
            while pool is not None and chunks and len(sent) < 2 * (workers - 1):
                chunk = chunks.popleft()  # each worker has its next chunk waiting
                sent.append((pool.submit(_read_chunk, chunk), chunk))
            if sent and sent[0][0].done():
                results = sent.popleft()[0].result()
            elif chunks:
                results = _read_chunk(chunks.pop())
            else:
                results = _read_chunk(sent.popleft()[1])
            done += len(results)
            yield from results
            if progress:
                progress(done, total)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    if progress and not total:
        progress(0, 0)


class HeaderCache:
    """Whole headers (no pixels), read on demand for keys the index does not hold.

    Keyed by path and checked against the file's size and mtime, so a changed file is read
    again; the least recently used headers are dropped beyond `capacity`. Thread-safe.
    """

    def __init__(self, capacity: int = 512) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[tuple[int, int], Dataset | None]] = OrderedDict()

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
        header = _read_whole_header(path)
        with self._lock:
            self._items[path] = (stamp, header)
            self._items.move_to_end(path)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return header


def _read_whole_header(path: str) -> Dataset | None:
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            return dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # the file changed or broke since it was indexed
        log.debug("cannot read header of %s: %s", path, exc)
        return None
