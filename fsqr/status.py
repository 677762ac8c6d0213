"""The DIMSE status codes fsqr sends, named, each citing where the Standard defines it.

Plain integers, so that every layer can use them without importing pynetdicom.
"""

from __future__ import annotations

SUCCESS = 0x0000  # PS3.7 C.1.1
CANCEL = 0xFE00  # PS3.4 C.4.1.1.4, C.4.2.1.5: sub-operations terminated due to Cancel
PENDING = 0xFF00  # PS3.4 C.4.1.1.4: matches are continuing
PENDING_UNSUPPORTED_KEYS = 0xFF01  # PS3.4 C.4.1.1.4: optional keys not supported

OUT_OF_RESOURCES = 0xA700  # PS3.4 C.4.1.1.4 (C-FIND), B.2.3 (C-STORE)
OUT_OF_RESOURCES_MATCHES = 0xA701  # PS3.4 C.4.2.1.5: unable to calculate number of matches
OUT_OF_RESOURCES_SUBOPS = 0xA702  # PS3.4 C.4.2.1.5: unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801  # PS3.4 C.4.2.1.5
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # PS3.4 C.4.1.1.4: identifier does not match SOP Class
DATASET_DOES_NOT_MATCH = 0xA900  # PS3.4 B.2.3: C-STORE data set does not match SOP Class
UNABLE_TO_PROCESS = 0xC000  # PS3.4 C.4.1.1.4: failure, unable to process
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: C-STORE cannot understand
SUBOPS_WITH_FAILURES = 0xB000  # PS3.4 C.4.2.1.5: sub-operations complete, one or more failures
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.x: refused, not authorized
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.5.x: duplicate SOP Instance
