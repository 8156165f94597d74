"""The client's address: the TCP peer, or, behind a trusted reverse proxy, the address it forwarded.

A forwarding header is honoured only when the peer is one of server.trusted_proxies, and only the
right-most entry that is not itself a trusted proxy is taken: entries further left were written by
the client and prove nothing.
"""

from __future__ import annotations

import functools
import ipaddress

from aiohttp import web

from .context import SERVICES

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def _parse(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(addr: Address | None, nets: tuple[Network, ...]) -> bool:
    return addr is not None and any(addr in net for net in nets)


def forwarded_for(peer: str, header_values: list[str], proxies: tuple[str, ...]) -> str:
    """The client address given the peer, the forwarding header's values, and the trusted proxies."""
    nets = _networks(proxies)
    if not nets or not _trusted(_parse(peer), nets):
        return peer
    entries = [e for value in header_values for e in value.split(",")]
    for entry in reversed(entries):
        addr = _parse(entry)
        if addr is None:
            return peer  # a proxy that writes no address: fall back to who connected
        if not _trusted(addr, nets):
            return str(addr)
    return peer


def client_address(request: web.Request) -> str:
    peer = request.remote or "-"
    cfg = request.app[SERVICES].cfg.server
    if not cfg.client_address_header or not cfg.trusted_proxies:
        return peer
    return forwarded_for(peer, request.headers.getall(cfg.client_address_header, []),
                         tuple(cfg.trusted_proxies))
