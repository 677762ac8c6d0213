"""C-MOVE and C-GET as a plan (PS3.4 C.4.2, C.4.3): which instances go, over which presentation
contexts, as which bytes, counted how, and what the SCU is told at the end. No sockets and no
pynetdicom: the associations themselves are a `Link` that `links.py` provides.

The plan, in the order `run` follows it:

1. Presentation contexts (`propose_contexts`, `plan_batches`): for each SOP Class among the
   instances, one context per transfer syntax the files are stored in, each alone so that the
   peer can accept every one of them, plus one context with the uncompressed syntaxes the files
   are not stored in, so that a peer which takes none of the stored syntaxes still gets the
   instance, converted. No other SOP Class is proposed. An association carries at most 128
   contexts (PS3.8 9.3.2.2: odd IDs 1-255), so a retrieve that needs more is split into batches,
   one association each, a SOP Class never split across two.
2. Each instance, just before it goes (`prepare`): the file is opened and checked against what
   the index holds. Deleted: counted failed and forgotten by the index. Changed: read again;
   still the same SOP Instance, it is sent as it is now and the index updated; another instance
   or no instance at all, counted failed and the index corrected. The rest go on.
3. The bytes (`Outgoing`): when the peer accepted the file's transfer syntax, the data set is
   streamed from the file as stored, never decoded (`FromFile`). Otherwise it is converted:
   between the uncompressed syntaxes (Implicit/Explicit VR Little Endian, Explicit VR Big
   Endian, Deflated), or from a compressed syntax to an uncompressed one when pydicom has a
   decoder for it installed (`Encoded`). When neither works, the instance fails and the log
   says why.
4. Counting (`Tally`, `category`, `final_status`): each C-STORE response is completed, warning
   or failed (PS3.4 B.2.3); the final status follows PS3.4 C.4.2.1.5 (C.4.3.1.4 for C-GET):
   0000 when every sub-operation completed, B000 when some failed or warned, A702 when all
   failed, FE00 on C-CANCEL, with the Failed SOP Instance UID List.

A C-CANCEL is honoured between two instances, so a transfer stops within one instance. A link
that breaks (the peer aborts, or a C-STORE response does not come within the DIMSE timeout) is
closed; a C-MOVE then opens a new association for the rest if the broken one had delivered
anything, so one lost response costs one instance and one timeout, not the whole transfer,
while a peer that fails every time ends the retrieve at once.
"""

from __future__ import annotations

import array
import enum
import errno
import functools
import logging
import os
import threading
import warnings
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import correct_ambiguous_vr, write_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from fsqr import explain, status
from fsqr.errors import TooManyMatches
from fsqr.index import Index
from fsqr.records import Instance, Parsed
from fsqr.scan import read_header
from fsqr.tree import open_served

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are the odd numbers 1-255
MAX_SUBOPERATIONS = 65535  # PS3.7 9.3.3.2: the Number of ... Sub-operations are US

UNCOMPRESSED = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
# Offered next to the stored syntaxes, so that conversion has somewhere to go. Implicit VR
# Little Endian is the default every peer supports (PS3.5 10.1).
_FALLBACK = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_LOGGED_REASONS = 10  # distinct reasons for failures logged per retrieve; the rest at debug


def name_of(transfer_syntax: str) -> str:
    """A transfer syntax's name for log lines.

    >>> name_of("1.2.840.10008.1.2"), name_of("1.2.3")
    ('Implicit VR Little Endian', '1.2.3')
    """
    return str(UID(transfer_syntax).name)


# -- presentation contexts ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProposedContext:
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """Instances that go over one association, and the contexts that association proposes."""

    contexts: tuple[ProposedContext, ...]
    instances: tuple[Instance, ...]


def _stored_syntaxes(instances: Iterable[Instance]) -> dict[str, list[str]]:
    """SOP Class -> the transfer syntaxes its files are stored in, uncompressed ones first."""
    found: dict[str, set[str]] = {}
    for instance in instances:
        found.setdefault(instance.sop_class_uid, set()).add(instance.transfer_syntax_uid)
    order: dict[str, int] = {str(uid): i for i, uid in enumerate(UNCOMPRESSED)}
    return {
        sop_class: sorted(syntaxes, key=lambda ts: (order.get(ts, len(order)), ts))
        for sop_class, syntaxes in found.items()
    }


