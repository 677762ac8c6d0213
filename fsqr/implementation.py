"""Who fsqr says it is: its Implementation Class UID and Implementation Version Name, in every
association it accepts or opens (PS3.7 D.3.3.2), so that a peer's log names fsqr rather than
the library it is built on.

A file received by C-STORE carries its sender's, not these (`handlers.received_file`).
"""

from __future__ import annotations

from importlib import metadata

# Fixed for good: a UID names a class of implementation, and a peer may key workarounds on it.
# `2.25.` and a name-based UUID (PS3.5 B.2), so that no registered root is needed.
IMPLEMENTATION_CLASS_UID = "2.25.290833092509462278189686138066107186437"


def _version_name() -> str:
    """`FSQR_` and the installed version: an SH of at most 16 characters (PS3.7 D.3.3.2.3)."""
    try:
        version = metadata.version("fsqr")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "FSQR"
    return f"FSQR_{version}"[:16]


IMPLEMENTATION_VERSION_NAME = _version_name()
