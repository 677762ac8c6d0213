"""Peers benchmark: fsqr against the Query/Retrieve servers it wants to beat, DCMTK `dcmqrscp`,
Orthanc and pynetdicom's `qrscp` app, on the same files, measured in the same run.

    python benchmarks/bench_peers.py            # 1,000 instances, 3 runs each: ~10 min, most qrscp
    python benchmarks/bench_peers.py --quick    # 200 instances, 1 start and retrieve, 20 queries
    python benchmarks/bench_peers.py --instances 5000 --no-qrscp

The files are `write_tree_of_about`'s small synthetic images (16 x 16, 100 to a patient, in
studies of 50), written once to a temporary folder, read by every server from the page cache.
Every server listens on a port chosen at run time and is reached at 127.0.0.1:

- fsqr: `fsqr serve` over the folder, with its defaults (native watching, no index snapshot:
  every start reads every file). No import step: its start-up scan is its import.
- dcmqrscp (DCMTK): a dcmqrscp.cfg of one storage area; the files are registered in place by
  `dcmqridx` (its fastest import: no network, no copy) before the server starts.
- Orthanc (Debian: `apt-get install orthanc`): run as a plain process with a JSON configuration
  of its own (SQLite index and storage in the temporary folder, no plugins, HTTP port chosen at
  run time, remote HTTP access off), then fed the files by DCMTK `storescu` over one association.
- qrscp (needs sqlalchemy): `python -m pynetdicom qrscp`, fed the files by `storescu` too.

A peer that is not installed is left out with a line saying how to get it; DCMTK itself is
required (its `storescp` is the move destination and its `storescu` the importer).

Measured for each server with the same client, pynetdicom in this process, rather than DCMTK's
findscu/movescu/getscu: a tool's process start (some 10 ms) would be timed with each request,
where pynetdicom times one request at a time on an open association. Its own costs are the same
against every server, and it switches Nagle off:

1. Ready to query: seconds from the first step (the import for dcmqrscp, the start for the
   others) until a C-FIND at STUDY level, on a new association, finds every study; the import
   is reported on its own and "start" is the rest. Servers are started in turns, the median of
   `--repeats` starts each.
2. C-FIND latency: median of `--queries` round trips on one open association, timed in turns
   with a C-ECHO on the same association: STUDY level `PatientName=*` (every study), and IMAGE
   level by SOPInstanceUID (with the study's and series' UIDs, as a hierarchical query needs).
   Each answer is checked; a server that sends one study many times is timed doing so, and
   the report says so (qrscp does: its database search returns one match per instance).
3. C-MOVE: one C-MOVE per study (Study Root, as a viewer retrieves), one after another on one
   association, to DCMTK `storescp --ignore` (bench_retrieve's destination: it receives every
   byte and stores nothing), timed from each request to its final response. Instances/s.
4. C-GET: the same over C-GET, the instances coming back to this client, which answers each
   C-STORE without decoding it. Every peer here serves C-GET, dcmqrscp included (DCMTK 3.6).

Retrieves are timed in turns (fsqr, dcmqrscp, Orthanc, qrscp, fsqr, ...), so every server
meets the same drift of a shared machine. Each ratio is a peer's seconds over fsqr's (so for
instances/s, fsqr's rate over the peer's): how many times as fast fsqr is; below 1.00x the peer
is faster. Nothing here is a test.

DCMTK's servers (dcmqrscp, storescp) and Orthanc, whose DICOM side is DCMTK's network code,
are told to switch Nagle off with TCP_NODELAY=1, their documented switch: without it each DIMSE
exchange waits on a delayed ACK (dcmqrscp then moved some 11 instances/s, Orthanc imported 22).
qrscp has no such switch and runs as shipped, Nagle on, as in bench_retrieve. DCMTK 3.6.7 and
Orthanc 1.10 cannot bind their DICOM port to one address, so they listen on every interface for
the length of the run; Orthanc answers only the AE titles of this benchmark, from 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_retrieve import STORESCP_TITLE, storescp  # the same destination as bench_retrieve
from common import (
    dcmtk,
    dcmtk_env,
    free_port,
    fsqr_serve,
    interleaved_medians,
    nodelay,
    qrscp_can_run,
    qrscp_command,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from fsqr.reactor import pynetdicom_keeps_its_responses
from fsqr.synthetic import write_tree_of_about

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
CLIENT = "BENCH"  # the calling AE title of every request this benchmark makes
IMPORTER = "IMPORT"  # storescu's, when it feeds a peer
# Never called: Orthanc wants a port for every modality it knows, even one that only calls it.
UNUSED_PORT = 104


class PeerFailed(Exception):
    """A server did not start, or answered a request wrongly: that figure of it is reported
    failed, with this message (a failed start leaves it out of the rest), and the run goes on."""


@dataclass(frozen=True)
class Files:
    """What the servers are given, and what a correct answer about it is."""

    root: Path
    paths: list[Path]
    studies: dict[str, int]  # Study Instance UID -> its instances
    sop_classes: list[str]  # for C-GET: the Storage SOP Classes the client accepts
    probe: Dataset  # one instance's header: the IMAGE-level query asks for it


# A server under test: its context manager starts it (and imports the files) over
# (files, its own work folder, the move destination's port), and yields (its port, seconds of
# the import, 0 when there is none).
Run = Callable[[Files, Path, int], AbstractContextManager[tuple[int, float]]]


@dataclass(frozen=True)
class Server:
    name: str
    title: str  # its AE title: the Called AE Title of every request
    run: Run


def survey(root: Path) -> Files:
    """The files under `root`, and what a server should answer about them (read with pydicom,
    not with fsqr, which is under test)."""
    paths = sorted(p for p in root.rglob("*.dcm"))
    studies: dict[str, int] = {}
    classes: set[str] = set()
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        studies[str(ds.StudyInstanceUID)] = studies.get(str(ds.StudyInstanceUID), 0) + 1
        classes.add(str(ds.SOPClassUID))
    probe = dcmread(paths[len(paths) // 2], stop_before_pixels=True)
    return Files(root, paths, studies, sorted(classes), probe)


@contextmanager
def serving(
    command: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Iterator[None]:
    """Run `command`, a server that will listen on `port`, for the length of the block, its
    output to `log`.

    Not common.listening: a start is timed here and some take milliseconds, so this looks every
    5 ms, not 50; a server that exits (a configuration it refuses) fails at once with its log,
    not after a minute; and one that ignores SIGTERM is killed.
    """
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command, env=env, cwd=log.parent, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-600:]
                raise PeerFailed(f"{Path(command[0]).name} did not start: {tail}")
            time.sleep(0.005)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def store_into(port: int, called: str, files: Files) -> float:
    """Seconds DCMTK storescu takes to send every file over one association."""
    started = time.perf_counter()
    done = subprocess.run(
        [tool("storescu"), "-aet", IMPORTER, "-aec", called, "+sd", "+r", "127.0.0.1",
         str(port), str(files.root)],
        capture_output=True, text=True, env=dcmtk_env(), check=False,
    )  # fmt: skip
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise PeerFailed(f"storescu into {called} failed: {done.stderr[-500:]}")
    return took


# --- the servers ------------------------------------------------------------------------------


@contextmanager
def run_fsqr(files: Files, work: Path, destination: int) -> Iterator[tuple[int, float]]:
    peers = {STORESCP_TITLE: {"host": "127.0.0.1", "port": destination}}
    with fsqr_serve(files.root, work, ae_table=peers) as port:
        yield port, 0.0


@contextmanager
def run_dcmqrscp(files: Files, work: Path, destination: int) -> Iterator[tuple[int, float]]:
    store = work / "storage"
    store.mkdir()
    port = free_port()
    config = work / "dcmqrscp.cfg"
    # At most len(paths) studies: dcmqrscp deletes the oldest study beyond its area's limit.
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\n"
        f"HostTable BEGIN\nstorescp = ({STORESCP_TITLE}, 127.0.0.1, {destination})\n"
        "HostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
        f"AETable BEGIN\nDCMQRSCP {store} RW ({len(files.paths)}, 1024mb) ANY\nAETable END\n"
    )
    started = time.perf_counter()
    chunk = 1000  # paths per dcmqridx call: the command line has a length limit
    for first in range(0, len(files.paths), chunk):
        names = [str(p) for p in files.paths[first : first + chunk]]
        done = subprocess.run(
            [tool("dcmqridx"), str(store), *names], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise PeerFailed(f"dcmqridx failed: {done.stderr[-500:]}")
    imported = time.perf_counter() - started
    # Forking per association (its default), as dcmqrscp is run.
    command = [tool("dcmqrscp"), "-c", str(config), str(port)]
    with serving(command, port, work / "dcmqrscp.log", dcmtk_env()):
        yield port, imported


@contextmanager
def run_orthanc(files: Files, work: Path, destination: int) -> Iterator[tuple[int, float]]:
    port, http = free_port(), free_port()
    config = {
        "Name": "fsqr-bench",
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "Plugins": [],
        # Its DICOM port listens on every interface: answer only our AE titles, from here.
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {
            "destination": {"AET": STORESCP_TITLE, "Host": "127.0.0.1", "Port": destination},
            "client": {"AET": CLIENT, "Host": "127.0.0.1", "Port": UNUSED_PORT},
            "importer": {"AET": IMPORTER, "Host": "127.0.0.1", "Port": UNUSED_PORT},
        },
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    executable = orthanc()
    if executable is None:
        raise PeerFailed("Orthanc is not installed")
    with serving([executable, str(path)], port, work / "orthanc.log", dcmtk_env()):
        yield port, store_into(port, "ORTHANC", files)


@contextmanager
def run_qrscp(files: Files, work: Path, destination: int) -> Iterator[tuple[int, float]]:
    port = free_port()
    command = [
        *qrscp_command(work, port, {STORESCP_TITLE: destination}),
        "--bind-address", "127.0.0.1",
    ]  # fmt: skip
    with serving(command, port, work / "qrscp.log"):
        yield port, store_into(port, "QRSCP", files)


# --- the client -------------------------------------------------------------------------------


def associate(
    port: int,
    called: str,
    contexts: list[str],
    on_store: Callable[[Any], int] | None = None,
    storage: list[str] | None = None,
) -> Any:
    """An association of this benchmark's client; with `on_store`, one that also accepts the
    `storage` SOP Classes in the SCP role, for C-GET (SCP/SCU Role Selection, PS3.7 D.3.3.4)."""
    ae = AE(ae_title=CLIENT)
    ae.dimse_timeout = 60  # qrscp takes seconds over a C-MOVE of 50 instances
    ae.acse_timeout = 10  # a release to a server stopped by Ctrl-C waits this, not 30 s
    for context in contexts:
        ae.add_requested_context(context)
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, nodelay)]
    roles: list[Any] = []
    if on_store is not None:
        for uid in storage or []:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            roles.append(build_role(uid, scp_role=True))
        handlers.append((evt.EVT_C_STORE, on_store))
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called, ext_neg=roles or None, evt_handlers=handlers
    )
    if not assoc.is_established:
        raise PeerFailed(f"{called} refused the association")
    return assoc


def study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "*"
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    ds.StudyDate = ""
    return ds


def image_query(probe: Dataset) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = probe.StudyInstanceUID
    ds.SeriesInstanceUID = probe.SeriesInstanceUID
    ds.SOPInstanceUID = probe.SOPInstanceUID
    ds.InstanceNumber = ""
    return ds


def find(assoc: Any, query: Dataset, called: str) -> tuple[set[str], int]:
    """One C-FIND, read to its final response, which must be Success: (the values of the
    query's level's unique key in the matches, how many matches there were)."""
    key = {"STUDY": "StudyInstanceUID", "IMAGE": "SOPInstanceUID"}[query.QueryRetrieveLevel]
    found: set[str] = set()
    answers = 0
    status = None
    for response, identifier in assoc.send_c_find(query, FIND):
        status = response.get("Status") if response is not None else None
        if identifier is not None:
            found.add(str(identifier.get(key, "")))
            answers += 1
    if status != 0:
        raise PeerFailed(f"{called}: C-FIND ended {status} after {answers} matches")
    return found, answers


def expect(found: set[str], wanted: set[str], called: str) -> None:
    if found != wanted:
        raise PeerFailed(f"{called}: C-FIND found {len(found & wanted)} of {len(wanted)}, and"
                         f" {len(found - wanted)} it should not have")  # fmt: skip


def ready(
    server: Server, files: Files, work: Path, destination: int, keep: ExitStack
) -> tuple[float, float, int]:
    """Start `server` inside `keep` (the caller decides how long it runs); (seconds until a
    C-FIND on a new association finds every study, seconds of the import, its port)."""
    started = time.perf_counter()
    port, imported = keep.enter_context(server.run(files, work, destination))
    wanted = set(files.studies)
    while True:  # every server here answers at the first try; one that indexes later would not
        assoc = associate(port, server.title, [FIND])
        try:
            found, _ = find(assoc, study_query(), server.title)
        finally:
            assoc.release()
        if found == wanted:
            return time.perf_counter() - started, imported, port
        if not found < wanted or time.perf_counter() - started > 120:
            expect(found, wanted, server.title)  # a wrong answer, or still missing some
        time.sleep(0.01)


def latencies(port: int, called: str, files: Files, repeats: int) -> dict[str, float]:
    """Median seconds of a C-ECHO and of each C-FIND, in turns on one open association; and,
    as "study answers", how many matches the STUDY query had (one per study, if right)."""
    assoc = associate(port, called, [Verification, FIND])
    studies, image = study_query(), image_query(files.probe)
    answers: list[int] = []

    def echo() -> None:
        if assoc.send_c_echo().get("Status") != 0:
            raise PeerFailed(f"{called}: C-ECHO failed")

    def find_studies() -> None:
        found, count = find(assoc, studies, called)
        expect(found, set(files.studies), called)
        answers.append(count)

    def find_image() -> None:
        expect(find(assoc, image, called)[0], {str(files.probe.SOPInstanceUID)}, called)

    actions: dict[str, Callable[[], object]] = {
        "echo": echo,
        "study": find_studies,
        "image": find_image,
    }
    try:
        interleaved_medians(actions, 5)  # warm-up: first-time code paths on both sides
        return {**interleaved_medians(actions, repeats), "study answers": max(answers)}
    finally:
        assoc.release()


def retrieve(port: int, called: str, files: Files, operation: str) -> float:
    """Seconds from each request to its final response, summed: one C-MOVE (to storescp) or
    C-GET (back to this client) per study, one after another on one association. Every
    sub-operation must complete."""
    received = 0

    def on_store(event: Any) -> int:
        nonlocal received
        received += 1  # the data set is left undecoded: what a receiver costs stays out
        return 0x0000

    if operation == "C-GET":
        assoc = associate(port, called, [GET], on_store, files.sop_classes)
    else:
        assoc = associate(port, called, [MOVE])
    took = 0.0
    try:
        for study, expected in files.studies.items():
            request = Dataset()
            request.QueryRetrieveLevel = "STUDY"
            request.StudyInstanceUID = study
            received = 0
            started = time.perf_counter()
            if operation == "C-GET":
                responses = list(assoc.send_c_get(request, GET))
            else:
                responses = list(assoc.send_c_move(request, STORESCP_TITLE, MOVE))
            took += time.perf_counter() - started
            last = responses[-1][0] if responses else None
            status = last.get("Status") if last is not None else None
            completed = last.get("NumberOfCompletedSuboperations") if last is not None else None
            # The counts are optional in a final response; C-GET's arrivals are counted here.
            arrived = received == expected or operation == "C-MOVE"
            if status != 0 or completed not in (None, expected) or not arrived:
                raise PeerFailed(
                    f"{called}: {operation} of a study ended {status}, {completed} completed,"
                    f" {received} received, of {expected}"
                )
    finally:
        assoc.release()
    return took


# --- the run ----------------------------------------------------------------------------------


@functools.cache
def tool(name: str) -> str:
    """DCMTK's `name`, looked up once, before anything is timed: a lookup runs `name --version`."""
    return dcmtk(name)


