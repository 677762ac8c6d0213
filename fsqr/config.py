"""fsqr.yaml → frozen, validated settings; a `ConfigError` names the file and the dotted key.

The settings are the dataclasses below. Each field's default is the documented default, and its
`check` (dataclass field metadata) is the only rule for that key, so the key list, the defaults
and the validation are stated once. `load_config` reads one YAML file, `config_from_mapping`
validates the same keys given by a caller (the CLI, the embeddable `Server`), and
`with_overrides` lays command-line flags over a config. Every key is optional; a key set to
nothing (`port:` or `port: null`) is the same as a key left out; an unknown key, at any depth,
is an error that names it and suggests the key that was probably meant.

YAML is read with YAML 1.2 booleans (only `true` and `false`), so `watch: off` is the word
"off" and `read_only: yes` is an error rather than a silent True. A key written twice is an
error. This module reads the config file and nothing else: no sockets, no served files, no
pynetdicom.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import string
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

LogLevel = Literal["debug", "info", "warning", "error"]
WatchMode = Literal["native", "polling", "off"]
OnDuplicate = Literal["replace", "keep", "reject"]
Operation = Literal["echo", "find", "move", "get", "store"]  # what a caller may be allowed to do
Callers = Literal["any", "known"]
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
WATCH_MODES: tuple[WatchMode, ...] = get_args(WatchMode)
ON_DUPLICATE: tuple[OnDuplicate, ...] = get_args(OnDuplicate)
OPERATIONS: tuple[Operation, ...] = get_args(Operation)
CALLERS: tuple[Callers, ...] = get_args(Callers)

DEFAULT_LAYOUT = "incoming/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
MAX_PDU_LIMIT = 2**32 - 1  # PS3.8 D.1: Maximum Length Received is a 32-bit unsigned integer
MIN_MAX_PDU = 4096  # below this every DIMSE message is split into many PDUs: surely a mistake
DEFAULT_MAX_PDU = 16382  # pynetdicom's DEFAULT_MAX_LENGTH, stated here to keep pynetdicom out

T = TypeVar("T")
D = TypeVar("D", bound="DataclassInstance")


class ConfigError(Exception):
    """The configuration cannot be used; the message starts with the file (or source) name and
    names the dotted key, e.g. `fsqr.yaml: ae_table.STORESCP.port: must be ...`.

    The message is meant for the user as it stands: the CLI prints `str(exc)` and exits 2.
    """


@dataclass(frozen=True, slots=True)
class _At:
    """Where a value was found: the file (or source) and the dotted key leading to it."""

    source: str
    key: str = ""

    def child(self, name: str) -> _At:
        """The place of key `name` inside this one.

        >>> _At("fsqr.yaml").child("timeouts").child("acse").key
        'timeouts.acse'
        """
        return _At(self.source, f"{self.key}.{name}" if self.key else name)

    def error(self, problem: str) -> ConfigError:
        """A `ConfigError` about the value at this place.

        >>> str(_At("fsqr.yaml", "port").error("must be an integer"))
        'fsqr.yaml: port: must be an integer'
        """
        return ConfigError(
            f"{self.source}: {self.key}: {problem}" if self.key else f"{self.source}: {problem}"
        )


Check = Callable[[Any, _At], T]  # validates one value found at a place; returns it normalised
_CHECK = "check"  # the dataclass field metadata key holding a field's Check


def _shown(value: object) -> str:
    """A value as an error message shows it: its repr, cut short.

    >>> _shown("abc"), _shown(list(range(40)))[-8:], len(_shown(list(range(40))))
    ("'abc'", '5, 16...', 60)
    """
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- checks of single values ----------------------------------------------------------------


def _integer(low: int, high: int | None = None) -> Check[int]:
    """A check for an integer from `low` to `high` (no upper bound when `high` is None).

    A YAML or Python bool is not an integer here, though Python says `True == 1`.
    """
    wanted = (
        f"an integer from {low} to {high}" if high is not None else f"an integer of {low} or more"
    )

    def check(value: Any, at: _At) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise at.error(f"must be {wanted}, got {_shown(value)}")
        if value < low or (high is not None and value > high):
            raise at.error(f"must be {wanted}, got {value}")
        return value

    return check


def _seconds(value: Any, at: _At) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise at.error(f"must be a number of seconds, got {_shown(value)}")
    if not (value > 0 and math.isfinite(value)):
        raise at.error(f"must be a positive number of seconds, got {value}")
    return float(value)


def _boolean(value: Any, at: _At) -> bool:
    if not isinstance(value, bool):
        raise at.error(f"must be true or false, got {_shown(value)}")
    return value


def _one_of(choices: tuple[str, ...]) -> Check[Any]:
    """A check for one of `choices`, in any letter case; returns it in lower case."""

    def check(value: Any, at: _At) -> str:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise at.error(f"must be one of {', '.join(choices)}; got {_shown(value)}")

    return check


def _host(value: Any, at: _At) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise at.error(f"must be a host name or IP address, got {_shown(value)}")
    return value


def _folder(value: Any, at: _At) -> Path:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text:
        raise at.error(f"must be the path of a folder, got {_shown(value)}")
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:  # `~` without a home directory
        raise at.error(f"cannot expand {text!r}: {exc}") from exc


# PS3.5 6.2, AE VR: at most 16 characters of the default repertoire (printable ASCII here),
# no backslash (5CH), no control characters; leading and trailing spaces are not significant,
# and a value of spaces only shall not be used.
_AE_CHARACTERS = re.compile(r"[ -\[\]-~]*")


def _ae_title_problem(title: str) -> str | None:
    """Why `title`, already stripped of spaces, is not a valid AE title, or None if it is.

    >>> _ae_title_problem("STORESCP") is None
    True
    >>> _ae_title_problem("MÜNCHEN")
    "must hold only printable ASCII characters other than a backslash, got 'MÜNCHEN'"
    """
    if not title:
        return "must be 1 to 16 characters, not empty or only spaces"
    if len(title) > 16:
        return f"must be at most 16 characters, got {title!r} ({len(title)})"
    if not _AE_CHARACTERS.fullmatch(title):
        return f"must hold only printable ASCII characters other than a backslash, got {title!r}"
    return None


def _ae_title(value: Any, at: _At) -> str:
    if not isinstance(value, str):
        raise at.error(f"must be an AE title (text), got {_shown(value)}")
    title = value.strip(" ")
    problem = _ae_title_problem(title)
    if problem:
        raise at.error(problem)
    return title


def _layout(value: Any, at: _At) -> str:
    """A storage layout: a relative path with `{Keyword}` fields, one of them SOPInstanceUID."""
    if not isinstance(value, str) or not value:
        raise at.error(f"must be a path template like {DEFAULT_LAYOUT!r}, got {_shown(value)}")
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise at.error(f"is not a valid template ({exc}): {value!r}") from exc
    names = [name for _, name, _, _ in parts if name is not None]
    for _, name, spec, conversion in parts:
        if name is not None and (
            spec or conversion or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name)
        ):
            raise at.error(f"fields must be plain DICOM keywords like {{PatientID}}, got {value!r}")
    if "SOPInstanceUID" not in names:
        raise at.error(
            f"must contain {{SOPInstanceUID}}, so that each instance has its own file: {value!r}"
        )
    # pydicom only here: the rest of the configuration is checked without it.
    from pydicom.datadict import keyword_dict  # noqa: PLC0415

    for name in names:
        if name not in keyword_dict:  # a misspelt field would name every folder "_"
            close = difflib.get_close_matches(name, keyword_dict, n=1)
            hint = f" (did you mean {{{close[0]}}}?)" if close else ""
            raise at.error(f"{{{name}}} is not a DICOM keyword{hint}: {value!r}")
    path = PurePosixPath(value.format_map({name: "x" for name in names}))
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise at.error(f"must be a relative path inside the root, without '..': {value!r}")
    return value


def _operations(value: Any, at: _At) -> tuple[Operation, ...]:
    """A list of operations (any letter case), returned in the order of `OPERATIONS`.

    >>> _operations(["Move", "find"], _At("f"))
    ('find', 'move')
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise at.error(f"must be a list of {', '.join(OPERATIONS)}; got {_shown(value)}")
    named = {_one_of(OPERATIONS)(item, at) for item in value}
    return tuple(op for op in OPERATIONS if op in named)


