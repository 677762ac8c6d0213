"""Live drop folder and C-STORE benchmark (issue 4): how soon a new instance is found, and how
fast fsqr receives, next to DCMTK storescp and pynetdicom's qrscp in the same run.

    python benchmarks/bench_live.py            # 200 trials; 1000 instances x 3 repeats
    python benchmarks/bench_live.py --quick    # 40 trials; 300 instances x 1 repeat
    python benchmarks/bench_live.py --no-qrscp

fsqr runs as `fsqr serve` in its own process, as users run it. Latencies are measured from a
pynetdicom client over one open association, which asks again and again with a C-FIND (IMAGE
level, the pending SOP Instance UIDs as a UID list) until the instance is found:

1. rename -> found: a finished file, written beforehand to a folder beside the root (same file
   system), is renamed into the root; trials start at random moments (exponential gaps), so
   they fall at every phase of a polling cycle. Native watching (target p95 <= 1 s) and
   polling with the default poll_interval of 2 s (target p95 <= poll_interval + 1 s).
2. C-STORE response -> found: a pynetdicom C-STORE, then the same C-FIND at once. fsqr indexes
   before it answers, so this is one C-FIND round trip.
3. Throughput: DCMTK `storescu` sends the same files (16 x 16 and 512 x 512 images) over one
   association to DCMTK `storescp +B` (writes the bytes as received, like fsqr, but without
   fsync), to fsqr (temp file, fsync, rename, fsync of the folder, indexed), to
   `python -m pynetdicom qrscp` (needs sqlalchemy), and to a bare pynetdicom SCP whose handler
   answers Success and does nothing: the ceiling of any receiver built on pynetdicom.
   Instances per second, median of the repeats; target: fsqr >= 50 % of storescp and faster
   than qrscp.

Every process has Nagle off (fsqr and this client set TCP_NODELAY; DCMTK is told with
TCP_NODELAY=1). The C-FIND client runs with fsqr's fix for pynetdicom racing itself
(`fsqr.reactor.pynetdicom_keeps_its_responses`): without it, its own reactor thread now and
then took a response, the client waited out its 5 s DIMSE timeout and reopened the association,
and a trial measured that. Not a test.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import (
    dcmtk,
    dcmtk_env,
    free_port,
    fsqr_serve,
    listening,
    nodelay,
    percentile,
    qrscp_can_run,
    qrscp_command,
)
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from fsqr.reactor import pynetdicom_keeps_its_responses
from fsqr.synthetic import make_instance, synthetic_uid, write_instance, write_tree_of_about

FIND = StudyRootQueryRetrieveInformationModelFind
STUDY = synthetic_uid("bench-live", "study")
SERIES = synthetic_uid("bench-live", "series")


def trial_instance(n: int) -> Any:
    return make_instance(
        patient_id="BENCH",
        patient_name="BENCH^LIVE",
        study_uid=STUDY,
        series_uid=SERIES,
        sop_uid=synthetic_uid("bench-live", n),
        instance_number=n,
    )


class Finder:
    """One open association that asks which of some SOP Instance UIDs fsqr serves."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reconnects = 0  # associations lost and opened again (reported if any)
        self.assoc = self._connect()

    def _connect(self) -> Any:
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(FIND)
        ae.add_requested_context(CTImageStorage)
        ae.dimse_timeout = 5
        assoc = ae.associate(
            "127.0.0.1", self.port, ae_title="FSQR", evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)]
        )
        assert assoc.is_established, "cannot associate with fsqr"
        return assoc

    def found(self, uids: list[str]) -> set[str]:
        if not self.assoc.is_established:
            self.reconnects += 1
            self.assoc = self._connect()
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = STUDY
        query.SeriesInstanceUID = SERIES
        query.SOPInstanceUID = uids if len(uids) > 1 else uids[0]
        return {
            str(answer.SOPInstanceUID)
            for _, answer in self.assoc.send_c_find(query, FIND)
            if answer is not None
        }

    def close(self) -> None:
        self.assoc.release()


