"""The command line. `fsqr serve [DIR]` reads the config, sets up logging and runs a `Server`
until Ctrl-C or SIGTERM; `fsqr ls [DIR]` shows what a folder holds, as the server would serve it.

Exit codes: 0 done (`ls`: and no problem found), 1 `ls` found problems or skipped files,
2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from types import FrameType

from fsqr.config import Config, ConfigError, load_config, with_overrides

# The server and the inventory (and with them pydicom and pynetdicom) are imported by the
# command that runs them, not here: the start-up scan's worker processes import the `fsqr`
# script's main module first (multiprocessing does, to find what it runs), and a worker that
# had to import all of fsqr took 0.6 s to start instead of 0.3 s.

log = logging.getLogger("fsqr")

DEFAULT_CONFIG = Path("fsqr.yaml")
EXIT_OK = 0
EXIT_FOUND_PROBLEMS = 1
EXIT_USAGE = 2
EXPLAIN_LOGGER = "fsqr.explain"  # fsqr/explain.py's logger


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsqr", description="A filesystem-only DICOM Query/Retrieve server."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('fsqr')}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="index a folder and serve it over DICOM",
        description="Index a folder and serve it over DICOM: C-ECHO, C-FIND, C-MOVE, C-GET and "
        f"C-STORE. Settings come from ./{DEFAULT_CONFIG} when present (see the commented "
        "example); the options below override it.",
    )
    serve.add_argument("root", nargs="?", type=Path, help="folder to serve (overrides `root`)")
    serve.add_argument(
        "--config", type=Path, help=f"YAML config file (default: ./{DEFAULT_CONFIG} if present)"
    )
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    serve.add_argument("--ae-title", help="our AE title")
    serve.add_argument(
        "--explain",
        action="store_true",
        help="narrate each DICOM network step in plain words, citing the Standard "
        "(docs/how-a-c-move-works.md); patient names and IDs only with -v",
    )
    loudness = serve.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per line, for log collectors",
    )
    ls = commands.add_parser(
        "ls",
        help="show what a folder holds as fsqr would serve it, and lint it",
        description="Show what a folder holds as fsqr would serve it (patients, studies, "
        "series, the files it would skip and why), and lint it; exits 1 if it found a problem.",
    )
    ls.add_argument("root", nargs="?", type=Path, default=Path("."), help="folder to look at")
    ls.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def _settings_source(args: argparse.Namespace) -> str:
    """Where `fsqr serve`'s settings come from, as an error names it."""
    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return f"{path or 'the defaults'} and the command line"


def _config(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    config = load_config(path)
    log_level = "debug" if args.verbose else "warning" if args.quiet else None
    return with_overrides(
        config,
        _settings_source(args),  # what an error names
        root=args.root,
        host=args.host,
        port=args.port,
        ae_title=args.ae_title,
        log_level=log_level,
    )


class JsonLines(logging.Formatter):
    """One JSON object per log record: time, level, logger, message (and exception).

    A request's line also holds its record as `operation` (fsqr/operations.py), and the line
    that ends an association its summary as `association`: for scripts and CI to assert on.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            # UTC to the millisecond, with its zone, as each operation's `started` is.
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for structured in ("operation", "association"):  # fsqr/operations.py, handlers.py
            if structured in record.__dict__:
                entry[structured] = record.__dict__[structured]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(level: str, log_format: str = "text", *, explain: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if level != "debug":
        # pynetdicom logs every PDU and DIMSE message at info; fsqr logs one line per operation.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        handler.addFilter(one_line_from_pynetdicom)
        # pydicom warns of each odd value a peer sends (a UID that is not one, say), on stderr
        # outside the log's format; fsqr says what it does about it. Shown with -v debug.
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
    # fsqr/explain.py narrates each DIMSE step at INFO: shown with --explain (even with -q),
    # with patient names and IDs when -v; otherwise off, and then it costs nothing.
    narration = logging.DEBUG if level == "debug" else logging.INFO
    logging.getLogger(EXPLAIN_LOGGER).setLevel(narration if explain else logging.WARNING)


def one_line_from_pynetdicom(record: logging.LogRecord) -> bool:
    """A pynetdicom record with a traceback, as one line: what a malformed PDU costs in the
    log (some 40 lines and two tracebacks before) when fsqr has its own line saying what
    happened. Tracebacks are kept with -v debug, which has no such filter.

    >>> try:
    ...     raise ValueError("'context_id' must be an odd integer")
    ... except ValueError as exc:
    ...     record = logging.LogRecord("pynetdicom.dul", 40, "", 0, exc, None, sys.exc_info())
    >>> one_line_from_pynetdicom(record), record.getMessage(), record.exc_info
    (True, "ValueError: 'context_id' must be an odd integer", None)
    """
    if record.exc_info and record.name.startswith("pynetdicom"):
        _, exc, _ = record.exc_info
        message = record.getMessage()
        said = f"{type(exc).__name__}: {exc}"
        record.msg, record.args = (said if message == str(exc) else f"{message} ({said})"), ()
        record.exc_info, record.exc_text = None, None
    return True


def _terminal_progress(done: int, total: int) -> None:
    sys.stderr.write(f"\rindexing: {done}/{total} files")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _serve(config: Config, source: str) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from fsqr.server import Server  # noqa: PLC0415 - see the imports

    progress = _terminal_progress if sys.stderr.isatty() else None
    try:
        # The JSON log is the record of operations here; none is kept in memory.
        server = Server(config, progress=progress, keep_operations=0).start()
    except (FileNotFoundError, OSError) as exc:
        log.error("cannot start: %s (settings from %s)", exc, source)
        return EXIT_USAGE
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return EXIT_OK


def _ls(root: Path, as_json: bool) -> int:
    if not root.is_dir():
        print(f"fsqr: {root} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    from fsqr.inventory import take_inventory  # noqa: PLC0415 - see the imports

    inventory = take_inventory(root)
    if as_json:
        print(json.dumps(inventory.as_json(), indent=2, ensure_ascii=False))
    else:
        print(inventory.as_text())
    return EXIT_FOUND_PROBLEMS if inventory.problems or inventory.skipped else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ls":
        return _ls(args.root, args.json)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"fsqr: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(config.log_level, args.log_format, explain=args.explain)
    return _serve(config, _settings_source(args))


if __name__ == "__main__":
    raise SystemExit(main())