def _file(value: Any, at: _At) -> Path:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text:
        raise at.error(f"must be the path of a file, got {_shown(value)}")
    return Path(text).expanduser()


def _max_pdu(value: Any, at: _At) -> int:
    """0 (no limit, PS3.8 D.1) or a size in bytes from `MIN_MAX_PDU` up."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value == 0 or MIN_MAX_PDU <= value <= MAX_PDU_LIMIT)
    ):
        return value
    wanted = f"0 (no limit) or an integer from {MIN_MAX_PDU} to {MAX_PDU_LIMIT}"
    raise at.error(f"must be {wanted}, got {_shown(value)}")


# --- the settings -----------------------------------------------------------------------------


def _section(cls: type[D]) -> Check[D]:
    """A check for a nested mapping that becomes a `cls` (a `cls` is checked field by field)."""

    def check(value: Any, at: _At) -> D:
        if isinstance(value, cls):
            value = _fields_of(value)
        return _from_mapping(cls, value, at)

    return check


@dataclass(frozen=True, slots=True)
class Peer:
    """An application entity we know: where to open an association to reach it."""

    ae_title: str  # the key in `ae_table`, stripped of leading and trailing spaces
    host: str = field(metadata={_CHECK: _host})
    port: int = field(metadata={_CHECK: _integer(1, 65535)})
    # what this AE may ask of us, when it is the calling AE of an association
    allow: tuple[Operation, ...] = field(default=OPERATIONS, metadata={_CHECK: _operations})
    # C-MOVE sub-associations to this AE use TLS (fsqr's `tls` settings)
    tls: bool = field(default=False, metadata={_CHECK: _boolean})
    # C-MOVE to this AE sends over this many sub-associations at once
    associations: int = field(default=1, metadata={_CHECK: _integer(1, 16)})


@dataclass(frozen=True, slots=True, eq=False)
class AETable(Mapping[str, Peer]):
    """The peers we know, by AE title: an immutable, hashable, picklable mapping.

    Lookup is exact; `Config.peer` also ignores leading and trailing spaces.

    >>> table = AETable((Peer("STORESCP", "127.0.0.1", 11113),))
    >>> table["STORESCP"].port, "OTHER" in table, list(table)
    (11113, False, ['STORESCP'])
    """

    peers: tuple[Peer, ...] = ()

    def __post_init__(self) -> None:
        titles = [peer.ae_title for peer in self.peers]
        if len(set(titles)) != len(titles):
            raise ValueError(f"AE titles must be unique, got {titles}")

    def __getitem__(self, ae_title: str) -> Peer:
        for peer in self.peers:  # a handful of peers: a scan beats keeping a dict in step
            if peer.ae_title == ae_title:
                return peer
        raise KeyError(ae_title)

    def __iter__(self) -> Iterator[str]:
        return (peer.ae_title for peer in self.peers)

    def __len__(self) -> int:
        return len(self.peers)

    def __hash__(self) -> int:  # equal as mappings (in any order) ⇒ equal hashes
        return hash(frozenset(self.peers))


def _ae_table(value: Any, at: _At) -> AETable:
    if isinstance(value, AETable):
        value = {peer.ae_title: peer for peer in value.peers}
    if not isinstance(value, Mapping):
        raise at.error(f"must map AE titles to {{host: ..., port: ...}}, got {_shown(value)}")
    peers: dict[str, Peer] = {}
    for key, entry in value.items():
        entry_at = at.child(str(key))
        if not isinstance(key, str):  # YAML reads `104:` as a number, `007:` as octal 7
            raise entry_at.error(f"an AE title must be text: write it in quotes, like '{key}'")
        title = _ae_title(key, entry_at)
        if title in peers:
            raise entry_at.error(
                f"{title!r} is given twice (spaces around an AE title do not count)"
            )
        if isinstance(entry, Peer) and entry.ae_title.strip(" ") != title:
            raise entry_at.error(f"holds a Peer named {entry.ae_title!r}")
        keys = (
            {k: v for k, v in _fields_of(entry).items() if k != "ae_title"}
            if isinstance(entry, Peer)
            else entry
        )
        peers[title] = _from_mapping(Peer, keys, entry_at, ae_title=title)
    return AETable(tuple(peers.values()))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait, each more than 0.

    `acse`, `dimse` and `network` are pynetdicom's timeouts of those names; `connect` is its
    `connection_timeout`; `store_response` is fsqr's own, for its C-STORE sub-operations.
    """

    # an association request, accept or release
    acse: float = field(default=30.0, metadata={_CHECK: _seconds})
    # one DIMSE message
    dimse: float = field(default=30.0, metadata={_CHECK: _seconds})
    # a C-STORE sub-operation's response, once its request is sent; then a C-MOVE sends that
    # instance again over a new association
    store_response: float = field(default=10.0, metadata={_CHECK: _seconds})
    # an association with no traffic at all for this long is closed
    network: float = field(default=60.0, metadata={_CHECK: _seconds})
    # the TCP connect that opens a C-MOVE sub-association
    connect: float = field(default=10.0, metadata={_CHECK: _seconds})


