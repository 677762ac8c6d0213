"""Exceptions that carry the DIMSE status and ErrorComment a handler should answer with.

The core raises them; `handlers.py` turns them into responses. No pynetdicom here.
"""

from __future__ import annotations

from fsqr import status


class DimseError(Exception):
    """A request that fails with `status`; `comment` goes into (0000,0902) Error Comment."""

    status = status.UNABLE_TO_PROCESS

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        # PS3.7 E.1: Error Comment is LO, at most 64 characters.
        self.comment = comment[:64]


class InvalidIdentifier(DimseError):
    """The identifier is not a valid query for its SOP Class and level (A900)."""

    status = status.IDENTIFIER_DOES_NOT_MATCH


class UnableToProcess(DimseError):
    """The request is valid but cannot be carried out (C000)."""

    status = status.UNABLE_TO_PROCESS


class MoveDestinationUnknown(DimseError):
    """The Move Destination is not in the AE table (A801)."""

    status = status.MOVE_DESTINATION_UNKNOWN
