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


class TooManyMatches(DimseError):
    """More instances match than a C-MOVE/C-GET response can count: 65535 (A701)."""

    status = status.OUT_OF_RESOURCES_MATCHES


class NotAuthorized(DimseError):
    """Refused (0124, PS3.7 C.5): the caller may not ask for this here (`ae_table` `allow`,
    `access.allow`), or a C-STORE reached a read-only server."""

    status = status.NOT_AUTHORIZED


class TooManyResponses(DimseError):
    """A C-FIND matched more than `max_find_responses` (A700, PS3.4 C.4.1.1.4)."""

    status = status.OUT_OF_RESOURCES


class DuplicateInstance(DimseError):
    """C-STORE of a SOP Instance UID already stored, with `on_duplicate: reject` (0111)."""

    status = status.DUPLICATE_SOP_INSTANCE


class OutOfResources(DimseError):
    """The instance cannot be written: disk full, no permission, ... (A700, PS3.4 B.2.3)."""

    status = status.OUT_OF_RESOURCES


class DataSetMismatch(DimseError):
    """The data set is not the instance the request names (A900, PS3.4 B.2.3)."""

    status = status.DATASET_DOES_NOT_MATCH


class CannotUnderstand(DimseError):
    """The data set cannot be parsed (C000, PS3.4 B.2.3)."""

    status = status.CANNOT_UNDERSTAND
