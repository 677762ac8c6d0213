"""Core benchmark (issues 2 and 5): start-up scan throughput and C-FIND latency, each next to a
baseline measured in the same run.

    python benchmarks/bench_core.py            # 10,000 instances
    python benchmarks/bench_core.py --instances 2000 --repeats 3
    python benchmarks/bench_core.py --instances 100000 --repeats 3 --scan-only --tree trees/100k

1. Scan: fsqr's start-up scan (all cores) against a single-process pydicom loop,
   `dcmread(path, stop_before_pixels=True)`, over the same files with a warm page cache, the
   two timed in turns. Target (issue 5): >= 10x, at 10,000 and at 100,000 files.
2. C-FIND end to end, from a pynetdicom client on one open association: a STUDY-level
   PatientName wildcard matching a few studies, and an IMAGE-level query by SeriesInstanceUID,
   each next to a C-ECHO round trip on the same association. Target: within 3x the C-ECHO.

Reports medians; nothing here is a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import fsqr_serve, interleaved_medians, median_seconds, nodelay
from pydicom import dcmread
from pydicom.dataset import Dataset

from fsqr.index import Index, SeriesView
from fsqr.keys import Level, Model
from fsqr.query import find as find_answers
from fsqr.query import parse_identifier
from fsqr.records import Parsed
from fsqr.scan import HeaderCache, scan_files
from fsqr.synthetic import write_tree_of_about
from fsqr.tree import walk

# pynetdicom is imported where it is used: the scan's worker processes import this module first
# (multiprocessing does), and `fsqr serve`'s workers do not pay for pynetdicom either.
FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
VERIFICATION = "1.2.840.10008.1.1"


def make_tree(root: Path, instances: int) -> list[str]:
    write_tree_of_about(root, instances)
    return list(walk(root))


def bench_scan(paths: list[str], repeats: int) -> None:
    def pydicom_loop() -> None:
        for path in paths:
            dcmread(path, stop_before_pixels=True)

    def fsqr_scan() -> None:
        for _ in scan_files(paths, workers=0):
            pass

    def fsqr_one_process() -> None:
        for _ in scan_files(paths, workers=1):
            pass

    pydicom_loop()  # warm the page cache
    seconds = interleaved_medians(
        {"pydicom": pydicom_loop, "one": fsqr_one_process, "all": fsqr_scan}, repeats
    )
    baseline, one, ours = seconds["pydicom"], seconds["one"], seconds["all"]
    n = len(paths)
    print(f"scan of {n} files, {os.cpu_count()} cores, median of {repeats}, timed in turns:")
    print(f"  pydicom dcmread loop (1 process)   {n / baseline:9.0f} files/s")
    print(f"  fsqr scan in 1 process             {n / one:9.0f} files/s   {baseline / one:5.2f}x")
    print(f"  fsqr start-up scan (all cores)     {n / ours:9.0f} files/s   {baseline / ours:5.2f}x")
    print("  (target: all cores >= 10x the pydicom loop)")


def study_query(pattern: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = pattern
    ds.StudyInstanceUID = ""
    ds.StudyDate = ""
    ds.ModalitiesInStudy = ""
    return ds


def image_query(series: SeriesView) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = series.study.study_uid
    ds.SeriesInstanceUID = series.series.series_uid
    ds.SOPInstanceUID = ""
    ds.InstanceNumber = ""
    return ds


def answer_key(ds: Dataset) -> str:
    return f"{ds.QueryRetrieveLevel}|{ds.get('PatientName', '')}|{ds.get('SeriesInstanceUID', '')}"


def bare_scp(answers: dict[str, list[Dataset]], ready: Any) -> None:
    """pynetdicom at its best: answers precomputed in memory, yielded as fast as it sends them.

    Runs in its own process. What this takes per response is pynetdicom's own cost, the floor
    of any SCP built on it.
    """

    def on_find(event: Any) -> Any:
        for answer in answers[answer_key(event.identifier)]:
            yield 0xFF00, answer

    from pynetdicom import AE, evt  # noqa: PLC0415 - see FIND

    ae = AE(ae_title="BARE")
    ae.add_supported_context(FIND)
    ae.add_supported_context(VERIFICATION)
    handlers: list[Any] = [
        (evt.EVT_C_FIND, on_find),
        (evt.EVT_C_ECHO, lambda event: 0),
        (evt.EVT_CONN_OPEN, nodelay),
    ]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None  # block=False: it returns the server
    ready.send(server.server_address[1])
    ready.recv()  # block until told to stop
    server.shutdown()


def measure(port: int, queries: dict[str, Dataset], repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds of a C-ECHO and of each query, on one association with a client that
    switches Nagle off (so neither server is measured waiting for the client's packets), and
    the client's own CPU seconds for each (this process runs the client only).
    """

    from pynetdicom import AE, evt  # noqa: PLC0415 - see FIND

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
    assert assoc.is_established

    def echo() -> None:
        assert assoc.send_c_echo().Status == 0

    def find(ds: Dataset) -> Callable[[], None]:
        def run() -> None:
            results = list(assoc.send_c_find(ds, FIND))
            assert results[-1][0].Status == 0

        return run

    def timed(action: Callable[[], None]) -> tuple[float, float]:
        cpu = time.process_time()
        wall = median_seconds(action, repeats)
        return wall, (time.process_time() - cpu) / repeats

    for _ in range(5):
        echo()  # warm up
    times = {"C-ECHO round trip": timed(echo)}
    for name, ds in queries.items():
        times[name] = timed(find(ds))
    assoc.release()
    return times