def propose_contexts(instances: Iterable[Instance]) -> list[ProposedContext]:
    """The presentation contexts a C-MOVE sub-association proposes for `instances`.

    Each stored transfer syntax in a context of its own: a context that lists several gets one
    accepted, and the one the file is in might not be it. Then the uncompressed fallback.

    >>> from fsqr.records import Instance
    >>> def at(ts): return Instance("1.9", "1.8", "1.2.840.10008.5.1.4.1.1.2", ts, "", 0, 0, ())
    >>> [c.transfer_syntaxes for c in propose_contexts([at("1.2.840.10008.1.2.1")])]
    [('1.2.840.10008.1.2.1',), ('1.2.840.10008.1.2',)]
    """
    contexts: list[ProposedContext] = []
    for sop_class, stored in _stored_syntaxes(instances).items():
        contexts.extend(ProposedContext(sop_class, (ts,)) for ts in stored)
        fallback = tuple(ts for ts in _FALLBACK if ts not in stored)
        if fallback:
            contexts.append(ProposedContext(sop_class, fallback))
    return contexts


def plan_batches(instances: Sequence[Instance], limit: int | None = None) -> list[Batch]:
    """Split `instances` into associations of at most `limit` (MAX_CONTEXTS) contexts each.

    Within the limit, one batch in the original order. Beyond it, SOP Classes are packed in the
    order they first appear, each SOP Class's contexts and instances in one batch.
    """
    limit = MAX_CONTEXTS if limit is None else limit
    contexts = propose_contexts(instances)
    if len(contexts) <= limit:
        return [Batch(tuple(contexts), tuple(instances))] if instances else []
    by_class: dict[str, list[ProposedContext]] = {}
    for context in contexts:
        by_class.setdefault(context.abstract_syntax, []).append(context)
    groups: list[list[str]] = [[]]
    used = 0
    for sop_class, own in by_class.items():
        if used + len(own) > limit and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(sop_class)
        used += len(own)
    batches = []
    for group in groups:
        members = set(group)
        batches.append(
            Batch(
                tuple(c for sop_class in group for c in by_class[sop_class]),
                tuple(i for i in instances if i.sop_class_uid in members),
            )
        )
    return batches


def check_limit(instances: Sequence[Instance]) -> None:
    """Refuse a retrieve whose sub-operations the responses could not count (A701).

    >>> check_limit([])
    """
    if len(instances) > MAX_SUBOPERATIONS:
        raise TooManyMatches(
            f"{len(instances)} instances match; at most {MAX_SUBOPERATIONS} per request"
        )


# -- one instance, ready to go ----------------------------------------------------------------


class NotSendable(Exception):
    """An instance that cannot be sent; the message says why, for the log."""


@dataclass(frozen=True, slots=True)
class FromFile:
    """The data set as stored: the file's bytes from `offset` to the end, never decoded."""

    path: str
    offset: int
    identity: tuple[int, int, int, int]  # device, inode, size, mtime: the file that was checked

    def unchanged(self) -> bool:
        """True if the file at `path` is still the one checked before sending."""
        try:
            return self.is_the_file(os.stat(self.path))
        except OSError:
            return False

    def is_the_file(self, st: os.stat_result) -> bool:
        """True if `st` is the stat of the file checked before sending, as it was then."""
        return _identity(st) == self.identity


