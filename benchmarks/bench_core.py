"""Core benchmark (issue 2): start-up scan throughput and C-FIND latency, each next to a
baseline measured in the same run.

    python benchmarks/bench_core.py            # 10,000 instances
    python benchmarks/bench_core.py --instances 2000 --repeats 3

1. Scan: fsqr's start-up scan (all cores) against a single-process pydicom loop,
   `dcmread(path, stop_before_pixels=True)`, over the same files with a warm page cache.
   Target: >= 1.8x on 2 cores.
2. C-FIND end to end, from a pynetdicom client on one open association: a STUDY-level
   PatientName wildcard matching a few studies, and an IMAGE-level query by SeriesInstanceUID,
   each next to a C-ECHO round trip on the same association. Target: within 3x the C-ECHO.

Reports medians; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from fsqr.index import Index, SeriesView
from fsqr.keys import Level
from fsqr.records import Parsed
from fsqr.scan import scan_files, walk
from fsqr.synthetic import tree_split, write_tree

FIND = StudyRootQueryRetrieveInformationModelFind


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def make_tree(root: Path, instances: int) -> list[str]:
    patients, studies, series, per_series = tree_split(instances)
    write_tree(
        root,
        patients=patients,
        studies_per_patient=studies,
        series_per_study=series,
        instances_per_series=per_series,
    )
    return list(walk(root))


def bench_scan(paths: list[str], repeats: int) -> None:
    def pydicom_loop() -> None:
        for path in paths:
            dcmread(path, stop_before_pixels=True)

    def fsqr_scan() -> None:
        for _ in scan_files(paths, workers=0):
            pass

    pydicom_loop()  # warm the page cache
    baseline = median_seconds(pydicom_loop, repeats)
    ours = median_seconds(fsqr_scan, repeats)
    n = len(paths)
    print(f"scan of {n} files, {os.cpu_count()} cores, median of {repeats}:")
    print(f"  pydicom dcmread loop (1 process)   {n / baseline:9.0f} files/s")
    print(f"  fsqr start-up scan                 {n / ours:9.0f} files/s")
    print(f"  ratio                              {baseline / ours:9.2f}x   (target >= 1.8x)")


class ServeProcess:
    """`fsqr serve` in its own process, as users run it: the client does not share its GIL."""

    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fsqr",
                "serve",
                str(root),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self.port = 0
        for line in self.process.stderr:
            found = re.search(r"listening on [\d.]+:(\d+)", line)
            if found:
                self.port = int(found[1])
                break
        assert self.port, "fsqr serve did not start"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        assert self.process.stderr is not None
        self.process.stderr.close()


def bench_find(root: Path, repeats: int) -> None:
    index = Index()
    index.add_many(r for r in scan_files(list(walk(root))) if isinstance(r, Parsed))
    series = index.candidates(Level.SERIES, {})[0]
    assert isinstance(series, SeriesView)
    server = ServeProcess(root)
    try:
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(Verification)
        ae.add_requested_context(FIND)
        assoc = ae.associate("127.0.0.1", server.port)
        assert assoc.is_established

        def echo() -> None:
            assert assoc.send_c_echo().Status == 0

        def find(ds: Dataset) -> Callable[[], None]:
            def run() -> None:
                results = list(assoc.send_c_find(ds, FIND))
                assert results[-1][0].Status == 0

            return run

        def study_query(pattern: str) -> Dataset:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientName = pattern
            ds.StudyInstanceUID = ""
            ds.StudyDate = ""
            ds.ModalitiesInStudy = ""
            return ds

        image_query = Dataset()
        image_query.QueryRetrieveLevel = "IMAGE"
        image_query.StudyInstanceUID = series.study.study_uid
        image_query.SeriesInstanceUID = series.series.series_uid
        image_query.SOPInstanceUID = ""
        image_query.InstanceNumber = ""
        queries = {
            "STUDY PatientName=*PATIENT0042": study_query("*PATIENT0042"),
            "STUDY PatientName=DOE^PATIENT000*": study_query("DOE^PATIENT000*"),
            "IMAGE by SeriesInstanceUID": image_query,
        }
        for _ in range(5):
            echo()  # warm up
        echo_s = median_seconds(echo, repeats * 10)
        print(f"C-FIND over {index.counts().instances} instances, fsqr serve in its own process,")
        print(f"pynetdicom client on one association, median of {repeats * 10}:")
        print(f"  {'C-ECHO round trip':44} {echo_s * 1000:7.2f} ms")
        for name, ds in queries.items():
            matches = len(list(assoc.send_c_find(ds, FIND))) - 1
            took = median_seconds(find(ds), repeats * 10)
            label = f"{name} ({matches} matches)"
            print(f"  {label:44} {took * 1000:7.2f} ms  {took / echo_s:5.2f}x echo (target <= 3x)")
        assoc.release()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fsqr-bench-") as tmp:
        started = time.perf_counter()
        paths = make_tree(Path(tmp), args.instances)
        print(f"wrote {len(paths)} files in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        bench_scan(paths, args.repeats)
        bench_find(Path(tmp), args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
