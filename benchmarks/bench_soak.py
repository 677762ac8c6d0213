"""Load and soak benchmark (issue 6, scope 6): many concurrent associations mixing C-ECHO, C-FIND,
C-MOVE, C-GET and C-STORE against one `fsqr serve` on loopback, for a bounded time.

    python benchmarks/bench_soak.py                     # 60 s, 50 associations
    python benchmarks/bench_soak.py --seconds 10 --clients 20
    python benchmarks/bench_soak.py --rounds 2          # twice, RSS after each: growth or a leak?

Each client opens an association, sends 20 requests chosen at random, releases it and opens
another, until the time is up. Reports requests/s, p50/p99 latency per operation, failures
(target: zero), instances stored vs findable afterwards (target: equal), and the server's RSS at
start and after each round (`--rounds`): the first round's growth is the high-water mark of 50
concurrent associations, which Python's allocator keeps; a later round that grows again leaks.
The server runs in its own process, as users run it. Nothing here is a test.

The clients are pynetdicom SCUs, whose own reactor threads may take a response meant for the
request they just sent (pynetdicom issues #435, #875); they run with fsqr's fix for that race,
`fsqr.reactor.pynetdicom_keeps_its_responses`, unless `--pynetdicom-race` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import percentile
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from fsqr.reactor import pynetdicom_keeps_its_responses
from fsqr.synthetic import make_instance, synthetic_uid, write_sample_data

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
OPERATIONS = ("echo", "find", "move", "get", "store")
REQUESTS_PER_ASSOCIATION = 20
SOAK_STUDY = synthetic_uid("soak", "study")
SOAK_SERIES = synthetic_uid("soak", "series")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def destination_process(ready: Any) -> None:
    """A pynetdicom Storage SCP, where C-MOVE sends instances; in a process of its own, so that
    the clients' threads do not starve it. Sends its port, then its count when told to stop."""
    received = 0
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        nonlocal received
        with lock:
            received += 1
        return 0

    ae = AE(ae_title="SOAKDEST")
    ae.maximum_associations = 200
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None and server.socket is not None  # block=False: it returns it
    # As fsqr does: pynetdicom's backlog of 5 would drop the SYNs of fsqr's sub-associations
    # when many moves start at once, and fsqr's connect would time out (timeouts.connect).
    server.socket.listen(socket.SOMAXCONN)
    ready.send(int(server.server_address[1]))
    ready.recv()
    server.shutdown()
    ready.send(received)