def bench_find(root: Path, repeats: int) -> None:
    index = Index()
    index.add_many(r for r in scan_files(list(walk(root))) if isinstance(r, Parsed))
    series = index.candidates(Level.SERIES, {})[0]
    assert isinstance(series, SeriesView)
    queries = {
        "STUDY PatientName=*PATIENT0042": study_query("*PATIENT0042"),
        "STUDY PatientName=DOE^PATIENT000*": study_query("DOE^PATIENT000*"),
        "IMAGE by SeriesInstanceUID": image_query(series),
    }
    answers = {}
    for ds in queries.values():
        query = parse_identifier(ds, Model.STUDY_ROOT, relational=False)
        answers[answer_key(ds)] = list(find_answers(index, query, "FSQR", HeaderCache()))

    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    bare = multiprocessing.get_context("spawn").Process(target=bare_scp, args=(answers, theirs))
    bare.start()
    bare_port = ours.recv()
    runs = repeats * 10
    try:
        with tempfile.TemporaryDirectory() as work, fsqr_serve(root, Path(work)) as port:
            bare_times = measure(bare_port, queries, runs)
            fsqr_times = measure(port, queries, runs)
    finally:
        ours.send("stop")
        bare.join(timeout=30)
    echo_bare = bare_times["C-ECHO round trip"][0]
    echo_fsqr = fsqr_times["C-ECHO round trip"][0]
    print(f"C-FIND over {index.counts().instances} instances, each server in its own process,")
    print(f"pynetdicom client on one association, median of {runs}:")
    print(f"  {'':40} {'bare pynetdicom SCP':>22} {'fsqr':>22} {'client CPU (fsqr)':>26}")
    for name in bare_times:
        matches = f" ({len(answers[answer_key(queries[name])])})" if name in queries else ""
        b, f, cpu = bare_times[name][0], fsqr_times[name][0], fsqr_times[name][1]
        print(
            f"  {name + matches:40} {b * 1000:7.2f} ms {b / echo_bare:5.2f}x echo"
            f" {f * 1000:7.2f} ms {f / echo_fsqr:5.2f}x echo"
            f" {cpu * 1000:7.2f} ms {cpu / echo_fsqr:5.2f}x echo"
        )
    print("  (target: fsqr within 3x its C-ECHO; the bare SCP shows pynetdicom's own floor;")
    print("   client CPU is what the pynetdicom client alone spends: no server can go below it)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--scan-only", action="store_true", help="measure the scan only, not C-FIND"
    )
    parser.add_argument(
        "--tree",
        type=Path,
        help="the files: written here unless it holds some already, and kept for next time",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fsqr-bench-") as tmp:
        root = args.tree or Path(tmp)
        paths = list(walk(root))
        if not paths:
            started = time.perf_counter()
            paths = make_tree(root, args.instances)
            seconds = time.perf_counter() - started
            print(f"wrote {len(paths)} files in {seconds:.1f} s", file=sys.stderr)
        bench_scan(paths, args.repeats)
        if args.scan_only:
            return 0
        from fsqr.reactor import pynetdicom_keeps_its_responses  # noqa: PLC0415 - see FIND

        with pynetdicom_keeps_its_responses():  # no lost response for the client's own sake
            bench_find(root, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
