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
import statistics
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

from fsqr.config import config_from_mapping
from fsqr.index import SeriesView
from fsqr.keys import Level
from fsqr.scan import scan_files, walk
from fsqr.server import Server
from fsqr.synthetic import tree_split, write_tree


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


def bench_find(root: Path, repeats: int) -> None:
    config = config_from_mapping({"root": str(root), "host": "127.0.0.1", "port": 0})
    with Server(config) as server:
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(Verification)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", server.port)
        assert assoc.is_established

        def echo() -> None:
            assert assoc.send_c_echo().Status == 0

        def find(ds: Dataset) -> Callable[[], None]:
            def run() -> None:
                results = list(assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind))
                assert results[-1][0].Status == 0

            return run

        study_query = Dataset()
        study_query.QueryRetrieveLevel = "STUDY"
        study_query.PatientName = "DOE^PATIENT000*"
        study_query.StudyInstanceUID = ""
        study_query.StudyDate = ""
        study_query.ModalitiesInStudy = ""
        series = server.index.candidates(Level.SERIES, {})[0]
        assert isinstance(series, SeriesView)
        image_query = Dataset()
        image_query.QueryRetrieveLevel = "IMAGE"
        image_query.StudyInstanceUID = series.study.study_uid
        image_query.SeriesInstanceUID = series.series.series_uid
        image_query.SOPInstanceUID = ""
        image_query.InstanceNumber = ""

        studies = (
            len(list(assoc.send_c_find(study_query, StudyRootQueryRetrieveInformationModelFind)))
            - 1
        )
        for _ in range(5):
            echo()  # warm up
        echo_s = median_seconds(echo, repeats * 10)
        study_s = median_seconds(find(study_query), repeats * 10)
        image_s = median_seconds(find(image_query), repeats * 10)
        assoc.release()
    instances = server.index.counts().instances
    print(f"C-FIND over {instances} instances, one association, median of {repeats * 10}:")
    print(f"  C-ECHO round trip                          {echo_s * 1000:7.2f} ms")
    print(
        f"  STUDY PatientName=DOE^PATIENT000* ({studies} matches) {study_s * 1000:7.2f} ms"
        f"   {study_s / echo_s:5.2f}x echo (target <= 3x)"
    )
    print(
        f"  IMAGE by SeriesInstanceUID ({series.instances} matches)     {image_s * 1000:7.2f} ms"
        f"   {image_s / echo_s:5.2f}x echo (target <= 3x)"
    )


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
