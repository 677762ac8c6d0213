"""Scale benchmark (issue 5): C-FIND's own work per query, and memory per indexed instance,
at 10,000 / 100,000 (and, on request, 1,000,000) instances.

    python benchmarks/bench_scale.py               # C-FIND at 10k and 100k instances
    python benchmarks/bench_scale.py --million     # ... and at 1,000,000
    python benchmarks/bench_scale.py --memory      # RSS per instance at 10k, 100k (1M: --million)
    python benchmarks/bench_scale.py --restart     # cold start vs warm restart, 10k and 100k files
    python benchmarks/bench_scale.py --restart --tree DIR   # ... keeping the files in DIR

The index is built IN MEMORY FROM SYNTHETIC RECORDS, WITHOUT FILES: writing and scanning a
million files would take far longer than what is measured here. Each record is made by the scan's
own `header.records_from` from the values `synthetic.write_tree` would write (same tree shape:
two studies of two series of 25 instances per patient, same names, dates and paths), in worker
processes that send them 200 at a time, as the start-up scan's workers deliver what they read.

1. C-FIND: the server's own work per query, as the handler logs it ("fsqr X ms"): identifier
   parsed, index searched, every response data set built. No network. Targets at 100k: <= 1 ms
   with a unique key, <= 20 ms for a STUDY-level PatientName wildcard; the unique-key queries
   and the wildcard with a literal start ("DOE^PATIENT0042*", looked up by name) at 1M no more
   than 2x their 10k figures. A wildcard without one ("*PATIENT0042") still matches every
   patient's name, and grows with the number of patients.
2. Memory (`--memory`): resident set growth over the same process before indexing, divided by
   the instances indexed, in a fresh process per size. Target: <= 600 bytes per instance.
3. Warm restart (`--restart`), the one mode that needs FILES: `synthetic.write_tree` writes them
   (10,000 per subfolder, two processes; some 300 files/s per core, so 100,000 take minutes:
   `--tree DIR` keeps them for the next run). `Server.start()` until the port is bound, the
   watcher included: cold (no snapshot configured: every file read) and warm (an index snapshot
   written by the previous stop; nothing changed), each a median, in the same run. Target at
   100,000: warm <= 15 % of cold.

Reports medians; nothing here is a test.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import date, timedelta
from pathlib import Path

from pydicom.dataset import Dataset

from fsqr.header import indexed_texts, records_from
from fsqr.index import Index
from fsqr.keys import KEY_BY_KEYWORD, Model
from fsqr.query import find, parse_identifier
from fsqr.records import Parsed
from fsqr.scan import HeaderCache
from fsqr.server import Server
from fsqr.synthetic import synthetic_uid, tree_split, write_tree_of_about
from fsqr.tree import walk

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ROOT = "/srv/dicom/incoming-tree"  # a made-up served root: the records' paths start here
_CHUNK = 200  # as scan._CHUNK: records cross from the worker processes by this many


def _tag(keyword: str) -> int:
    return KEY_BY_KEYWORD[keyword].tag


def synthetic_records(instances: int, first: int = 1, last: int | None = None) -> Iterator[Parsed]:
    """Records of a `write_tree`-shaped tree of about `instances` instances, made without files;
    only those of patients `first` to `last` (all by default)."""
    patients, studies, series_per_study, per_series = tree_split(instances)
    first_day = date(2023, 1, 1)
    for p in range(first, (patients if last is None else last) + 1):
        patient_id = f"T0P{p:06d}"
        patient = {
            "PatientID": patient_id,
            "PatientName": f"DOE^PATIENT{p:04d}",
            "PatientBirthDate": (first_day - timedelta(days=7000 + p % 20000)).strftime("%Y%m%d"),
            "PatientSex": "MF"[p % 2],
        }
        for s in range(1, studies + 1):
            modality = ("CT", "MR")[((p - 1) * studies + s - 1) % 2]
            study_date = (first_day + timedelta(days=(p * 7 + s) % 365)).strftime("%Y%m%d")
            study = {
                "StudyInstanceUID": synthetic_uid("tree", 0, p, s),
                "StudyDate": study_date,
                "StudyTime": f"{8 + (p + s) % 10:02d}0000",
                "AccessionNumber": f"A{p:06d}{s:03d}",
                "StudyDescription": f"{modality} STUDY {s}",
                "StudyID": str(s),
            }
            for r in range(1, series_per_study + 1):
                series = {
                    "SeriesInstanceUID": synthetic_uid("tree", 0, p, s, r),
                    "Modality": modality,
                    "SeriesNumber": str(r),
                    "SeriesDescription": f"{modality} SERIES {r}",
                }
                folder = f"{ROOT}/{patient_id}/{study_date}_{s:03d}/{r:03d}_{modality}"
                for i in range(1, per_series + 1):
                    values = {
                        **patient,
                        **study,
                        **series,
                        "SOPInstanceUID": synthetic_uid("tree", 0, p, s, r, i),
                        "SOPClassUID": CT_IMAGE if modality == "CT" else MR_IMAGE,
                        "InstanceNumber": str(i),
                        "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
                        "Rows": "16",
                        "Columns": "16",
                        "BitsAllocated": "16",
                    }
                    by_tag = {_tag(k): v for k, v in values.items()}
                    parsed = records_from(
                        indexed_texts(lambda tag, by_tag=by_tag: by_tag.get(tag, "")),  # type: ignore[misc]
                        lambda: "",
                        path=f"{folder}/{i:04d}.dcm",
                        size=1234,
                        mtime_ns=1_700_000_000_000_000_000 + i,
                        transfer_syntax=EXPLICIT_LE,
                    )
                    assert isinstance(parsed, Parsed)
                    yield parsed


def _records_of_patients(task: tuple[int, int, int]) -> list[Parsed]:
    return list(synthetic_records(*task))


def build_index(instances: int) -> Index:
    """An index of synthetic records delivered as the start-up scan delivers them: made in
    worker processes, about 200 at a time, and added by this one as they arrive."""
    patients, studies, series, per_series = tree_split(instances)
    step = max(1, _CHUNK // (studies * series * per_series))
    tasks = [(instances, p, min(p + step - 1, patients)) for p in range(1, patients + 1, step)]
    index = Index()
    with ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")) as pool:
        for chunk in pool.map(_records_of_patients, tasks):
            index.add_many(chunk)
    return index


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def queries(instances: int) -> dict[str, Dataset]:
    """The measured queries; the entities they name lie in the middle of the tree."""
    patients = tree_split(instances)[0]
    p = patients // 2 + 1
    study, series = synthetic_uid("tree", 0, p, 1), synthetic_uid("tree", 0, p, 1, 2)
    sop = synthetic_uid("tree", 0, p, 1, 2, 3)
    study_keys = {"StudyDate": "", "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": ""}
    return {
        "STUDY by StudyInstanceUID": identifier(
            "STUDY", StudyInstanceUID=study, PatientName="", **study_keys
        ),
        "SERIES by SeriesInstanceUID": identifier(
            "SERIES",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            Modality="",
            NumberOfSeriesRelatedInstances="",
        ),
        "IMAGE by SOPInstanceUID": identifier(
            "IMAGE",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            SOPInstanceUID=sop,
            InstanceNumber="",
        ),
        "IMAGE of one series (25)": identifier(
            "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=""
        ),
        BY_NAME: identifier(
            "STUDY", PatientName=f"DOE^PATIENT{p:04d}*", StudyInstanceUID="", **study_keys
        ),
        "STUDY PatientName=*PATIENT0042": identifier(
            "STUDY", PatientName="*PATIENT0042", StudyInstanceUID="", **study_keys
        ),
    }


UNIQUE = ("STUDY by StudyInstanceUID", "SERIES by SeriesInstanceUID", "IMAGE by SOPInstanceUID")
BY_NAME = "STUDY PatientName=DOE^PATIENTnnnn*"  # a literal start: looked up, not scanned


def own_work(index: Index, ds: Dataset, repeats: int) -> tuple[float, int]:
    """Median seconds of what the handler times as fsqr's own work, and the number of matches."""

    def answer() -> int:
        query = parse_identifier(ds, Model.STUDY_ROOT, relational=False)
        return sum(1 for _ in find(index, query, "FSQR", headers))

    headers = HeaderCache()
    matches = answer()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        answer()
        times.append(time.perf_counter() - started)
    return statistics.median(times), matches