@dataclass(frozen=True, slots=True)
class Encoded:
    """The data set decoded and encoded again in another transfer syntax."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One C-STORE sub-operation's data set, in `transfer_syntax`."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    payload: FromFile | Encoded
    size: int  # bytes of the data set


def data_set_bytes(outgoing: Outgoing) -> bytes | None:
    """The whole data set in memory, for a small one. From a file, only if the open file is the
    one checked and holds all of it; None otherwise (the caller then says why, on its way)."""
    payload = outgoing.payload
    if isinstance(payload, Encoded):
        return payload.data
    try:
        fd, st = open_served(payload.path)
        with os.fdopen(fd, "rb") as fp:
            if not payload.is_the_file(st):
                return None
            fp.seek(payload.offset)
            data = fp.read(outgoing.size + 1)
    except OSError:
        return None
    return data if len(data) == outgoing.size else None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class _Header:
    sop_instance_uid: str  # from the file meta information; "" when the file has none
    transfer_syntax: str  # ditto
    offset: int  # where the data set starts
    identity: tuple[int, int, int, int] = (0, 0, 0, 0)  # of the file it was read from


def _not_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


# PS3.5 7.1.2: in Explicit VR, these VRs have a 32-bit value length, the others a 16-bit one.
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_META_BYTES = 4096  # read at once: the whole meta information of any ordinary file
_PREAMBLE = 128


def _read_meta(fp: BinaryIO) -> _Header:
    """The File Meta Information (PS3.10 7.1) of an open file, and where the data set starts
    (where it leaves `fp`).

    The meta information is always Explicit VR Little Endian; the few elements it holds are
    read here directly (a retrieve reads it for every instance it sends), and pydicom is asked
    only when something is unusual: no preamble, an undefined length, more than fits the read.
    """
    head = fp.read(_META_BYTES)
    found: dict[int, bytes] = {}
    pos = _PREAMBLE + 4
    if head[_PREAMBLE:pos] == b"DICM":
        while pos + 8 <= len(head) and head[pos : pos + 2] == b"\x02\x00":
            element = int.from_bytes(head[pos + 2 : pos + 4], "little")
            if head[pos + 4 : pos + 6] in _LONG_VRS:
                start, length = pos + 12, int.from_bytes(head[pos + 8 : pos + 12], "little")
            else:
                start, length = pos + 8, int.from_bytes(head[pos + 6 : pos + 8], "little")
            if start + length > len(head):  # an undefined length, or past what was read
                break
            found[element] = head[start : start + length]
            pos = start + length
        else:
            if len(head) >= pos + 8 or len(head) < _META_BYTES:
                fp.seek(pos)
                return _Header(
                    found.get(0x0003, b"").decode("ascii", "replace").rstrip("\0 "),
                    found.get(0x0010, b"").decode("ascii", "replace").rstrip("\0 "),
                    pos,
                )
    fp.seek(0)
    return _read_meta_with_pydicom(fp)


def _read_meta_with_pydicom(fp: BinaryIO) -> _Header:
    read_preamble(fp, force=True)  # leaves fp after "DICM", or at 0 when there is no preamble
    start = fp.tell()
    if int.from_bytes(fp.read(2), "little") != 0x0002:
        fp.seek(start)  # no meta information: the file is a bare data set
        return _Header("", "", start)
    fp.seek(start)
    meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_meta)
    return _Header(
        str(meta.get("MediaStorageSOPInstanceUID", "") or "").rstrip("\0 "),
        str(meta.get("TransferSyntaxUID", "") or "").rstrip("\0 "),
        fp.tell(),
    )


def _open_checked(instance: Instance, index: Index, again: bool = True) -> tuple[Instance, _Header]:
    """The file of `instance` as it is now, checked against the index; corrects the index.

    Returns the instance as the file now holds it, and its meta information.
    """
    path = instance.path
    try:
        fd, st = open_served(path)
        with os.fdopen(fd, "rb") as fp:
            try:
                header: _Header | None = _read_meta(fp)
            except Exception as exc:  # a file rewritten into something else: read it again below
                log.debug("cannot read the meta information of %s: %s", path, exc)
                header = None
    except FileNotFoundError:
        current = index.instance(instance.sop_instance_uid)
        if again and current is not None and current.path != path:
            # Renamed or filed elsewhere since it was matched, and the index already knows
            # where: that copy is sent.
            return _open_checked(current, index, again=False)
        index.remove_path(path)
        raise NotSendable("the file was deleted after it was indexed") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EINVAL):  # a link or a FIFO now: see open_served
            index.remove_path(path)
            raise NotSendable("the file was replaced by a link or a special file") from None
        raise NotSendable(f"cannot open the file: {exc.strerror or exc}") from None
    same_stamp = (st.st_size, st.st_mtime_ns) == (instance.size, instance.mtime_ns)
    same_uid = header is not None and header.sop_instance_uid in ("", instance.sop_instance_uid)
    if header is not None and same_stamp and same_uid:
        transfer_syntax = header.transfer_syntax or instance.transfer_syntax_uid
        return instance, _Header(
            instance.sop_instance_uid, transfer_syntax, header.offset, _identity(st)
        )
    if not again:
        raise NotSendable("the file keeps changing while it is being read")
    now = read_header(path)
    if not isinstance(now, Parsed):
        index.remove_path(path)
        raise NotSendable(f"the file changed after it was indexed and is now {now.reason}")
    index.add(now)
    if now.instance.sop_instance_uid != instance.sop_instance_uid:
        raise NotSendable(
            f"the file changed after it was indexed and now holds {now.instance.sop_instance_uid}"
        )
    if now.instance.sop_class_uid != instance.sop_class_uid:
        # The presentation contexts were negotiated for the class it had when matched.
        raise NotSendable(
            "the file changed after it was indexed and is now "
            f"{name_of(now.instance.sop_class_uid)}, not negotiated for this transfer"
        )
    # Paths only at debug, here as everywhere in this module: see _Failures.add.
    log.info("%s changed after it was indexed; sending it as it is now", instance.sop_instance_uid)
    log.debug("%s changed: %s", instance.sop_instance_uid, path)
    return _open_checked(now.instance, index, again=False)


def prepare(instance: Instance, accepted: Sequence[str], index: Index) -> Outgoing:
    """What to send for `instance` when the peer accepted `accepted` for its SOP Class.

    Raises NotSendable when the file is gone or changed into something else, or when no
    accepted transfer syntax can carry it.
    """
    instance, header = _open_checked(instance, index)
    stored = header.transfer_syntax
    if stored in accepted:
        return Outgoing(
            instance.sop_class_uid,
            instance.sop_instance_uid,
            stored,
            FromFile(instance.path, header.offset, header.identity),
            header.identity[2] - header.offset,
        )
    target = next((ts for ts in UNCOMPRESSED if ts in accepted), None)
    if target is None:
        offered = ", ".join(name_of(ts) for ts in accepted)
        raise NotSendable(
            f"stored as {name_of(stored)}, the peer accepted only {offered}, and fsqr "
            "converts only to uncompressed transfer syntaxes"
        )
    data = convert(instance.path, stored, target, instance.sop_instance_uid)
    return Outgoing(
        instance.sop_class_uid, instance.sop_instance_uid, target, Encoded(data), len(data)
    )


# -- converting between transfer syntaxes -----------------------------------------------------

# PS3.5 7.3: values of these VRs are words of this many bytes, swapped between byte orders.
# pydicom swaps the values it decodes (US, FL, ...) itself but writes these as raw bytes.
_WORD_BYTES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_ARRAY_CODE = {2: "H", 4: "I", 8: "Q"}


def _swapped(data: bytes, width: int) -> bytes:
    """`data` with the byte order of each `width`-byte word reversed.

    >>> _swapped(bytes([1, 2, 3, 4]), 2)
    b'\\x02\\x01\\x04\\x03'
    """
    words = array.array(_ARRAY_CODE[width], data)
    assert words.itemsize == width
    words.byteswap()
    return words.tobytes()


def _swap_words(ds: Dataset) -> None:
    for element in ds.iterall():
        width = _WORD_BYTES.get(element.VR)
        value = element.value
        if width and isinstance(value, bytes | bytearray) and len(value) % width == 0:
            element.value = _swapped(bytes(value), width)


def encode(ds: Dataset, transfer_syntax: str, *, source_little_endian: bool = True) -> bytes:
    """`ds` encoded as a DIMSE data set (no file meta) in an uncompressed `transfer_syntax`.

    `source_little_endian` is the byte order the OW/OL/OF/OD/OV values of `ds` are in (the
    byte order of the transfer syntax it was read from); they are swapped when it changes.
    """
    target = UID(transfer_syntax)
    if target not in UNCOMPRESSED:
        raise ValueError(f"not an uncompressed transfer syntax: {transfer_syntax}")
    little = target.is_little_endian
    correct_ambiguous_vr(ds, little)  # e.g. Pixel Data read as Implicit VR: "OB or OW"
    if little != source_little_endian:
        _swap_words(ds)
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = target.is_implicit_VR
    write_dataset(fp, ds)
    data = fp.getvalue()
    if target.is_deflated:  # PS3.5 A.5: the data set as a raw deflate stream (RFC 1951)
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
    return bytes(data)


def convert(path: str, stored: str, target: str, sop_instance_uid: str) -> bytes:
    """The data set of the file at `path` (stored as `stored`) encoded in `target`.

    Compressed pixel data is decoded first, which needs a pydicom decoder for `stored` (an
    optional extra such as pylibjpeg); without one this raises NotSendable saying so.
    """
    source = UID(stored)
    if source.is_compressed and not source.is_deflated:
        decoder = get_decoder(source) if source.is_transfer_syntax else None
        if decoder is None or not decoder.is_available:
            raise NotSendable(
                f"stored as {name_of(stored)}, which the peer did not accept, and no pydicom "
                "decoder for it is installed (e.g. pip install pylibjpeg pylibjpeg-libjpeg "
                "pylibjpeg-openjpeg)"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a file's oddities are no reason not to send it
            ds = dcmread(path, force=True)
            if str(ds.get("SOPInstanceUID", "")) != sop_instance_uid:
                raise NotSendable("the file changed while it was being converted")
            source_little = source.is_little_endian if source.is_transfer_syntax else True
            if source.is_compressed and not source.is_deflated and "PixelData" in ds:
                # The same instance in another transfer syntax keeps its UID (PS3.5 10).
                ds.decompress(generate_instance_uid=False)
                source_little = True
            return encode(ds, target, source_little_endian=source_little)
    except NotSendable:
        raise
    except Exception as exc:
        raise NotSendable(
            f"cannot convert {name_of(stored)} to {name_of(target)}: {type(exc).__name__}: {exc}"
        ) from None


# -- counting ---------------------------------------------------------------------------------


class Category(enum.Enum):
    """What a C-STORE sub-operation counts as (PS3.4 C.4.2.1.5)."""

    COMPLETED = "completed"
    WARNING = "warning"
    FAILED = "failed"


def category(code: int | None) -> Category:
    """The category of a C-STORE response status; None is no response at all.

    PS3.4 B.2.3 and PS3.7 C: 0000 is success; B000, B006, B007 (any Bxxx) and the general
    warnings 0001, 0107, 0116 are warnings; everything else (Axxx, Cxxx, 01xx, 02xx) fails.

    >>> [category(c).value for c in (0x0000, 0xB007, 0x0107, 0xA700, 0x0122, None)]
    ['completed', 'warning', 'warning', 'failed', 'failed', 'failed']
    """
    if code == 0x0000:
        return Category.COMPLETED
    if code is not None and (code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF):
        return Category.WARNING
    return Category.FAILED


@dataclass(slots=True)
class Tally:
    """The counts a C-MOVE/C-GET response carries (PS3.7 9.3.3.2, 9.3.4.2)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    sent_uids: list[str] = field(default_factory=list)  # completed, or with a warning
    sent_bytes: int = 0

    def count(self, sop_instance_uid: str, result: Category) -> None:
        self.remaining -= 1
        if result is Category.COMPLETED:
            self.completed += 1
            self.sent_uids.append(sop_instance_uid)
        elif result is Category.WARNING:
            self.warning += 1
            self.sent_uids.append(sop_instance_uid)
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)