@dataclass(frozen=True, slots=True)
class Access:
    """Who may associate, and what callers not in `ae_table` may do (`Peer.allow` for the rest).

    A calling AE title is a claim anyone can make; `check_address` ties it to a host.
    """

    # any = every calling AE title; known = only the AE titles in ae_table
    callers: Callers = field(default="any", metadata={_CHECK: _one_of(CALLERS)})
    # a caller named in ae_table must connect from an address its `host` resolves to
    check_address: bool = field(default=False, metadata={_CHECK: _boolean})
    # the Called AE Title of an association request must be our ae_title
    require_called_ae_title: bool = field(default=False, metadata={_CHECK: _boolean})
    # what a calling AE that is not in ae_table may do (with callers: any)
    allow: tuple[Operation, ...] = field(default=OPERATIONS, metadata={_CHECK: _operations})


@dataclass(frozen=True, slots=True)
class Tls:
    """DICOM TLS (PS3.15 B.9, BCP 195): the server's certificate, and whose certificates we trust.

    Without `certificate` and `key` fsqr listens without TLS. With `ca`, every caller must show a
    certificate signed by it (mutual TLS), and C-MOVE destinations with `tls: true` are checked
    against it (else against the system's trusted certificates).
    """

    certificate: Path | None = field(default=None, metadata={_CHECK: _file})  # PEM, with chain
    key: Path | None = field(default=None, metadata={_CHECK: _file})  # PEM, unencrypted
    ca: Path | None = field(default=None, metadata={_CHECK: _file})  # PEM bundle of CAs


