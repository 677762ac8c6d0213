"""Retrieve benchmark (issue 3): C-MOVE throughput to a DCMTK storescp, next to pynetdicom's own
ceiling and pynetdicom's qrscp app, all measured in the same run over the same files.

    python benchmarks/bench_retrieve.py            # 1,000 instances of each size, 3 repeats
    python benchmarks/bench_retrieve.py --quick    # 200 instances, 1 repeat
    python benchmarks/bench_retrieve.py --instances 500 --repeats 5 --no-qrscp

For small images (16 x 16) and 512 x 512 images, each run moves every instance once to a DCMTK
`storescp --ignore` (it receives every byte and stores nothing, so the disk does not take part):

1. ceiling: a plain pynetdicom loop, `send_c_store(path)` with
   `_config.STORE_SEND_CHUNKED_DATASET = True` (raw streaming, no decode) over one association
   opened and released inside the timing. The fastest pynetdicom sends files.
2. fsqr: `fsqr serve` in its own process; a pynetdicom SCU sends one C-MOVE per study (Study
   Root, as a viewer does) on one association, timed from each request to its final response.
3. qrscp: `python -m pynetdicom qrscp` (needs sqlalchemy), fed the same files by DCMTK
   `storescu` beforehand (its database import step, not timed), then the same C-MOVE.

The client and the ceiling loop here switch Nagle off on their sockets, as fsqr does itself, and
storescp is told to with TCP_NODELAY=1, so none of them is measured waiting for delayed ACKs.
qrscp runs as shipped, Nagle on, as its users run it. A ceiling run in which pynetdicom loses
a C-STORE response (its issues #435, #875) is reported and run again. Reports medians; target:
fsqr >= 80 % of the ceiling and faster than qrscp. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common import (
    dcmtk,
    dcmtk_env,
    free_port,
    fsqr_serve,
    listening,
    nodelay,
    qrscp_command,
    wait_for_port,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from fsqr.synthetic import tree_split, write_tree

MOVE = StudyRootQueryRetrieveInformationModelMove
STORESCP_TITLE = "STORESCP"


@contextmanager
def storescp() -> Iterator[int]:
    """DCMTK storescp, receiving and discarding; yields its port."""
    port = free_port()
    command = [dcmtk("storescp"), "--ignore", "-aet", STORESCP_TITLE, str(port)]
    with listening(command, port, dcmtk_env()):
        yield port


@contextmanager
def qrscp(files: Path, destination: int, work: Path) -> Iterator[int | None]:
    """pynetdicom's qrscp app with `files` imported into its database; yields its port, or
    None when it cannot run here (sqlalchemy missing)."""
    try:
        import sqlalchemy  # noqa: F401, PLC0415  (only to know whether qrscp can run)
    except ImportError:
        print("  (qrscp skipped: it needs sqlalchemy; pip install sqlalchemy)")
        yield None
        return
    port = free_port()
    command = qrscp_command(work, port, {STORESCP_TITLE: destination})
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        started = time.perf_counter()
        imported = subprocess.run(
            [dcmtk("storescu"), "-aec", "QRSCP", "+sd", "+r", "127.0.0.1", str(port), str(files)],
            capture_output=True,
            text=True,
            check=False,
        )
        if imported.returncode != 0:
            raise SystemExit(f"storescu into qrscp failed: {imported.stderr[-500:]}")
        took = time.perf_counter() - started
        print(f"  (qrscp database import by storescu: {took:.1f} s, not timed below)")
        yield port
    finally:
        process.terminate()
        process.wait(30)


def studies_of(paths: list[Path]) -> dict[str, int]:
    """Study Instance UID -> how many instances it has."""
    found: dict[str, int] = {}
    for path in paths:
        uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        found[uid] = found.get(uid, 0) + 1
    return found


def c_moves(port: int, called: str, studies: dict[str, int]) -> float:
    """Seconds from the first C-MOVE request to the last final response: one C-MOVE per study
    (as a viewer retrieves), one after the other on one association.

    (One C-MOVE of a UID list would do, but qrscp fails on lists with SQLAlchemy 2.)
    """
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(MOVE)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)]
    )
    assert assoc.is_established, f"cannot associate with {called}"
    took = 0.0
    for study, expected in studies.items():
        request = Dataset()
        request.QueryRetrieveLevel = "STUDY"
        request.StudyInstanceUID = study
        started = time.perf_counter()
        responses = list(assoc.send_c_move(request, STORESCP_TITLE, MOVE))
        took += time.perf_counter() - started
        last = responses[-1][0]
        completed = last.get("NumberOfCompletedSuboperations")
        if last.Status != 0 or completed != expected:
            raise SystemExit(f"{called}: C-MOVE ended {last.Status:04X}, {completed} completed")
    assoc.release()
    return took


def ceiling(port: int, paths: list[Path]) -> float | None:
    """pynetdicom's own best: send_c_store(path), streamed in chunks, over one association.

    None when a C-STORE response never came (pynetdicom issues #435, #875): the run stalled
    for the DIMSE timeout and says nothing about throughput.
    """
    classes = sorted({str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths})
    ae = AE(ae_title="CEILING")
    ae.dimse_timeout = 5  # a lost response costs this, not the default 30 s
    for sop_class in classes:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        started = time.perf_counter()
        assoc = ae.associate(
            "127.0.0.1", port, ae_title=STORESCP_TITLE, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)]
        )
        assert assoc.is_established
        for path in paths:
            result = assoc.send_c_store(path)
            if "Status" not in result:
                assoc.abort()
                return None
            if result.Status != 0:
                raise SystemExit(f"ceiling: C-STORE of {path} failed: {result.Status:04X}")
        assoc.release()
        return time.perf_counter() - started
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def median(action: Callable[[], float], repeats: int) -> float:
    return statistics.median(action() for _ in range(repeats))


def median_of_complete(action: Callable[[], float | None], repeats: int, label: str) -> float:
    """The median of `repeats` runs that completed; runs that lost a response are counted,
    reported and run again (up to three times as many runs in all)."""
    times: list[float] = []
    lost = 0
    while len(times) < repeats and lost < 2 * repeats:
        took = action()
        if took is None:
            lost += 1
        else:
            times.append(took)
    if lost:
        print(f"  ({label}: {lost} run(s) lost a C-STORE response and stalled; run again)")
    if not times:
        raise SystemExit(f"{label}: every run lost a response")
    return statistics.median(times)


def bench_size(name: str, rows: int, instances: int, repeats: int, qr: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="fsqr-bench-retrieve-") as tmp:
        work = Path(tmp)
        files = work / "files"
        patients, studies, series, per_series = tree_split(instances)
        started = time.perf_counter()
        paths = write_tree(
            files,
            patients=patients,
            studies_per_patient=studies,
            series_per_study=series,
            instances_per_series=per_series,
            rows=rows,
            columns=rows,
        )
        n = len(paths)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"\n{name}: {n} instances, {size / n / 1024:.1f} KiB each, {size / 1e6:.1f} MB "
            f"(written in {time.perf_counter() - started:.1f} s); median of {repeats}:"
        )
        studies_ = studies_of(paths)
        results: dict[str, float] = {}
        with storescp() as destination:
            for p in paths:  # warm the page cache
                p.read_bytes()
            label = "pynetdicom send_c_store(path) loop"
            results[label] = median_of_complete(lambda: ceiling(destination, paths), repeats, label)
            peers = {STORESCP_TITLE: {"host": "127.0.0.1", "port": destination}}
            with fsqr_serve(files, work, watch="off", ae_table=peers) as port:
                c_moves(port, "FSQR", studies_)  # warm-up
                results["fsqr C-MOVE"] = median(lambda: c_moves(port, "FSQR", studies_), repeats)
            if qr:
                with qrscp(files, destination, work) as port_or_none:
                    if port_or_none is not None:
                        qport = port_or_none
                        results["pynetdicom qrscp C-MOVE"] = median(
                            lambda: c_moves(qport, "QRSCP", studies_), repeats
                        )
        base = results["pynetdicom send_c_store(path) loop"]
        print(f"  {'':36} {'instances/s':>12} {'MB/s':>8} {'vs ceiling':>11}")
        for label, seconds in results.items():
            print(
                f"  {label:36} {n / seconds:12.1f} {size / seconds / 1e6:8.2f} "
                f"{base / seconds:10.0%}"
            )
        if "pynetdicom qrscp C-MOVE" in results:
            ratio = results["pynetdicom qrscp C-MOVE"] / results["fsqr C-MOVE"]
            print(f"  fsqr is {ratio:.1f}x as fast as qrscp")
        print("  (targets: fsqr >= 80 % of the ceiling, and faster than qrscp)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="per image size (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (3)")
    parser.add_argument("--quick", action="store_true", help="200 instances, 1 repeat")
    parser.add_argument("--no-qrscp", action="store_true", help="leave pynetdicom's qrscp out")
    args = parser.parse_args(argv)
    instances, repeats = (200, 1) if args.quick else (args.instances, args.repeats)
    print(f"C-MOVE to DCMTK storescp --ignore on 127.0.0.1, {os.cpu_count()} cores")
    bench_size("small images, 16 x 16", 16, instances, repeats, not args.no_qrscp)
    bench_size("512 x 512 images", 512, instances, repeats, not args.no_qrscp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