def final_status(tally: Tally, *, cancelled: bool = False) -> int:
    """The final status of a retrieve (PS3.4 C.4.2.1.5, C.4.3.1.4).

    >>> final_status(Tally(0, completed=3)), final_status(Tally(0, completed=2, failed=1))
    (0, 45056)
    >>> hex(final_status(Tally(0, failed=3))), hex(final_status(Tally(2), cancelled=True))
    ('0xa702', '0xfe00')
    """
    if cancelled:
        return status.CANCEL
    if not tally.failed and not tally.warning:
        return status.SUCCESS
    if not tally.completed and not tally.warning:
        return status.OUT_OF_RESOURCES_SUBOPS  # every sub-operation failed
    return status.SUBOPS_WITH_FAILURES


def failed_uid_list(uids: Sequence[str], *, explicit_vr: bool) -> list[str]:
    """The Failed SOP Instance UID List (0008,0058) as it fits in a response identifier.

    Explicit VR gives UI values a 16-bit length (PS3.5 7.1.2), 65534 bytes, about a thousand
    UIDs; beyond that the list is cut short (the counts still say how many failed). Implicit VR
    has room for any number.

    >>> len(failed_uid_list(["1.2.3"] * 20000, explicit_vr=True))
    10922
    >>> len(failed_uid_list(["1.2.3"] * 20000, explicit_vr=False))
    20000
    """
    if not explicit_vr:
        return list(uids)
    kept: list[str] = []
    length = -1  # n values need n - 1 backslashes
    for uid in uids:
        length += len(uid) + 1
        if length + (length % 2) > 0xFFFE:
            break
        kept.append(uid)
    return kept