def _tls(value: Any, at: _At) -> Tls:
    tls = _section(Tls)(value, at)
    if (tls.certificate is None) != (tls.key is None):
        raise at.error("certificate and key must be given together")
    return tls


@dataclass(frozen=True, slots=True)
class Storage:
    """Where and how instances received by C-STORE are written under the root."""

    # a path under the root; `{Keyword}` is that attribute's value in the received instance
    layout: str = field(default=DEFAULT_LAYOUT, metadata={_CHECK: _layout})
    # what to do when a received SOP Instance UID is already stored
    on_duplicate: OnDuplicate = field(default="replace", metadata={_CHECK: _one_of(ON_DUPLICATE)})
    # fsync each received file and its folder before answering Success (false: faster, but an
    # instance acknowledged just before a power cut may be lost, never served half)
    fsync: bool = field(default=True, metadata={_CHECK: _boolean})


# --- faults: misbehaving on purpose (fsqr/faults.py applies them) ----------------------------

ABORTABLE: tuple[Operation, ...] = ("find", "move", "get")  # what has steps to count
MAX_ERROR_COMMENT = 64  # PS3.7 C.4: Error Comment (0000,0902) is LO, at most 64 characters
DEFAULT_FAULT_COMMENT = "fault injected by fsqr (faults: in fsqr.yaml)"


