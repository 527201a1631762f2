"""Refuse every connection and name lookup that is not local. Used by conftest's `no_network` for the test session
and by the quickstart notebook test inside its kernel (another process, which conftest's patch does not reach)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable


class NetworkBlockedError(ConnectionRefusedError):
    """Something under test tried to reach the network."""


def _ip_address(host: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an IP address when it is a literal one, else None."""
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host))
    except ValueError:
        return None


def _is_loopback(host: object) -> bool:
    if host in (None, "", "localhost", b"localhost"):
        return True
    address = _ip_address(host)
    return address is not None and address.is_loopback


def patches(who: str = "tests") -> list[tuple[object, str, Callable]]:
    """(owner, attribute, replacement) for `socket.socket.connect`, `connect_ex` and `socket.getaddrinfo`: local
    sockets (AF_UNIX paths, loopback) and lookups of loopback names or IP literals pass; anything else raises
    `NetworkBlockedError` saying that `who` must not reach the network."""
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guard(address: object) -> None:
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            raise NetworkBlockedError(f"{who} must not reach the network: connect to {address}")

    def guarded_connect(self, address):
        guard(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        guard(address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host) and _ip_address(host) is None:  # an IP literal needs no lookup
            raise NetworkBlockedError(f"{who} must not reach the network: name lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    return [
        (socket.socket, "connect", guarded_connect),
        (socket.socket, "connect_ex", guarded_connect_ex),
        (socket, "getaddrinfo", guarded_getaddrinfo),
    ]


def install(who: str = "tests") -> None:
    """Apply `patches` for the rest of the process."""
    for owner, name, replacement in patches(who):
        setattr(owner, name, replacement)
