"""The files of a served tree: which ones fsqr looks at, and the walk that finds them.

Kept free of pydicom and of the rest of fsqr, so that a process that only walks and stats the
tree (the warm restart's validation, snapshot.py) starts in milliseconds.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_PREFIX = ".fsqr-"  # files fsqr is still writing (storage.py); never indexed
# ".wl" in any case, without lowering every name of the tree (a walk asks for each)
_WORKLIST_SUFFIXES = (".wl", ".wL", ".Wl", ".WL")


def is_candidate_name(name: str) -> bool:
    """False for files the scan never looks at: fsqr's own files still being written, and
    Modality Worklist items (`.wl`, see worklist.py), which are scheduled work, not images.

    >>> is_candidate_name(".fsqr-1234.tmp"), is_candidate_name("item.wl")
    (False, False)
    >>> is_candidate_name("IMG0001.dcm")
    True
    """
    return not name.startswith(TEMP_PREFIX) and not name.endswith(_WORKLIST_SUFFIXES)


# Never follow a link in the last part of a path, never wait on a FIFO's writer: only a
# regular file found where it was is ever read (O_NONBLOCK does nothing to a regular file).
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS |= getattr(os, "O_BINARY", 0)


def open_served(path: str) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file at `path`, to read what is served from it, and its
    stat (every caller wants it, and fstat is one more system call per file of a scan). Raises
    OSError when it is gone, a symbolic link (whatever it leads to: links are not followed), a
    FIFO, a socket or a device: what a file indexed a moment ago may have been replaced with.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     os.mkfifo(os.path.join(folder, "f"))
    ...     open_served(os.path.join(folder, "f"))
    Traceback (most recent call last):
    OSError: [Errno 22] not a regular file: ...
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd, st


def is_inside(path: str, root_real: str) -> bool:
    """True if the real path `path` is `root_real` or below it."""
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def walk(root: Path, boundary: Path | None = None) -> Iterator[str]:
    """Every candidate file under `root`, symbolic links left out.

    A link is not followed, to a file or to a folder: what it leads to inside the served root
    is served under its own path already (watched there, so a change to it is seen), and what
    lies outside is not served (the server serves its folder, not the machine). `boundary` is
    the served root when `root` is only a folder below it (a rescan); a `root` that is itself
    a link below the boundary is not walked either.
    """
    for entry in walk_entries(root, boundary):
        yield entry.path


def walk_entries(root: Path, boundary: Path | None = None) -> Iterator[os.DirEntry[str]]:
    """`walk`, as the directory entries of the files: `entry.stat()` costs a little less than
    `os.stat(entry.path)` (snapshot.changes stats every file of the tree)."""
    if boundary is not None and os.path.islink(root):
        log.debug("not following %s: a symbolic link", root)
        return
    seen_dirs: set[tuple[int, int]] = set()  # a folder mounted twice (bind mounts) is walked once
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except FileNotFoundError:  # gone since it was listed (renamed on, or deleted): not news
            log.debug("folder %s gone while walked", folder)
            continue
        except OSError as exc:
            log.warning("cannot read folder %s: %s", folder, exc)
            continue
        for entry in sorted(entries, key=lambda e: e.name, reverse=True):
            try:
                if entry.is_symlink():
                    log.debug("not following %s: a symbolic link", entry.path)
                elif entry.is_dir():
                    stack.append(entry.path)
                elif entry.is_file() and is_candidate_name(entry.name):
                    yield entry
            except OSError as exc:
                log.debug("cannot stat %s: %s", entry.path, exc)
