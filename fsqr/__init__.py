"""fsqr: a filesystem-only DICOM Query/Retrieve server.

`from fsqr import Server` gives the embeddable server; it is imported on first use, so that
`import fsqr.scan` in the start-up scan's worker processes stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsqr.server import Server

__all__ = ["Server"]


def __getattr__(name: str) -> Any:
    if name == "Server":
        from fsqr.server import Server  # noqa: PLC0415 - see the module docstring

        return Server
    raise AttributeError(f"module 'fsqr' has no attribute {name!r}")