def bench_find(sizes: list[int], repeats: int) -> None:
    table: dict[int, dict[str, tuple[float, int]]] = {}
    for size in sizes:
        started = time.perf_counter()
        index = build_index(size)
        print(
            f"built an index of {index.counts().instances} synthetic instances (no files) "
            f"in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        table[size] = {name: own_work(index, ds, repeats) for name, ds in queries(size).items()}
        del index
        gc.collect()
    print(f"C-FIND, fsqr's own work per query (no network), median of {repeats}:")
    print(f"  {'instances':>40}" + "".join(f"{s:>14,}" for s in sizes))
    names: list[str] = []
    for size in sizes:
        names += [n for n in table[size] if n not in names]
    for name in names:
        cells = []
        for size in sizes:
            found = [(t, m) for n, (t, m) in table[size].items() if n == name]
            cells.append(f"{found[0][0] * 1000:7.3f} ms ({found[0][1]:>2})" if found else "-")
        print(f"  {name:>40}" + "".join(f"{c:>14}" for c in cells))
    smallest, largest = sizes[0], sizes[-1]
    if largest > smallest:
        for name in (*UNIQUE, BY_NAME):
            ratio = table[largest][name][0] / table[smallest][name][0]
            print(f"  {name}: {largest:,} vs {smallest:,}: {ratio:.2f}x (target <= 2x)")
    print("  (targets at 100,000: unique key <= 1 ms, STUDY PatientName wildcard <= 20 ms)")


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(instances: int) -> None:
    """In a fresh process: RSS growth from indexing `instances` instances, per instance."""
    gc.collect()
    before = rss_bytes()
    index = build_index(instances)
    gc.collect()
    after = rss_bytes()
    n = index.counts().instances
    print(
        f"  {n:>10,} instances: {(after - before) / 2**20:8.1f} MiB,"
        f" {(after - before) / n:6.0f} B/instance"
    )


def bench_memory(sizes: list[int]) -> None:
    print("Memory: RSS growth over the same process before indexing (target <= 600 B/instance)")
    for size in sizes:
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--memory-child", str(size)], check=True)


_SUBTREE = 10_000  # files per subfolder of a --restart tree, each written by its own process


def _subtree(work: Path, seed: int) -> Path:
    """Where subtree `seed` lives: nested so that the 10k tree lies in the 100k one, and that in
    the 1M one (see `served_root`), and a larger run reuses the files of a smaller one."""
    if seed == 0:
        return work / "g1" / "g0" / "tree0"
    return work / ("g1" if seed < 10 else "") / f"tree{seed}"


def served_root(work: Path, instances: int) -> Path:
    return {10_000: work / "g1" / "g0", 100_000: work / "g1", 1_000_000: work}[instances]


def _write_subtree(task: tuple[Path, int]) -> int:
    work, seed = task
    folder = _subtree(work, seed)
    if not folder.is_dir() or sum(1 for _ in walk(folder)) != _SUBTREE:  # cut short by Ctrl-C?
        shutil.rmtree(folder, ignore_errors=True)
        # Another seed, other Patient IDs and UIDs: every file is an instance of its own.
        write_tree_of_about(folder, _SUBTREE, seed=seed)
    return seed


def file_tree(work: Path, instances: int) -> Path:
    """The served root of a tree of `instances` files (10k, 100k or 1M) in `work`, written
    where missing, one subtree of 10,000 per process."""
    with ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")) as pool:
        tasks = [(work, seed) for seed in range(instances // _SUBTREE)]
        for _ in pool.map(_write_subtree, tasks):
            pass
    return served_root(work, instances)


def timed_start(root: Path, snapshot: Path | None) -> tuple[float, float, int]:
    """Seconds from `Server.start()` to the port being bound, the part of them spent building
    the index (walk, snapshot, scan), and the instances indexed; the stop that follows (which
    writes the snapshot, if any) is not timed."""
    server = Server(root=root, index_snapshot=snapshot)
    started = time.perf_counter()
    server.start()
    seconds = time.perf_counter() - started
    instances = server.index.counts().instances
    server.stop()
    return seconds, server.index_seconds, instances


def bench_restart(sizes: list[int], repeats: int, tree: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="fsqr-bench-") as tmp:
        work = tree or Path(tmp) / "files"
        snapshot = Path(tmp) / "state" / "index.snapshot"  # outside every served root
        rows = []
        for size in sizes:
            started = time.perf_counter()
            root = file_tree(work, size)
            print(f"{size:,} files ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            timed_start(root, None)  # warms the page cache, as every other run finds it
            snapshot.unlink(missing_ok=True)
            timed_start(root, snapshot)  # the first start with a snapshot configured writes it
            cold, warm = [], []
            for _ in range(repeats):  # in turns: drift on a shared machine meets both alike
                cold.append(timed_start(root, None))
                warm.append(timed_start(root, snapshot))
            assert {n for *_, n in cold} == {n for *_, n in warm} == {size}
            rows.append((size, *_medians(cold), *_medians(warm)))
            print(
                f"  snapshot of {size:,} files: {snapshot.stat().st_size / 2**20:.1f} MiB",
                file=sys.stderr,
            )
    print(
        f"Start-up until the port is bound, {os.cpu_count()} cores, median of {repeats},"
        " cold and warm in turns:"
    )
    cold_title, warm_title = "cold (every file read)", "warm (snapshot, unchanged)"
    print(f"  {'files':>10} {cold_title:>26} {warm_title:>30} {'warm/cold':>10}")
    for size, cold_s, _, warm_s, _ in rows:
        print(
            f"  {size:>10,} {cold_s:10.2f} s {size / cold_s:8.0f} files/s"
            f" {warm_s:14.2f} s {size / warm_s:8.0f} files/s {warm_s / cold_s:9.1%}"
        )
    print("  (target at 100,000: warm <= 15 % of cold)")
    print("Of which building the index (walk, snapshot, scan); the rest is the same in both:")
    for size, cold_s, cold_index, warm_s, warm_index in rows:
        print(
            f"  {size:>10,} {cold_index:10.2f} s {'':>17} {warm_index:14.2f} s {'':>17}"
            f" {warm_index / cold_index:9.1%}   (rest: {cold_s - cold_index:.2f} s cold,"
            f" {warm_s - warm_index:.2f} s warm: watching, the Application Entity)"
        )


def _medians(runs: list[tuple[float, float, int]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--million", action="store_true", help="also at 1,000,000 instances")
    parser.add_argument("--memory", action="store_true", help="measure memory, not C-FIND")
    parser.add_argument("--restart", action="store_true", help="cold start vs warm restart")
    parser.add_argument("--tree", type=Path, help="--restart: keep the files here, for next time")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    sizes = [10_000, 100_000] + ([1_000_000] if args.million else [])
    if args.restart:
        bench_restart(sizes, min(args.repeats, 5), args.tree)
    elif args.memory:
        bench_memory(sizes)
    else:
        bench_find(sizes, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
