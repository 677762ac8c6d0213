"""Who may associate, what each caller may do, and the TLS contexts: decisions over the config.

`admit` decides on an association request from its AE titles and the peer's address, answering
with the A-ASSOCIATE-RJ fields of PS3.8 9.3.4 when it refuses; `allowed` decides on one request
(echo, find, move, get, store) of an admitted caller. The TLS contexts follow PS3.15 B.9
(BCP 195: TLS 1.2 or later). No pynetdicom here: `handlers.py` applies the decisions.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fsqr.config import Config, Operation, Tls

log = logging.getLogger(__name__)

# PS3.8 9.3.4, A-ASSOCIATE-RJ PDU: Result, Source and Reason/Diag. fields.
REJECTED_PERMANENT = 1
SERVICE_USER = 1  # the source: DICOM UL service-user (that is, fsqr)
CALLING_AE_NOT_RECOGNIZED = 3
CALLED_AE_NOT_RECOGNIZED = 7

Resolver = Callable[[str], set[str]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An A-ASSOCIATE-RJ to send: its three fields, and why, for the log."""

    result: int
    source: int
    reason: int
    why: str


def resolve(host: str) -> set[str]:
    """The IP addresses `host` (a name or an address) resolves to; none if it does not."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    return {_plain(str(info[4][0])) for info in infos}


def _plain(address: str) -> str:
    """An address as compared: an IPv4-mapped IPv6 address as IPv4, scope ids dropped.

    >>> _plain("::ffff:127.0.0.1"), _plain("fe80::1%eth0"), _plain("10.0.0.1")
    ('127.0.0.1', 'fe80::1', '10.0.0.1')
    """
    try:
        ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def admit(
    config: Config, calling: str, called: str, address: str, resolver: Resolver = resolve
) -> Refusal | None:
    """None if an association from `calling` at `address` to `called` may go on, else why not.

    AE titles are compared without leading and trailing spaces (PS3.5 6.2), case sensitive.

    >>> from fsqr.config import config_from_mapping
    >>> known = {"ae_table": {"PACS": {"host": "127.0.0.1", "port": 104}}}
    >>> config = config_from_mapping({**known, "access": {"callers": "known"}})
    >>> admit(config, "PACS  ", "FSQR", "127.0.0.1") is None
    True
    >>> admit(config, "INTRUDER", "FSQR", "127.0.0.1").reason
    3
    """
    access = config.access
    calling, called = calling.strip(" "), called.strip(" ")
    peer = config.peer(calling)
    if peer is None and access.callers == "known":
        why = f"calling AE title {calling!r} is not in ae_table (access.callers: known)"
        return Refusal(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED, why)
    if peer is not None and access.check_address and _plain(address) not in resolver(peer.host):
        why = f"{calling!r} calls from {address}, not from its ae_table host {peer.host}"
        return Refusal(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED, why)
    if access.require_called_ae_title and called != config.ae_title:
        why = f"called AE title {called!r} is not ours ({config.ae_title!r})"
        return Refusal(REJECTED_PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNIZED, why)
    return None


def allowed(config: Config, calling: str, operation: Operation) -> bool:
    """Whether `calling` may ask for `operation`: its ae_table `allow`, else `access.allow`.

    >>> from fsqr.config import config_from_mapping
    >>> peers = {"MODALITY": {"host": "h", "port": 104, "allow": ["echo", "store"]}}
    >>> config = config_from_mapping({"ae_table": peers, "access": {"allow": ["echo", "find"]}})
    >>> allowed(config, "MODALITY", "store"), allowed(config, "MODALITY", "find")
    (True, False)
    >>> allowed(config, "SOMEONE", "find"), allowed(config, "SOMEONE", "store")
    (True, False)
    """
    peer = config.peer(calling)
    return operation in (peer.allow if peer is not None else config.access.allow)


class _HandshakeInThreadContext(ssl.SSLContext):
    """A server context whose sockets do the TLS handshake at their first read.

    pynetdicom wraps each accepted socket in its listening thread; a handshake there would let
    one peer that connects and sends nothing stop every other connection from being accepted.
    Deferred, the handshake runs in the association's own thread, under its timeouts.
    """

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_context(tls: Tls) -> ssl.SSLContext | None:
    """The context of the listening socket, or None when `tls` names no certificate. Raises
    OSError naming the file that cannot be loaded."""
    if tls.certificate is None or tls.key is None:
        if tls.ca is not None:  # valid (it checks C-MOVE destinations), but easily misread
            log.warning(
                "tls.ca is set without certificate and key: fsqr listens without TLS, and "
                "tls.ca only checks C-MOVE destinations with tls: true"
            )
        return None
    context = _HandshakeInThreadContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except OSError as exc:  # ssl.SSLError too
        raise OSError(f"tls: cannot load {tls.certificate} with {tls.key}: {exc}") from exc
    if tls.ca is not None:  # mutual TLS: a caller must show a certificate we trust
        try:
            context.load_verify_locations(cafile=tls.ca)
        except OSError as exc:
            raise OSError(f"tls: cannot load the CAs in {tls.ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: Tls) -> ssl.SSLContext:
    """The context of C-MOVE sub-associations to peers with `tls: true`: the peer's certificate
    is checked against `tls.ca` (else the system's CAs) and its host name; ours is shown."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
    if tls.certificate is not None and tls.key is not None:
        context.load_cert_chain(tls.certificate, tls.key)
    return context