# -- the sub-operation loop -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of one C-STORE sub-operation on a link."""

    status: int | None  # the C-STORE response's status; None when none came
    comment: str = ""  # why not, when status is None; the Error Comment otherwise
    usable: bool = True  # False: the link is broken (aborted, timed out) and must be closed


class Link(Protocol):
    """An association that C-STORE sub-operations go over (implemented in links.py)."""

    def transfer_syntaxes(self, sop_class_uid: str) -> tuple[str, ...]:
        """The transfer syntaxes the peer accepted for `sop_class_uid`, empty if none."""
        ...

    def why_not(self, sop_class_uid: str) -> str:
        """Why no instance of `sop_class_uid` can go over this link, for the log."""
        ...

    def store(self, outgoing: Outgoing) -> Stored: ...

    def close(self) -> None: ...


class Unreachable(Exception):
    """A link could not be opened: the peer refused, is down, or did not answer in time."""


class Requestor(Protocol):
    """The SCU that asked for the retrieve (implemented in links.py)."""

    def cancelled(self) -> bool: ...

    def gone(self) -> bool:
        """True when its association is aborted or closed: nobody is left to answer."""
        ...

    def starting(self) -> None:
        """One more sub-operation is handed to a link: said under the transfer's lock, right
        after `gone` was asked, so that a limit on them (a test double's `abort_after`) holds
        however many links send at once."""
        ...

    def pending(self, tally: Tally) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a retrieve ended; `status` None: the requestor went away and is not answered."""

    status: int | None
    tally: Tally
    reason: str = ""  # why sub-operations failed: what stopped them all, or the most common


class _Failures:
    """Failures of one retrieve: each reason logged as a warning when first met (with the SOP
    Instance UID), every failure at debug, and how often each reason recurred at the end."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def add(self, instance: Instance, reason: str) -> None:
        self.reasons[reason] += 1
        uid = instance.sop_instance_uid
        if self.reasons[reason] == 1 and len(self.reasons) <= _LOGGED_REASONS:
            log.warning("not sent: %s: %s", uid, reason)
        else:
            log.debug("not sent: %s: %s", uid, reason)
        # Paths only at debug: a layout like <PatientID>/... puts patient IDs in them.
        log.debug("not sent: %s is %s", uid, instance.path)

    def most_common(self) -> str:
        return self.reasons.most_common(1)[0][0] if self.reasons else ""

    def summary(self) -> None:
        for reason, n in self.reasons.most_common(_LOGGED_REASONS):
            if n > 1:
                log.warning("%d sub-operations failed: %s", n, reason)


