"""Retrieve benchmark (issue 3): C-MOVE throughput to a DCMTK storescp, next to pynetdicom's own
ceiling and pynetdicom's qrscp app, all measured in the same run over the same files.

    python benchmarks/bench_retrieve.py            # 1,000 instances of each size, 3 repeats
    python benchmarks/bench_retrieve.py --quick    # 200 instances, 1 repeat
    python benchmarks/bench_retrieve.py --instances 500 --repeats 5 --no-qrscp
    python benchmarks/bench_retrieve.py --lost-responses   # 10,000 instances, 1 in 1,000 lost
    python benchmarks/bench_retrieve.py --slow-destination 10   # 10 ms per C-STORE: 1 vs 4

For small images (16 x 16) and 512 x 512 images, each run moves every instance once to a DCMTK
`storescp --ignore` (it receives every byte and stores nothing, so the disk does not take part):

1. ceiling: a plain pynetdicom loop, `send_c_store(path)` with
   `_config.STORE_SEND_CHUNKED_DATASET = True` (raw streaming, no decode) over one association
   opened and released inside the timing. The fastest pynetdicom sends files.
2. fsqr: `fsqr serve` in its own process; a pynetdicom SCU sends one C-MOVE per study (Study
   Root, as a viewer does) on one association, timed from each request to its final response.
   Then the same with the destination's `associations: 4` (`--associations`): four
   sub-associations at once (storescp runs with --fork, so that it takes them all).
3. qrscp: `python -m pynetdicom qrscp` (needs sqlalchemy), fed the same files by DCMTK
   `storescu` beforehand (its database import step, not timed), then the same C-MOVE.

The client and the ceiling loop here switch Nagle off on their sockets, as fsqr does itself, and
storescp is told to with TCP_NODELAY=1, so none of them is measured waiting for delayed ACKs.
qrscp runs as shipped, Nagle on, as its users run it. A ceiling run in which pynetdicom loses
a C-STORE response (its issues #435, #875) is reported and run again. Reports medians; target:
fsqr >= 80 % of the ceiling and faster than qrscp; with parallel sub-associations, >= 2x the
ceiling.

`--lost-responses`: one C-MOVE of 10,000 small instances to a pynetdicom Storage SCP (in its own
process) that leaves the first C-STORE of every 1,000th instance it receives unanswered, next to
the same move to the same SCP answering everything. fsqr waits `timeouts.store_response` (1 s
here) for each, sends that instance again over a new association, and goes on; the move must
end 0000 Success with every instance delivered. Not a test.

`--slow-destination MS`: one C-MOVE of small instances to a pynetdicom Storage SCP (in its own
process) that takes MS milliseconds over each C-STORE, as a destination writing to slow storage
or at the far end of a long network path does, over one sub-association and over
`--associations` at once. This is where parallel sub-associations pay; to storescp on the same
machine fsqr's own CPU is the limit, and one association is as fast.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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
    qrscp_can_run,
    qrscp_command,
    wait_for_port,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from fsqr.synthetic import write_tree_of_about

MOVE = StudyRootQueryRetrieveInformationModelMove
STORESCP_TITLE = "STORESCP"


@contextmanager
def storescp() -> Iterator[int]:
    """DCMTK storescp, receiving and discarding; yields its port."""
    port = free_port()
    command = [dcmtk("storescp"), "--ignore", "--fork", "-aet", STORESCP_TITLE, str(port)]
    with listening(command, port, dcmtk_env()):
        yield port


@contextmanager
def qrscp(files: Path, destination: int, work: Path) -> Iterator[int | None]:
    """pynetdicom's qrscp app with `files` imported into its database; yields its port, or
    None when it cannot run here (sqlalchemy missing)."""
    if not qrscp_can_run():
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


def c_moves(
    port: int, called: str, studies: dict[str, int], destination: str = STORESCP_TITLE
) -> float:
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
        responses = list(assoc.send_c_move(request, destination, MOVE))
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


def write_files(folder: Path, instances: int, rows: int) -> list[Path]:
    """`instances` synthetic images of `rows` x `rows`, 50 to a patient, under `folder`."""
    return write_tree_of_about(folder, instances, rows=rows, columns=rows)


def bench_size(name: str, rows: int, instances: int, repeats: int, *, qr: bool, links: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fsqr-bench-retrieve-") as tmp:
        work = Path(tmp)
        files = work / "files"
        started = time.perf_counter()
        paths = write_files(files, instances, rows)
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
            peers = {
                STORESCP_TITLE: {"host": "127.0.0.1", "port": destination},
                "PARALLEL": {"host": "127.0.0.1", "port": destination, "associations": links},
            }
            with fsqr_serve(files, work, watch="off", ae_table=peers) as port:
                c_moves(port, "FSQR", studies_)  # warm-up
                results["fsqr C-MOVE"] = median(lambda: c_moves(port, "FSQR", studies_), repeats)
                results[f"fsqr C-MOVE, {links} associations"] = median(
                    lambda: c_moves(port, "FSQR", studies_, "PARALLEL"), repeats
                )
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
        print(
            "  (targets: fsqr >= 80 % of the ceiling and faster than qrscp;"
            " with parallel sub-associations >= 200 %)"
        )


def lossy_scp(ready: Any, every: int, hold: float, delay: float = 0.0) -> None:
    """A pynetdicom Storage SCP that leaves the first C-STORE of every `every`-th instance it
    receives unanswered for `hold` seconds, and takes `delay` seconds over every C-STORE (a
    destination writing to slow storage, or far away); sends back what it received when told to
    stop."""
    from pynetdicom import AllStoragePresentationContexts  # noqa: PLC0415  (in its own process)

    received: dict[str, int] = {}
    held: list[str] = []
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with lock:
            received[uid] = received.get(uid, 0) + 1
            unanswered = received[uid] == 1 and len(received) % every == 0
            if unanswered:
                held.append(uid)
        if unanswered:
            time.sleep(hold)  # by then fsqr has given up on this association
        time.sleep(delay)
        return 0x0000

    ae = AE(ae_title="LOSSY")
    ae.maximum_associations = 32
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ExplicitVRLittleEndian)
    handlers: list[Any] = [(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, nodelay)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None  # block=False: it returns the server
    ready.send(server.server_address[1])
    ready.recv()  # until told to stop
    with lock:
        ready.send((dict(received), list(held)))
    server.shutdown()


def bench_lost_responses(instances: int, every: int) -> None:
    """One C-MOVE of `instances` to an SCP that answers everything, then to one that leaves one
    C-STORE in `every` unanswered: both must deliver every instance."""
    with tempfile.TemporaryDirectory(prefix="fsqr-bench-lost-") as tmp:
        work = Path(tmp)
        files = work / "files"
        paths = write_files(files, instances, rows=16)
        studies_ = list(studies_of(paths))
        print(f"\nlost responses: one C-MOVE of {len(paths)} small instances")
        for label, unanswered in (("every response", 0), (f"1 in {every} unanswered", every)):
            took, last, received, held = move_to_scp(
                files,
                work,
                studies_,
                (unanswered or len(paths) + 1, 5),
                {},
                timeouts={"store_response": 1},
            )
            completed = last.get("NumberOfCompletedSuboperations")
            failed = last.get("NumberOfFailedSuboperations")
            print(
                f"  {label:24} {took:6.1f} s  final {last.Status:04X}, {completed} completed,"
                f" {failed} failed; {len(received)} of {len(paths)} delivered"
                f" ({len(held)} responses withheld, {sum(received.values())} C-STOREs in all)"
            )
        print("  (target: 0000 and every instance delivered despite the lost responses)")


def bench_slow_destination(instances: int, delay: float, links: int) -> None:
    """One C-MOVE of `instances` small instances to a destination that takes `delay` seconds
    over each C-STORE, over one sub-association and over `links` at once."""
    with tempfile.TemporaryDirectory(prefix="fsqr-bench-slow-") as tmp:
        work = Path(tmp)
        files = work / "files"
        paths = write_files(files, instances, rows=16)
        studies_ = list(studies_of(paths))
        print(
            f"\nslow destination: one C-MOVE of {len(paths)} small instances to a pynetdicom SCP"
            f" that takes {delay * 1000:.0f} ms over each C-STORE"
        )
        rates = {}
        for associations in (1, links):
            took, last, received, _ = move_to_scp(
                files, work, studies_, (len(paths) + 1, 0, delay), {"associations": associations}
            )
            rates[associations] = len(received) / took
            print(
                f"  associations: {associations:<2}  {rates[associations]:7.1f} instances/s"
                f"  final {last.Status:04X}, {len(received)} of {len(paths)} delivered"
            )
        print(f"  {links} sub-associations at once: {rates[links] / rates[1]:.1f}x one")


def move_to_scp(
    files: Path,
    work: Path,
    studies: list[str],
    scp_args: tuple[Any, ...],
    peer: dict[str, Any],
    **settings: Any,
) -> tuple[float, Dataset, dict[str, int], list[str]]:
    """One C-MOVE of every study, through `fsqr serve` (with `settings`), to a
    `lossy_scp(ready, *scp_args)` in a process of its own, with `peer` in its `ae_table` entry:
    (seconds, final response, how often it received each instance, the ones it withheld)."""
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    scp = spawn.Process(target=lossy_scp, args=(theirs, *scp_args))
    scp.start()
    port = ours.recv()
    peers = {"DEST": {"host": "127.0.0.1", "port": port, **peer}}
    try:
        with fsqr_serve(files, work, watch="off", ae_table=peers, **settings) as fsqr_port:
            took, last = move_everything(fsqr_port, "DEST", studies)
    finally:
        ours.send("stop")
        received, held = ours.recv()
        scp.join(30)
    return took, last, received, held


def move_everything(port: int, destination: str, studies: list[str]) -> tuple[float, Dataset]:
    """One C-MOVE of every study (a list of Study Instance UIDs); (seconds, final response)."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(MOVE)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="FSQR", evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)]
    )
    assert assoc.is_established
    request = Dataset()
    request.QueryRetrieveLevel = "STUDY"
    request.StudyInstanceUID = studies
    started = time.perf_counter()
    responses = list(assoc.send_c_move(request, destination, MOVE))
    took = time.perf_counter() - started
    assoc.release()
    return took, responses[-1][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="per image size (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender (3)")
    parser.add_argument("--quick", action="store_true", help="200 instances, 1 repeat")
    parser.add_argument("--no-qrscp", action="store_true", help="leave pynetdicom's qrscp out")
    parser.add_argument("--associations", type=int, default=4, help="parallel sub-associations")
    parser.add_argument(
        "--lost-responses", action="store_true", help="only the 10,000-instance lost-response move"
    )
    parser.add_argument(
        "--slow-destination",
        type=float,
        metavar="MS",
        help="only a C-MOVE to a destination taking MS ms over each C-STORE, 1 vs N associations",
    )
    args = parser.parse_args(argv)
    if args.slow_destination is not None:
        count = 200 if args.quick else args.instances
        bench_slow_destination(count, args.slow_destination / 1000, args.associations)
        return 0
    if args.lost_responses:
        bench_lost_responses(*((1000, 200) if args.quick else (10_000, 1000)))
        return 0
    instances, repeats = (200, 1) if args.quick else (args.instances, args.repeats)
    print(f"C-MOVE to DCMTK storescp --ignore --fork on 127.0.0.1, {os.cpu_count()} cores")
    qr, links = not args.no_qrscp, args.associations
    bench_size("small images, 16 x 16", 16, instances, repeats, qr=qr, links=links)
    bench_size("512 x 512 images", 512, instances, repeats, qr=qr, links=links)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