class Serve:
    """`fsqr serve` in its own process, its log in a file (a pipe would fill and stall it)."""

    def __init__(self, root: Path, config: Path, log: Path) -> None:
        self._log = log.open("w")
        command = [sys.executable, "-m", "fsqr", "serve", str(root), "--config", str(config)]
        self.process = subprocess.Popen(command, stderr=self._log)
        deadline = time.monotonic() + 60
        self.port = 0
        while not self.port and time.monotonic() < deadline:
            found = re.search(r"listening on [\d.]+:(\d+)", log.read_text())
            if found:
                self.port = int(found[1])
            time.sleep(0.05)
        if not self.port:
            raise SystemExit(f"fsqr serve did not start; see {log}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self._log.close()


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failures: dict[str, int] = defaultdict(int)
        self.examples: list[str] = []
        self.stored = 0

    def record(self, operation: str, seconds: float, ok: bool, why: str = "") -> None:
        with self.lock:
            self.latency[operation].append(seconds)
            if not ok:
                self.failures[operation] += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{operation}: {why}")

    def as_plain(self) -> dict[str, Any]:
        return {
            "latency": dict(self.latency),
            "failures": dict(self.failures),
            "examples": self.examples,
            "stored": self.stored,
        }

    def add(self, plain: dict[str, Any]) -> None:
        for operation, times in plain["latency"].items():
            self.latency[operation] += times
        for operation, n in plain["failures"].items():
            self.failures[operation] += n
        self.examples += plain["examples"][: max(0, 5 - len(self.examples))]
        self.stored += plain["stored"]


def client_process(
    port: int, until: float, seeds: list[int], targets: dict[str, str], *, race: bool, out: Any
) -> None:
    """Some of the clients, as threads of one process (one process for all of them would
    measure the GIL of the clients' own pynetdicom more than the server)."""
    stats = Stats()
    threads = [
        threading.Thread(target=client, args=(port, until, seed, targets, stats)) for seed in seeds
    ]
    with contextlib.nullcontext() if race else pynetdicom_keeps_its_responses():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    out.put(stats.as_plain())


def final_status(responses: Any) -> int:
    answers = list(responses)
    return int(answers[-1][0].Status) if answers and "Status" in answers[-1][0] else -1


def client(port: int, until: float, seed: int, targets: dict[str, str], stats: Stats) -> None:
    rng = random.Random(seed)
    ae = AE(ae_title=f"SOAK{seed:02d}")
    for context in (Verification, FIND, MOVE, GET):
        ae.add_requested_context(context)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    roles: list[Any] = [build_role(CTImageStorage, scu_role=True, scp_role=True)]
    handlers: list[Any] = [(evt.EVT_C_STORE, lambda event: 0)]  # C-GET's sub-ops
    serial = 0
    while time.time() < until:
        started = time.perf_counter()
        assoc = ae.associate(
            "127.0.0.1", port, ae_title="FSQR", ext_neg=roles, evt_handlers=handlers
        )
        if not assoc.is_established:
            stats.record("associate", time.perf_counter() - started, False, "not established")
            continue
        stats.record("associate", time.perf_counter() - started, True)
        for _ in range(REQUESTS_PER_ASSOCIATION):
            if time.time() >= until or not assoc.is_established:
                break
            operation = rng.choice(OPERATIONS)
            started = time.perf_counter()
            try:
                code = request(assoc, operation, targets, seed, serial)
            except Exception as exc:  # a benchmark counts it and goes on
                code = -1
                why = f"{type(exc).__name__}: {exc}"
            else:
                why = f"status {code:04X}" if code >= 0 else "no response"
            serial += operation == "store"
            ok = code == 0
            stats.record(operation, time.perf_counter() - started, ok, why)
            if ok and operation == "store":
                with stats.lock:
                    stats.stored += 1
        if assoc.is_established:
            assoc.release()


def request(assoc: Any, operation: str, targets: dict[str, str], seed: int, serial: int) -> int:
    if operation == "echo":
        answer = assoc.send_c_echo()
        return int(answer.Status) if "Status" in answer else -1
    if operation == "find":
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientName = "*"
        query.StudyInstanceUID = ""
        query.NumberOfStudyRelatedInstances = ""
        return final_status(assoc.send_c_find(query, FIND))
    if operation in ("move", "get"):
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = targets["study"]
        query.SeriesInstanceUID = targets["series"]
        if operation == "move":
            return final_status(assoc.send_c_move(query, "SOAKDEST", MOVE))
        return final_status(assoc.send_c_get(query, GET))
    ds = make_instance(
        patient_id="SOAK",
        patient_name="SOAK^TEST",
        study_uid=SOAK_STUDY,
        series_uid=SOAK_SERIES,
        sop_uid=synthetic_uid("soak", seed, serial),
        instance_number=serial + 1,
    )
    answer = assoc.send_c_store(ds)
    return int(answer.Status) if "Status" in answer else -1


def smallest_series(port: int) -> dict[str, str]:
    """The series with the fewest instances: what C-MOVE and C-GET fetch."""
    ae = AE(ae_title="SOAKSETUP")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="FSQR")
    studies = Dataset()
    studies.QueryRetrieveLevel = "STUDY"
    studies.StudyInstanceUID = ""
    answers = []
    for study in [a for _, a in assoc.send_c_find(studies, FIND) if a is not None]:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study.StudyInstanceUID
        query.SeriesInstanceUID = ""
        query.NumberOfSeriesRelatedInstances = ""
        query.Modality = "CT"  # the storage SOP Class the clients take for C-GET
        answers += [a for _, a in assoc.send_c_find(query, FIND) if a is not None]
    assoc.release()
    best = min(answers, key=lambda a: int(a.NumberOfSeriesRelatedInstances))
    return {
        "study": str(best.StudyInstanceUID),
        "series": str(best.SeriesInstanceUID),
        "instances": str(best.NumberOfSeriesRelatedInstances),
    }


