"""What every benchmark needs: DCMTK's tools, free ports, `fsqr serve` in its own process, and
the arithmetic of medians and percentiles. The scripts beside this file import it (they are run
as `python benchmarks/bench_x.py`, so this folder is on the import path)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


def dcmtk(tool: str) -> str:
    """DCMTK's `tool`, not pynetdicom's Python script of the same name that may come first."""
    for path in [shutil.which(tool), f"/usr/bin/{tool}"]:
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return path
    raise SystemExit(f"DCMTK's {tool} is needed (Debian/Ubuntu: apt-get install dcmtk)")


def qrscp_can_run() -> bool:
    """Whether pynetdicom's qrscp app can run here: it needs sqlalchemy, which fsqr does not."""
    return importlib.util.find_spec("sqlalchemy") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def nodelay(event: Any) -> None:
    """EVT_CONN_OPEN for a benchmark's own client: no Nagle, so neither side waits on it."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextmanager
def fsqr_serve(root: Path, work: Path, **settings: Any) -> Iterator[int]:
    """`fsqr serve` over `root` in its own process, as users run it; yields its port.

    `settings` are keys of fsqr.yaml. Its log goes to `work/fsqr.log`: a pipe nobody reads
    would fill up and stall it.
    """
    config = work / "fsqr.yaml"
    config.write_text(
        yaml.safe_dump({"root": str(root), "host": "127.0.0.1", "port": 0, **settings})
    )
    log = work / "fsqr.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "fsqr", "serve", "--config", str(config)], stderr=sink
        )
    try:
        port = 0
        deadline = time.monotonic() + 120
        while not port and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"listening on [\d.]+:(\d+)", log.read_text())
            port = int(found[1]) if found else 0
            time.sleep(0.02)
        if not port:
            raise SystemExit(f"fsqr serve did not start: {log.read_text()[-500:]}")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_medians(actions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each action, timed in turns (a, b, c, a, b, c, ...): on a machine
    whose speed drifts (shared cores, CPU steal), every action then meets the same drift, and
    the ratios between them hold where back-to-back series of each would not."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            started = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@contextmanager
def listening(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run `command`, a peer that listens on `port`, for the length of the block; yields it."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def dcmtk_env() -> dict[str, str]:
    """DCMTK switches Nagle off only when asked, through its environment."""
    return {**os.environ, "TCP_NODELAY": "1"}


def qrscp_command(work: Path, port: int, peers: dict[str, int] | None = None) -> list[str]:
    """pynetdicom's qrscp app on `port`, its database and files under `work`, knowing `peers`
    (AE title -> port on 127.0.0.1) as move destinations."""
    config = work / "qrscp.ini"
    config.write_text(
        "[DEFAULT]\n    ae_title: QRSCP\n    port: 11112\n    max_pdu: 16382\n"
        "    acse_timeout: 30\n    dimse_timeout: 30\n    network_timeout: 30\n"
        "    bind_address:\n    instance_location: instances\n"
        "    database_location: instances.sqlite\n    log_identifier: False\n"
        + "".join(
            f"[{title}]\n    address: 127.0.0.1\n    port: {peer}\n"
            for title, peer in (peers or {}).items()
        )
    )
    return [
        sys.executable, "-m", "pynetdicom", "qrscp", "-q", "-c", str(config), "--port", str(port),
        "--database-location", str(work / "qrscp.sqlite"),
        "--instance-location", str(work / "qrscp-instances"),
    ]  # fmt: skip