def _dimse_status(value: Any, at: _At) -> int:
    """A status written as DICOM writes it, 4 hex digits (`"A700"`), other than success and
    pending. An integer is refused: YAML reads `0124` as octal 84, a status nobody meant.

    >>> hex(_dimse_status("a700", _At("f")))
    '0xa700'
    """
    if isinstance(value, str) and re.fullmatch(r"[0-9A-Fa-f]{4}", value):
        code = int(value, 16)
        if code in (0x0000, 0xFF00, 0xFF01):
            raise at.error(f"must be a failure, warning or cancel status, not {value}")
        return code
    raise at.error(
        f"must be a status as 4 hex digits in quotes, like 'A700' or '0124'; got {_shown(value)}"
    )


def _error_comment(value: Any, at: _At) -> str:
    if not isinstance(value, str) or len(value) > MAX_ERROR_COMMENT or "\\" in value:
        wanted = f"text of at most {MAX_ERROR_COMMENT} characters, without a backslash"
        raise at.error(f"must be {wanted} (an Error Comment is LO); got {_shown(value)}")
    return value


@dataclass(frozen=True, slots=True)
class FaultRule:
    """A way to misbehave on purpose, for testing the clients of a PACS (fsqr/faults.py)."""

    operation: Operation = field(metadata={_CHECK: _one_of(OPERATIONS)})
    caller: str | None = field(default=None, metadata={_CHECK: _ae_title})  # None: any caller
    # answer this status (and comment) instead of serving the request
    status: int | None = field(default=None, metadata={_CHECK: _dimse_status})
    comment: str | None = field(default=None, metadata={_CHECK: _error_comment})
    # milliseconds to wait before each response (echo, find, store) or sub-operation (move, get)
    delay_ms: int = field(default=0, metadata={_CHECK: _integer(0, 600_000)})
    # A-ABORT the association after this many matches (find) or sub-operations (move, get)
    abort_after: int | None = field(default=None, metadata={_CHECK: _integer(0)})


def _fault_rule(value: Any, at: _At) -> FaultRule:
    if isinstance(value, FaultRule):
        value = _fields_of(value)
        if value["status"] is not None:
            value["status"] = f"{value['status']:04X}"
    rule = _from_mapping(FaultRule, value, at)
    if rule.comment is not None and rule.status is None:
        raise at.child("comment").error("is the Error Comment of a status: give status too")
    if rule.abort_after is not None:
        if rule.status is not None:
            raise at.child("abort_after").error("cannot go with status: nothing is sent then")
        if rule.operation not in ABORTABLE:
            raise at.child("abort_after").error(
                f"counts matches (find) or sub-operations (move, get), not {rule.operation}"
            )
    if rule.status is None and not rule.delay_ms and rule.abort_after is None:
        raise at.error("does nothing: give it a status, a delay_ms or an abort_after")
    return rule


def _fault_rules(value: Any, at: _At) -> tuple[FaultRule, ...]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)):
        raise at.error(
            f"must be a list of rules like {{operation: find, status: 'A700'}}; got {_shown(value)}"
        )
    return tuple(
        _fault_rule(rule, _At(at.source, f"{at.key}[{i}]")) for i, rule in enumerate(value)
    )