def report(label: str, seconds: list[float], target: str) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"  {label:<34} p50 {statistics.median(ms):7.1f} ms   p95 {percentile(ms, 0.95):7.1f} ms"
        f"   max {max(ms):7.1f} ms   ({len(ms)} trials; target {target})"
    )


def rename_latencies(work: Path, trials: int, mean_gap: float, **settings: object) -> list[float]:
    """Seconds from each file's rename into the root to the first C-FIND that finds it."""
    root, staging = work / "root", work / "staging"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    (root / "drop").mkdir(parents=True)
    staged = [write_instance(trial_instance(n), staging / f"IMG{n:04d}.dcm") for n in range(trials)]
    uids = [synthetic_uid("bench-live", n) for n in range(trials)]
    rng = random.Random(4)
    with fsqr_serve(root, work, **settings) as port:
        finder = Finder(port)
        renamed: dict[str, float] = {}
        latencies: list[float] = []
        next_rename = time.monotonic()
        n = 0
        while len(latencies) < trials:
            now = time.monotonic()
            if n < trials and now >= next_rename:
                os.rename(staged[n], root / "drop" / staged[n].name)
                renamed[uids[n]] = time.monotonic()
                n += 1
                next_rename = now + rng.expovariate(1 / mean_gap)
                continue
            if not renamed:
                time.sleep(max(0.0, next_rename - now))
                continue
            for uid in finder.found(list(renamed)):
                latencies.append(time.monotonic() - renamed.pop(uid))
        finder.close()
    if finder.reconnects:
        print(f"  (the C-FIND association was lost {finder.reconnects} times and reopened)")
    return latencies


def store_latencies(work: Path, trials: int) -> tuple[list[float], int]:
    """Seconds from each C-STORE response to the C-FIND that finds it; and how many C-FINDs
    did not find it (0 when fsqr indexes before it answers)."""
    root = work / "stored"
    root.mkdir()
    datasets = [trial_instance(100_000 + n) for n in range(trials)]
    misses = 0
    latencies = []
    with fsqr_serve(root, work, watch="native") as port:
        finder = Finder(port)
        for ds in datasets:
            answer = finder.assoc.send_c_store(ds)
            assert answer.Status == 0, f"C-STORE failed: {answer.Status:04X}"
            responded = time.monotonic()
            while str(ds.SOPInstanceUID) not in finder.found([str(ds.SOPInstanceUID)]):
                misses += 1
            latencies.append(time.monotonic() - responded)
        finder.close()
    return latencies, misses


def storescu(port: int, called: str, files: Path) -> float:
    """Seconds DCMTK storescu takes to send `files` (a file, or every file under a folder)
    over one association."""
    scan = ["+sd", "+r"] if files.is_dir() else []
    started = time.perf_counter()
    done = subprocess.run(
        [dcmtk("storescu"), "-aec", called, *scan, "127.0.0.1", str(port), str(files)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"storescu into {called} failed: {done.stderr[-500:]}")
    return took


@contextmanager
def storescp(out: Path) -> Iterator[int]:
    port = free_port()
    out.mkdir(parents=True)
    command = [dcmtk("storescp"), "+B", "-od", str(out), str(port)]
    with listening(command, port, dcmtk_env()):
        yield port


@contextmanager
def bare_pynetdicom() -> Iterator[int]:
    """This file run as a pynetdicom storage SCP that stores nothing (`--bare-scp PORT`)."""
    port = free_port()
    with listening([sys.executable, __file__, "--bare-scp", str(port)], port):
        yield port


def run_bare_scp(port: int) -> None:
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts  # noqa: PLC0415

    ae = AE(ae_title="BARE")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, nodelay),
        (evt.EVT_C_STORE, lambda event: 0x0000),
    ]
    ae.start_server(("127.0.0.1", port), evt_handlers=handlers)


@contextmanager
def qrscp(work: Path) -> Iterator[int]:
    port = free_port()
    with listening(qrscp_command(work, port), port):
        yield port