def findable(port: int) -> int:
    ae = AE(ae_title="SOAKCHECK")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="FSQR")
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = SOAK_STUDY
    query.SeriesInstanceUID = SOAK_SERIES
    query.SOPInstanceUID = ""
    answers = [a for _, a in assoc.send_c_find(query, FIND) if a is not None]
    assoc.release()
    return len(answers)


def one_round(
    port: int,
    until: float,
    seeds: list[int],
    targets: dict[str, str],
    *,
    args: argparse.Namespace,
    stats: Stats,
) -> None:
    """The clients of `seeds`, shared among `args.processes` processes, until `until`; their
    results are added to `stats`."""
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    shares = [share for i in range(args.processes) if (share := seeds[i :: args.processes])]
    processes = [
        spawn.Process(
            target=client_process,
            args=(port, until, share, targets),
            kwargs={"race": args.pynetdicom_race, "out": results},
        )
        for share in shares
    ]
    for process in processes:
        process.start()
    for _ in processes:
        stats.add(results.get())
    for process in processes:
        process.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--processes", type=int, default=5, help="the clients' processes")
    parser.add_argument("--rounds", type=int, default=1, help="the same load again, as often")
    parser.add_argument("--keep-log", type=Path, help="copy the server's log here at the end")
    parser.add_argument(
        "--pynetdicom-race",
        action="store_true",
        help="leave the clients' reactor threads free to drop responses (pynetdicom #435, #875)",
    )
    args = parser.parse_args(argv)
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    destination = spawn.Process(target=destination_process, args=(theirs,))
    destination.start()
    destination_port = ours.recv()
    moved = 0
    stats = Stats()
    with tempfile.TemporaryDirectory(prefix="fsqr-soak-") as folder:
        root = Path(folder) / "root"
        write_sample_data(root)
        config = Path(folder) / "fsqr.yaml"
        config.write_text(
            "host: 127.0.0.1\nport: 0\nwatch: native\n"
            f"max_associations: {args.clients + 10}\n"
            f"ae_table: {{SOAKDEST: {{host: 127.0.0.1, port: {destination_port}}}}}\n",
            encoding="utf-8",
        )
        server = Serve(root, config, Path(folder) / "fsqr.log")
        try:
            rss_start = rss_kib(server.process.pid)
            targets = smallest_series(server.port)
            rss_after: list[int] = []
            started = time.perf_counter()
            for round_ in range(args.rounds):
                seeds = [round_ * args.clients + n for n in range(args.clients)]
                one_round(
                    server.port, time.time() + args.seconds, seeds, targets, args=args, stats=stats
                )
                rss_after.append(rss_kib(server.process.pid))
            elapsed = time.perf_counter() - started
            found = findable(server.port)
        finally:
            server.stop()
            ours.send("stop")
            moved = ours.recv()
            destination.join(30)
            if args.keep_log:
                args.keep_log.write_text((Path(folder) / "fsqr.log").read_text())
    print(
        f"{args.clients} clients in {args.processes} processes, {args.rounds} round(s), "
        f"{elapsed:.1f} s; C-MOVE/C-GET fetch a series of {targets['instances']} instances"
    )
    report(stats, elapsed, found, moved)
    after = ", ".join(f"{kib / 1024:.1f}" for kib in rss_after)
    print(f"  server RSS {rss_start / 1024:.1f} MiB at start; after each round: {after} MiB")
    return 0 if sum(stats.failures.values()) == 0 and found == stats.stored else 1


def report(stats: Stats, elapsed: float, found: int, moved: int) -> None:
    requests = sum(len(v) for k, v in stats.latency.items() if k != "associate")
    failures = sum(stats.failures.values())
    print(f"  requests            {requests:8d}   {requests / elapsed:8.1f} /s")
    print(f"  failures            {failures:8d}   (target 0)")
    for operation in ("associate", *OPERATIONS):
        times = stats.latency.get(operation, [])
        if times:
            print(
                f"  {operation:<9} n={len(times):6d}  p50 {statistics.median(times) * 1000:7.1f} ms"
                f"  p99 {percentile(times, 0.99) * 1000:7.1f} ms"
                f"  failed {stats.failures.get(operation, 0)}"
            )
    for example in stats.examples:
        print(f"  e.g. {example}")
    print(f"  stored {stats.stored}, findable afterwards {found}   (target: equal)")
    print(f"  moved to the destination: {moved} instances")


if __name__ == "__main__":
    sys.exit(main())