@dataclass(frozen=True, slots=True)
class Config:
    """All of fsqr's settings; `fsqr.yaml` at the top of the repository documents each key.

    >>> pacs = {"host": "pacs", "port": 104}
    >>> config = config_from_mapping({"port": 104, "ae_table": {" PACS ": pacs}})
    >>> config.port, config.ae_title, config.peer("PACS").host, config.peer("PACS").allow
    (104, 'FSQR', 'pacs', ('echo', 'find', 'move', 'get', 'store'))
    """

    ae_title: str = field(default="FSQR", metadata={_CHECK: _ae_title})
    host: str = field(default="0.0.0.0", metadata={_CHECK: _host})
    port: int = field(default=11112, metadata={_CHECK: _integer(0, 65535)})  # 0 = any free port
    root: Path = field(default=Path("."), metadata={_CHECK: _folder})
    ae_table: AETable = field(default=AETable(), metadata={_CHECK: _ae_table})
    log_level: LogLevel = field(default="info", metadata={_CHECK: _one_of(LOG_LEVELS)})
    scan_workers: int = field(default=0, metadata={_CHECK: _integer(0)})  # 0 = one per CPU core
    relational_queries: bool = field(default=True, metadata={_CHECK: _boolean})
    timeouts: Timeouts = field(default=Timeouts(), metadata={_CHECK: _section(Timeouts)})
    max_associations: int = field(default=32, metadata={_CHECK: _integer(1)})
    max_pdu: int = field(default=DEFAULT_MAX_PDU, metadata={_CHECK: _max_pdu})
    watch: WatchMode = field(default="native", metadata={_CHECK: _one_of(WATCH_MODES)})
    poll_interval: float = field(default=2.0, metadata={_CHECK: _seconds})
    storage: Storage = field(default=Storage(), metadata={_CHECK: _section(Storage)})
    # a folder of Modality Worklist items (.wl/.dcm); None = no worklist service
    worklist: Path | None = field(default=None, metadata={_CHECK: _folder})
    read_only: bool = field(default=False, metadata={_CHECK: _boolean})
    allow_get_without_role_selection: bool = field(default=False, metadata={_CHECK: _boolean})
    access: Access = field(default=Access(), metadata={_CHECK: _section(Access)})
    tls: Tls = field(default=Tls(), metadata={_CHECK: _tls})
    # C-FIND: at most this many matches are sent, then A700 (Out of Resources); 0 = no limit
    max_find_responses: int = field(default=10000, metadata={_CHECK: _integer(0)})
    # misbehave on purpose, for testing clients: the first rule that fits a request applies
    faults: tuple[FaultRule, ...] = field(default=(), metadata={_CHECK: _fault_rules})
    # a file outside the root to keep the index in between runs (snapshot.py); None = cold scan
    index_snapshot: Path | None = field(default=None, metadata={_CHECK: _file})

    def peer(self, ae_title: str) -> Peer | None:
        """The peer called `ae_title`, ignoring leading and trailing spaces (PS3.5 6.2, AE).

        >>> config = config_from_mapping({"ae_table": {"STORESCP": {"host": "h", "port": 1}}})
        >>> config.peer("STORESCP  ") == Peer("STORESCP", "h", 1)
        True
        """
        return self.ae_table.get(ae_title.strip(" "))


# --- mappings → settings ----------------------------------------------------------------------


def _fields_of(instance: DataclassInstance) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in fields(instance)}


def _reject_unknown(data: Mapping[Any, Any], known: list[str], at: _At) -> None:
    """Raise naming the first unknown key of `data` (and any others), with a likely meant key."""
    unknown = [key for key in data if key not in known]
    if not unknown:
        return
    first = str(unknown[0])
    lowered = {name.lower(): name for name in known}
    close = difflib.get_close_matches(first.lower(), lowered, n=3)
    close.sort(key=lambda name: sorted(name) != sorted(first.lower()))  # swapped letters first
    hint = f" (did you mean {lowered[close[0]]!r}?)" if close else ""
    others = "".join(f"; {at.child(str(key)).key} is unknown too" for key in unknown[1:])
    raise at.child(first).error(f"unknown key{hint}{others}")


def _from_mapping(cls: type[D], data: Any, at: _At, **given: Any) -> D:
    """Build a `cls` from the keys of `data`, each checked by its field's `check`."""
    if not isinstance(data, Mapping):
        names = ", ".join(f.name for f in fields(cls) if _CHECK in f.metadata)
        raise at.error(f"must be a mapping with the keys {names}; got {_shown(data)}")
    settable = {f.name: f for f in fields(cls) if _CHECK in f.metadata}
    _reject_unknown(data, list(settable), at)
    values = dict(given)
    for name, spec in settable.items():
        value = data.get(name)
        if value is not None:
            values[name] = spec.metadata[_CHECK](value, at.child(name))
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise at.child(name).error("is missing")
    return cls(**values)