class _Transfer:
    """What the links of one retrieve share: the counts, the failures, the SCU, and why nothing
    more can be sent. One lock guards all of it, so that several links may send at once."""

    def __init__(self, tally: Tally, requestor: Requestor, index: Index) -> None:
        self.lock = threading.Lock()
        self.tally = tally
        self.requestor = requestor
        self.index = index
        self.failures = _Failures()
        self.given_up = ""  # set once nothing more can be sent: every instance left fails with it
        self.ended: str | None = None  # "cancelled" or "gone": the SCU stopped the retrieve
        self.sent_again: set[str] = set()  # instances already retried after a broken link
        # Senders that will ask for the next instance again (`linked`): with a link open, one
        # being opened (`opening`), or one let go of. While there is one, a sender whose own
        # link could not be opened leaves its instance to them; a sender that finds nothing to
        # send while others are still opening lets go of its link and waits, as their instances
        # may yet come back (a peer that takes one association at a time takes the next only
        # once the first is released).
        self.linked = 0
        self.opening = 0
        self.changed = threading.Condition(self.lock)

    def next_instance(
        self, waiting: deque[Instance], *, counted: bool, holding: bool
    ) -> tuple[Instance | Literal["let go"] | None, bool]:
        """What a sender does next: an instance to send, "let go" (of its link: others are
        still opening theirs), or None when there is nothing more (or the SCU stopped it all),
        and whether it is counted in `linked` now. `holding`: it has a link open. One without
        a link is counted as opening one as it takes its instance, in the same hold of the
        lock, so that no other sender ends while its instance may yet come back."""
        with self.lock:
            while True:
                if self.ended is None and self.requestor.gone():
                    self.ended = "gone"
                elif self.ended is None and self.requestor.cancelled():
                    self.ended = "cancelled"
                if self.ended is None and waiting:
                    self.requestor.starting()
                    if not holding and not self.given_up:  # it opens a link for it next
                        self.linked += not counted
                        self.opening += 1
                        counted = True
                    return waiting.popleft(), counted
                if self.ended is None and counted and self.opening:
                    if holding:
                        return "let go", counted
                    self.changed.wait(1.0)
                    continue
                self.linked -= counted
                return None, False

    def open_link(
        self,
        open_link: Callable[[Batch], Link],
        batch: Batch,
        instance: Instance,
        waiting: deque[Instance],
    ) -> tuple[Link | None, bool]:
        """A link for a sender counted as opening one (`next_instance`) to send `instance`;
        (None, True) when it could not be opened and the instance was left to the senders
        still counted (a peer that takes fewer associations at once than `associations`, a
        rejection it calls transient), (None, False) when it could not and all is given up.
        Either way the sender is counted no more."""
        try:
            link = open_link(batch)
        except Unreachable as exc:
            with self.lock:
                self.opening -= 1
                self.linked -= 1
                self.changed.notify_all()
                if self.linked and not self.given_up:
                    waiting.appendleft(instance)
                    log.info("one sub-association fewer: %s", exc)
                    return None, True
            self.given_up = self.given_up or str(exc)
            return None, False
        except BaseException:
            with self.lock:
                self.opening -= 1
                self.linked -= 1
                self.changed.notify_all()
            raise
        with self.lock:
            self.opening -= 1
            self.changed.notify_all()
        return link, False

    def link_lost(self) -> bool:
        """A sender's link broke; False: it is no longer counted in `linked`."""
        with self.lock:
            self.linked -= 1
        return False

    def count(
        self,
        instance: Instance,
        result: Category,
        *,
        reason: str = "",
        outgoing: Outgoing | None = None,
        code: int | None = None,
        attempted: bool = True,
    ) -> None:
        """Count one sub-operation, log a failure's reason, narrate it, and report progress
        (not for those failed unattempted once all is given up: the final response follows)."""
        with self.lock:
            if result is Category.FAILED:
                self.failures.add(instance, reason)
            self.tally.count(instance.sop_instance_uid, result)
            _explain(
                self.tally, instance, result=result, reason=reason, outgoing=outgoing, code=code
            )
            if attempted:
                self.requestor.pending(self.tally)