def throughput(work: Path, instances: int, size: int, repeats: int, with_qrscp: bool) -> None:
    files = work / f"files{size}"
    write_tree_of_about(files, instances, rows=size, columns=size)
    count = sum(1 for p in files.rglob("*") if p.is_file())
    first = next(p for p in sorted(files.rglob("*")) if p.is_file())
    rates: dict[str, list[float]] = {
        "storescp": [],
        "fsqr": [],
        "fsqr, no fsync": [],
        "qrscp": [],
        "pynetdicom": [],
    }

    def rate(port: int, called: str) -> float:
        storescu(port, called, first)  # warm-up, not timed: imports, first association
        return count / storescu(port, called, files)

    for repeat in range(repeats):
        run = work / f"run{repeat}"
        run.mkdir()
        with storescp(run / "storescp") as port:
            rates["storescp"].append(rate(port, "STORESCP"))
        for name, fsync in (("fsqr", True), ("fsqr, no fsync", False)):
            root = run / ("fsqr" if fsync else "fsqr-no-fsync")
            root.mkdir()
            with fsqr_serve(root, run, watch="native", storage={"fsync": fsync}) as port:
                rates[name].append(rate(port, "FSQR"))
            stored = sum(1 for p in root.rglob("*.dcm"))
            assert stored == count, f"{name} stored {stored} of {count}"
        if with_qrscp:
            with qrscp(run) as port:
                rates["qrscp"].append(rate(port, "QRSCP"))
        with bare_pynetdicom() as port:
            rates["pynetdicom"].append(rate(port, "BARE"))
        shutil.rmtree(run)
    print(f"  {count} instances of {size} x {size}, DCMTK storescu -> receiver:")
    best = statistics.median(rates["storescp"])
    notes = {
        "fsqr, no fsync": "   (storage.fsync: false, as storescp: not power-cut safe)",
        "pynetdicom": "   (no-op handler: pynetdicom's own ceiling)",
    }
    for name, values in rates.items():
        if values:
            median = statistics.median(values)
            print(
                f"    {name:<15} {median:8.0f} instances/s  {median / best:6.1%} of storescp"
                f"{notes.get(name, '')}"
            )


def qrscp_available() -> bool:
    if not qrscp_can_run():
        print("  (qrscp left out: it needs sqlalchemy; pip install sqlalchemy)")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40 trials, 300 instances, 1 repeat")
    parser.add_argument("--no-qrscp", action="store_true", help="leave pynetdicom's qrscp out")
    parser.add_argument("--bare-scp", type=int, help=argparse.SUPPRESS)  # the ceiling's process
    args = parser.parse_args(argv)
    if args.bare_scp:
        run_bare_scp(args.bare_scp)
        return 0
    if args.quick:
        args.trials, args.instances, args.repeats = 40, 300, 1
    with (
        tempfile.TemporaryDirectory(prefix="fsqr-bench-live-") as tmp,
        pynetdicom_keeps_its_responses(),  # the client's own race would stall it 5 s now and then
    ):
        work = Path(tmp)
        print("Latency: file renamed into the root -> found by C-FIND")
        native = rename_latencies(work, args.trials, 0.02, watch="native")
        report("native watching", native, "p95 <= 1 s")
        polling = rename_latencies(work, args.trials, 0.1, watch="polling", poll_interval=2.0)
        report("polling, poll_interval 2 s", polling, "p95 <= 3 s")
        print("Latency: C-STORE response -> found by C-FIND")
        stored, misses = store_latencies(work, args.trials)
        report("C-STORE then C-FIND", stored, "found by the first C-FIND")
        print(f"  C-FINDs that did not find the stored instance yet: {misses}")
        print("C-STORE throughput (targets: fsqr >= 50 % of storescp, and faster than qrscp)")
        with_qrscp = not args.no_qrscp and qrscp_available()
        throughput(work, args.instances, 16, args.repeats, with_qrscp)
        throughput(work, args.instances // 4, 512, args.repeats, with_qrscp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