def config_from_mapping(data: Mapping[str, Any], source: str = "<arguments>") -> Config:
    """Validate `data` as the keys of fsqr.yaml; `source` starts every error message.

    Nested values may be given as the dataclasses themselves (`Timeouts`, `Storage`, `Access`,
    `Tls`, `AETable`, a `Peer` per AE title) as well as mappings. A relative `root` stays relative
    (to the working directory).

    >>> config_from_mapping({"prot": 104})
    Traceback (most recent call last):
    ...
    fsqr.config.ConfigError: <arguments>: prot: unknown key (did you mean 'port'?)
    """
    return _checked_together(_from_mapping(Config, data, _At(source)), _At(source))


def _checked_together(config: Config, at: _At) -> Config:
    """The rules that tie one key to another, once every path is as it will be used."""
    snapshot = config.index_snapshot
    if snapshot is not None:
        root = os.path.realpath(config.root).rstrip(os.sep) + os.sep
        if (os.path.realpath(snapshot) + os.sep).startswith(root):  # the root itself, or below
            raise at.child("index_snapshot").error(
                f"must be outside the served root {str(config.root)!r}: fsqr writes nothing "
                "into the tree it serves"
            )
    return config


def with_overrides(config: Config, source: str = "<arguments>", **overrides: Any) -> Config:
    """`config` with the keys in `overrides` replaced, validated; a None value is "not given".
    An error names `source`: where the merged settings came from.

    A mapping given for `timeouts`, `storage`, `access` or `tls` changes only the keys it names;
    `ae_table` is replaced as a whole.

    >>> base = config_from_mapping({"port": 104, "host": "127.0.0.1"})
    >>> new = with_overrides(base, port=11112, host=None, timeouts={"dimse": 5})
    >>> new.port, new.host, new.timeouts.dimse, new.timeouts.acse
    (11112, '127.0.0.1', 5.0, 30.0)
    """
    merged = _fields_of(config)
    for key, value in overrides.items():
        if key in ("timeouts", "storage", "access", "tls") and isinstance(value, Mapping):
            given = {k: v for k, v in value.items() if v is not None}
            merged[key] = {**_fields_of(merged[key]), **given}
        elif value is not None:
            merged[key] = value
    return config_from_mapping(merged, source)


# --- fsqr.yaml → mapping ----------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 booleans and an error for a key written twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 also reads yes/no/on/off as booleans, which turns `watch: off` into False.
_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`; an empty document is an empty mapping.

    >>> _parse_yaml("watch: off\\nread_only: false", "f.yaml")
    {'watch': 'off', 'read_only': False}
    """
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: builds only plain data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    return {} if data is None else data


def load_config(path: Path | None) -> Config:
    """The settings in the YAML file at `path`, or the defaults when `path` is None.

    A relative `root` in the file is taken relative to the file's folder, so a config works
    from whatever directory fsqr is started in.
    """
    if path is None:
        return Config()
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    data = _parse_yaml(text, source)
    at = _At(source)
    if not isinstance(data, Mapping):
        raise at.error(
            f"must be a mapping of keys to values, like 'port: 11112'; got {_shown(data)}"
        )
    config = _from_mapping(Config, data, at)
    # Folders named in a file are relative to the file, so a config works from anywhere.
    if data.get("root") is not None and not config.root.is_absolute():
        config = replace(config, root=path.parent.absolute() / config.root)
    if config.worklist is not None and not config.worklist.is_absolute():
        config = replace(config, worklist=path.parent.absolute() / config.worklist)
    if config.index_snapshot is not None and not config.index_snapshot.is_absolute():
        config = replace(config, index_snapshot=path.parent.absolute() / config.index_snapshot)
    tls_files = {
        name: path.parent.absolute() / given
        for name in ("certificate", "key", "ca")
        if (given := getattr(config.tls, name)) is not None and not given.is_absolute()
    }
    if tls_files:
        config = replace(config, tls=replace(config.tls, **tls_files))
    # Without a root here the root is the one given with it (`fsqr serve DIR`): checked then.
    return _checked_together(config, at) if data.get("root") is not None else config