def run(
    batches: Sequence[Batch],
    open_link: Callable[[Batch], Link],
    requestor: Requestor,
    index: Index,
    *,
    reopen: bool,
    links: int = 1,
) -> Outcome:
    """Send every instance of `batches`, over up to `links` associations at once per batch.

    `reopen`: after a link breaks, open another for the rest and send the instance it broke on
    once more (C-MOVE); a peer whose links break twice in a row before delivering anything ends
    the retrieve. Without `reopen` (C-GET, whose only link is the requestor's own association)
    the rest fail. `open_link` raises Unreachable.
    """
    tally = Tally(remaining=sum(len(batch.instances) for batch in batches))
    transfer = _Transfer(tally, requestor, index)
    try:
        for batch in batches:
            waiting = deque(batch.instances)
            share = functools.partial(_send_over_links, batch, waiting, open_link, transfer, reopen)
            senders = [_Sender(share) for _ in range(1, min(links, len(waiting)))]
            for sender in senders:
                sender.start()
            share()
            for sender in senders:
                sender.join()
                if sender.error is not None:
                    raise sender.error
            if transfer.ended is not None:
                break
    finally:
        transfer.failures.summary()
    if transfer.ended == "gone":
        return Outcome(None, tally)
    if transfer.ended == "cancelled":
        return Outcome(final_status(tally, cancelled=True), tally, transfer.given_up)
    return Outcome(final_status(tally), tally, transfer.given_up or transfer.failures.most_common())


class _Sender(threading.Thread):
    """`work` on a thread of its own; what it raises is raised again by `run`."""

    def __init__(self, work: Callable[[], None]) -> None:
        super().__init__(name="fsqr-sub-operations", daemon=True)
        self._work = work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as exc:
            self.error = exc


_BARREN_LINKS = 2  # links in a row that break before delivering anything: the peer is failing


