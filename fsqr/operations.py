"""The record of the operations a server served: one frozen `Served` per request, kept in a
thread-safe, append-only list (`Server.operations`) that tests assert on, and written as the
`operation` object of each request's line by `fsqr serve --log-format json`. No pynetdicom.

A request is recorded before its final response is sent (or its association aborted), so a
client that has its answer finds the record already there.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, overload


@dataclass(frozen=True, slots=True)
class Started:
    """When a request came: wall-clock time for the record, a monotonic clock for its duration."""

    at: str  # ISO 8601, UTC, milliseconds
    clock: float  # time.perf_counter()

    @classmethod
    def now(cls) -> Started:
        wall = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        return cls(wall.replace("+00:00", "Z"), time.perf_counter())

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.clock) * 1000, 1)


@dataclass(frozen=True, slots=True)
class Served:
    """One request and how it was answered."""

    operation: str  # C-ECHO, C-FIND, C-MOVE, C-GET or C-STORE
    calling_ae: str  # the calling AE title of the association
    peer: str  # host:port the association came from
    status: int | None  # the final status fsqr sent; None when it sent none (see the comment)
    started: str  # ISO 8601, UTC
    duration_ms: float
    model: str = ""  # Patient Root, Study Root, Modality Worklist; C-STORE: the SOP Class UID
    level: str = ""  # QueryRetrieveLevel, when the request had one
    comment: str = ""  # the Error Comment sent, or why no status was sent
    destination: str = ""  # C-MOVE: the Move Destination
    matches: int = 0  # C-FIND: the matches sent
    completed: int = 0  # C-MOVE, C-GET: sub-operations completed, failed, with a warning
    failed: int = 0
    warning: int = 0
    # C-STORE: the instance stored; C-MOVE, C-GET: those sent (completed or with a warning)
    sop_instance_uids: tuple[str, ...] = ()
    fault: bool = False  # a `faults:` rule applied to it

    def as_json(self) -> dict[str, Any]:
        """The record as JSON values: the status as DICOM writes it (`"A700"`), or null.

        >>> Served("C-ECHO", "ME", "127.0.0.1:5", 0, "2026-01-01T00:00:00.000Z", 1.5).as_json()[
        ...     "status"]
        '0000'
        """
        fields = asdict(self)
        fields["status"] = None if self.status is None else f"{self.status:04X}"
        fields["sop_instance_uids"] = list(self.sop_instance_uids)
        return fields


class Operations(Sequence[Served]):
    """The requests served so far, oldest first: appended by the association threads, read by
    anyone; every read sees a consistent snapshot.

    Only the most recent `keep` are kept, so that a server that runs for months does not grow
    without end (`fsqr serve` keeps none: its JSON log is the record).

    >>> operations = Operations(keep=2)
    >>> for n in range(3):
    ...     operations.append(Served("C-ECHO", f"AE{n}", "h:1", 0, "t", 0.0))
    >>> [served.calling_ae for served in operations]
    ['AE1', 'AE2']
    """

    def __init__(self, keep: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._served: deque[Served] = deque(maxlen=keep)

    def append(self, served: Served) -> None:
        with self._lock:
            self._served.append(served)

    @overload
    def __getitem__(self, index: int) -> Served: ...

    @overload
    def __getitem__(self, index: slice) -> list[Served]: ...

    def __getitem__(self, index: int | slice) -> Served | list[Served]:
        with self._lock:
            if isinstance(index, slice):
                return list(self._served)[index]
            return self._served[index]

    def __len__(self) -> int:
        with self._lock:
            return len(self._served)

    def __iter__(self) -> Iterator[Served]:
        with self._lock:
            return iter(list(self._served))

    def of(self, operation: str) -> list[Served]:
        """The records of one operation (`"C-FIND"`, ...), oldest first."""
        return [served for served in self if served.operation == operation]

    def __repr__(self) -> str:
        return f"Operations({list(self)!r})"