def orthanc() -> str | None:
    """Orthanc's executable: Debian puts it in /usr/sbin, which a user's PATH may lack."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")


def first_line(command: list[str]) -> str:
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    return next(iter((out.stdout + out.stderr).strip().splitlines()), "?")


def contenders(args: argparse.Namespace) -> list[Server]:
    """fsqr and the peers installed here; for each one missing, a line saying how to get it."""
    servers = [Server("fsqr", "FSQR", run_fsqr)]
    versions = [f"fsqr {importlib.metadata.version('fsqr')}"]
    if not args.no_dcmqrscp:
        try:
            tool("dcmqrscp")
            tool("dcmqridx")
            servers.append(Server("dcmqrscp", "DCMQRSCP", run_dcmqrscp))
            versions.append(first_line([tool("dcmqrscp"), "--version"]).strip("$ "))
        except SystemExit as missing:  # dcmtk() says what to install
            print(f"  (dcmqrscp left out: {missing})")
    if args.no_orthanc:
        pass
    elif executable := orthanc():
        servers.append(Server("Orthanc", "ORTHANC", run_orthanc))
        versions.append(first_line([executable, "--version"]))
    else:
        print("  (Orthanc left out: not installed; Debian/Ubuntu: apt-get install orthanc)")
    if args.no_qrscp:
        pass
    elif qrscp_can_run():
        servers.append(Server("qrscp", "QRSCP", run_qrscp))
        versions.append(
            f"pynetdicom {importlib.metadata.version('pynetdicom')} qrscp"
            f" (sqlalchemy {importlib.metadata.version('sqlalchemy')})"
        )
    else:
        print("  (qrscp left out: it needs sqlalchemy; pip install sqlalchemy)")
    print("  " + "; ".join(versions))
    return servers


def measure(servers: list[Server], files: Files, work: Path, args: argparse.Namespace) -> None:
    # figures[server][row]: seconds (a median); failures[server][row]: why there is none
    figures: dict[str, dict[str, float]] = {s.name: {} for s in servers}
    failures: dict[str, dict[str, str]] = {s.name: {} for s in servers}
    ports: dict[str, int] = {}
    with ExitStack() as running:
        destination = running.enter_context(storescp())
        print(f"\nReady to query: {args.repeats} start(s) of each, in turns")
        starts: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
        for start in range(args.repeats):
            for server in servers:
                if "ready" in failures[server.name]:
                    continue
                folder = work / f"{server.name}-{start}"
                folder.mkdir()
                try:
                    with ExitStack() as this:
                        total, imported, port = ready(server, files, folder, destination, this)
                        if start == args.repeats - 1:  # the last start serves what follows
                            ports[server.name] = port
                            running.enter_context(this.pop_all())
                except PeerFailed as failure:
                    failures[server.name]["ready"] = str(failure)
                    continue
                starts[server.name].append((total, imported))
                print(f"  {server.name:<9} {total:7.2f} s, of which import {imported:6.2f} s")
        for name, runs in starts.items():
            if runs:
                figures[name]["ready"] = statistics.median(t for t, _ in runs)
                figures[name]["import"] = statistics.median(i for _, i in runs)
                figures[name]["start"] = statistics.median(t - i for t, i in runs)
        live = [s for s in servers if s.name in ports]

        print(f"C-FIND latency: {args.queries} round trips of each, in turns with a C-ECHO")
        for server in live:
            try:
                figures[server.name].update(
                    latencies(ports[server.name], server.title, files, args.queries)
                )
            except PeerFailed as failure:
                failures[server.name]["study"] = str(failure)

        for operation in ("C-MOVE", "C-GET"):
            print(f"{operation}: every study, {args.repeats} time(s), the servers in turns")
            times: dict[str, list[float]] = {s.name: [] for s in live}
            for _ in range(args.repeats):
                for server in live:
                    if operation in failures[server.name]:
                        continue
                    try:
                        times[server.name].append(
                            retrieve(ports[server.name], server.title, files, operation)
                        )
                    except PeerFailed as failure:
                        failures[server.name][operation] = str(failure)
            for name, seconds in times.items():
                if seconds and operation not in failures[name]:
                    figures[name][operation] = statistics.median(seconds)
    report(servers, files, figures, failures)


ROWS = [  # key, label, unit
    ("ready", "ready to query (import + start)", "s"),
    ("import", "  of which the import", "s"),
    ("start", "  of which the start", "s"),
    ("echo", "C-ECHO round trip", "ms"),
    ("study", "C-FIND STUDY PatientName=* ({studies})", "ms"),
    ("image", "C-FIND IMAGE by SOPInstanceUID (1)", "ms"),
    ("C-MOVE", "C-MOVE to storescp, a study at a time", "/s"),
    ("C-GET", "C-GET, a study at a time", "/s"),
]


def report(
    servers: list[Server],
    files: Files,
    figures: dict[str, dict[str, float]],
    failures: dict[str, dict[str, str]],
) -> None:
    ours = figures["fsqr"]
    print(
        f"\n{len(files.paths)} instances in {len(files.studies)} studies, medians. (x): the peer's"
        " seconds over fsqr's, how many times as fast fsqr is; below 1.00x the peer is faster"
    )
    print(f"  {'':42}" + "".join(f"{s.name:>19}" for s in servers))
    for key, label, unit in ROWS:
        cells = []
        for server in servers:
            seconds = figures[server.name].get(key)
            if seconds is None:
                failed = key in failures[server.name] or "ready" in failures[server.name]
                cells.append("failed" if failed else "-")
                continue
            if unit == "/s":
                value = f"{len(files.paths) / seconds:,.0f} /s"
            elif unit == "ms":
                value = f"{seconds * 1000:.2f} ms"
            elif key == "import" and seconds == 0:
                value = "none"
            else:
                value = f"{seconds:.2f} s"
            base = ours.get(key)
            if server.name != "fsqr" and key not in ("import", "start") and base:
                value += f" ({seconds / base:.2f}x)"
            cells.append(value)
        name = label.format(studies=len(files.studies))
        print(f"  {name:42}" + "".join(f"{cell:>19}" for cell in cells))
    for server in servers:
        count = figures[server.name].get("study answers", len(files.studies))
        if count != len(files.studies):
            print(
                f"  {server.name} answered the STUDY query with {count:.0f} matches for"
                f" {len(files.studies)} studies, the same study again and again: its C-FIND row"
                " measures that"
            )
    for name, why in failures.items():
        for key, message in why.items():
            print(f"  {name} {key} failed: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="how many (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="starts and retrieves each (3)")
    parser.add_argument("--queries", type=int, default=100, help="round trips of each (100)")
    parser.add_argument("--quick", action="store_true", help="200 instances, 1 repeat, 20 queries")
    parser.add_argument("--no-dcmqrscp", action="store_true", help="leave DCMTK dcmqrscp out")
    parser.add_argument("--no-orthanc", action="store_true", help="leave Orthanc out")
    parser.add_argument("--no-qrscp", action="store_true", help="leave pynetdicom's qrscp out")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.repeats, args.queries = 200, 1, 20
    load = os.getloadavg()[0]
    print(f"fsqr and its peers on 127.0.0.1, {os.cpu_count()} cores, load average {load:.2f}")
    for needed in ("storescp", "storescu"):  # the destination and the importer: not optional
        tool(needed)
    servers = contenders(args)
    with (
        tempfile.TemporaryDirectory(prefix="fsqr-bench-peers-") as tmp,
        pynetdicom_keeps_its_responses(),  # the client's own race would stall it now and then
    ):
        work = Path(tmp)
        started = time.perf_counter()
        write_tree_of_about(work / "files", args.instances)
        files = survey(work / "files")
        size = sum(p.stat().st_size for p in files.paths)
        print(
            f"  {len(files.paths)} instances of 16 x 16, {size / len(files.paths) / 1024:.1f} KiB"
            f" each, written in {time.perf_counter() - started:.1f} s"
        )
        measure(servers, files, work, args)
    print(f"  (load average {os.getloadavg()[0]:.2f} at the end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