def _send_over_links(
    batch: Batch,
    waiting: deque[Instance],
    open_link: Callable[[Batch], Link],
    transfer: _Transfer,
    reopen: bool,
) -> None:
    """One sender's share of a batch: the next waiting instance, over its own link, until none
    is left; a broken link is closed and, with `reopen`, replaced."""
    link: Link | None = None
    delivered = 0  # responses received over the current link
    barren = 0  # links in a row that broke before any response
    counted = False  # this sender is one of `transfer.linked`
    try:
        while True:
            holding = link is not None
            instance, counted = transfer.next_instance(waiting, counted=counted, holding=holding)
            if instance is None:
                break
            if instance == "let go":
                assert link is not None
                link.close()  # still counted: it opens another if an instance comes back
                link = None
                continue
            if link is None and counted:  # counted as opening one: open it
                link, left = transfer.open_link(open_link, batch, instance, waiting)
                counted, delivered = link is not None, 0
                if left:
                    return
            if transfer.given_up or link is None:
                transfer.count(instance, Category.FAILED, reason=transfer.given_up, attempted=False)
                continue
            barren_after_this = barren + (delivered == 0)
            may_retry = (
                reopen
                and barren_after_this < _BARREN_LINKS
                and instance.sop_instance_uid not in transfer.sent_again
            )
            stored = _send(instance, link, transfer, may_retry=may_retry)
            if stored is None or stored.usable:
                if stored is not None and stored.status is not None:
                    delivered += 1
                    barren = 0
                continue
            link.close()  # broken: the peer aborted, or a response did not come in time
            link = None
            counted = transfer.link_lost()
            barren = barren_after_this
            if may_retry:
                log.info("sending %s again, on a new association", instance.sop_instance_uid)
                with transfer.lock:
                    transfer.sent_again.add(instance.sop_instance_uid)
                    waiting.appendleft(instance)
            elif not reopen or barren >= _BARREN_LINKS:
                transfer.given_up = transfer.given_up or f"the association broke: {stored.comment}"
    finally:
        if link is not None:
            link.close()
        if counted:  # left by an exception
            transfer.link_lost()


def _send(instance: Instance, link: Link, transfer: _Transfer, *, may_retry: bool) -> Stored | None:
    """One sub-operation, counted; None when nothing was sent. A link that breaks with
    `may_retry` leaves the instance uncounted: it is to be sent again."""
    accepted = link.transfer_syntaxes(instance.sop_class_uid)
    if not accepted:
        transfer.count(instance, Category.FAILED, reason=link.why_not(instance.sop_class_uid))
        return None
    try:
        outgoing = prepare(instance, accepted, transfer.index)
    except NotSendable as exc:
        transfer.count(instance, Category.FAILED, reason=str(exc))
        return None
    stored = link.store(outgoing)
    if not stored.usable and may_retry:
        return stored
    result = category(stored.status)
    reason = stored.comment
    if isinstance(outgoing.payload, FromFile) and not outgoing.payload.unchanged():
        # The link sent the file as checked, or held it back (see links.StoreSender); either
        # way it is not what the file is now: failed, and the index follows the file.
        result, reason = Category.FAILED, "the file changed while it was being sent"
        _index_as_now(instance.path, transfer.index)
    elif result is Category.FAILED:
        reason = stored.comment or "no reason given"
        if stored.status is not None:
            reason = f"the peer answered {stored.status:04X}: {reason}"
    else:
        with transfer.lock:
            transfer.tally.sent_bytes += outgoing.size
    transfer.count(instance, result, reason=reason, outgoing=outgoing, code=stored.status)
    return stored


def _index_as_now(path: str, index: Index) -> None:
    """Index the file at `path` as it is now: another instance, or nothing servable."""
    now = read_header(path)
    if isinstance(now, Parsed):
        index.add(now)
    else:
        index.remove_path(path)


def _explain(
    tally: Tally,
    instance: Instance,
    *,
    result: Category,
    reason: str,
    outgoing: Outgoing | None = None,
    code: int | None = None,
) -> None:
    """The sub-operation just counted in `tally`, for --explain."""
    if explain.on():
        done = tally.completed + tally.failed + tally.warning
        explain.sub_operation(
            done,
            done + tally.remaining,
            sop_class=instance.sop_class_uid,
            transfer_syntax=outgoing.transfer_syntax if outgoing is not None else "",
            stored_as=instance.transfer_syntax_uid,
            code=code,
            category=result.value,
            reason=reason,
        )
