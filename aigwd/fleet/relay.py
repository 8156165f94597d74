"""A /v1/chat/completions request for a model this host does not serve (or whose replicas here are all down)
is relayed to a live host that serves it: over HTTP to that host's registry address, with the fleet secret
and the client's identity in headers only a fleet-authenticated call may set. That host admits it as its own
(its queue, its priority, without charging the rate limit again) and streams the answer back; this host
passes the bytes on as they come, queue-position comments included. A client gone here closes the hop, which
cancels the request there. A request is sent to a second host only when the first could not be reached (or
refused it with a 503 before accepting it): nothing a host accepted is ever sent twice.

The same hop carries Batch API calls for a file or batch kept on another host's disk (`pass_to`): the
client's own credentials go with it, and that host checks them against the accounts all hosts share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .. import logs
from ..errors import ApiError
from .forward import SECRET_HEADER, secret_matches
from .registry import LIVE, FleetRegistry, Host

if TYPE_CHECKING:
    from ..service import ModelService

PATH = "/fleet/v1/chat/completions"
# The client as the first host admitted it; a host takes these only from a call with the fleet secret.
SUBJECT_HEADER = "X-Aigw-Fleet-Subject"
ACCOUNT_HEADER = "X-Aigw-Fleet-Account"
ROLE_HEADER = "X-Aigw-Fleet-Role"
KEY_HEADER = "X-Aigw-Fleet-Key-Id"
FROM_HEADER = "X-Aigw-Fleet-From"
TRUSTED_PREFIX = "x-aigw-fleet-"
# The host that ran a relayed request, on the answer its client gets.
SERVED_BY_HEADER = "X-Aigw-Served-By"
CONNECT_S = 5.0
# Connections open to other hosts at once (every relayed request holds one while it runs).
POOL_LIMIT = 256
# Hosts one request is offered to: the chosen one, and the next once when that one cannot be reached.
TRIES = 2
READ_CHUNK = 64 * 1024
_PASSED_HEADERS = ("Content-Type", "Cache-Control", "X-Request-Id", "X-Accel-Buffering", "Retry-After",
                   "WWW-Authenticate")
# What a Batch API call passed to another host keeps of the client's: its credentials and what it sent.
_HOP_HEADERS = ("Authorization", "Content-Type", "X-Client-ID")
HOP_POOL_LIMIT = 64  # Batch API calls open to other hosts at once
HOP_READ_S = 60.0  # a passed-on call whose answer stops moving this long is cut


@dataclass(frozen=True)
class Identity:
    """Who the client is, as the first host admitted it."""

    subject: str
    account: str
    role: str
    key_id: str
    client_id: str
    priority: str
    resolution: str | None


def trusted_headers_in(headers: Iterable[str]) -> str | None:
    """The first fleet identity header a request carries, if any (only the relay route may take them)."""
    if TRUSTED_PREFIX not in "\n".join(headers).lower():  # one pass in C for the requests that carry none
        return None
    for name in headers:
        lowered = name.lower()
        if lowered.startswith(TRUSTED_PREFIX) and lowered != SECRET_HEADER.lower():
            return name
    return None


class Relay:
    def __init__(self, registry: FleetRegistry, secret: str, *, deadline_s: float, ca_file: str = "") -> None:
        self.registry = registry
        self.secret = secret
        self.deadline_s = deadline_s
        self._ssl = ssl.create_default_context(cafile=ca_file or None)
        self._session: aiohttp.ClientSession | None = None
        self._hop_session: aiohttp.ClientSession | None = None

    def wanted(self, rt: ModelService) -> bool:
        """Whether a held request for `rt` goes to another host: none served here, or all down here while a
        live host serves it."""
        if not rt.replicas:
            return True
        return not rt.accepting() and bool(self.candidates(rt.name))

    def candidates(self, backend: str) -> list[Host]:
        """Live hosts (not this one) where `backend` is healthy, the least loaded first."""
        found = []
        for host in self.registry.hosts():
            if host.node == self.registry.node or host.state(self.registry.lost_after_s) != LIVE:
                continue
            row = host.models.get(backend)
            # A host that does not serve it lists it too (served elsewhere): only a healthy server counts.
            if isinstance(row, dict) and row.get("is_healthy") and any(
                    isinstance(r, dict) and r.get("is_healthy") for r in row.get("replicas") or []):
                found.append((_load(row), host.node, host))
        return [host for *_, host in sorted(found, key=lambda f: (f[0], f[1]))]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_LIMIT),
                timeout=aiohttp.ClientTimeout(total=self.deadline_s, sock_connect=CONNECT_S), auto_decompress=False)
        return self._session

    def _hop_client(self) -> aiohttp.ClientSession:
        """Batch API calls have connections of their own, so slow downloads never hold the ones relayed
        requests need; a download may take as long as it keeps moving."""
        if self._hop_session is None:
            self._hop_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=HOP_POOL_LIMIT),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_S, sock_read=HOP_READ_S),
                auto_decompress=False)
        return self._hop_session

    async def close(self) -> None:
        for session in (self._session, self._hop_session):
            if session is not None:
                await session.close()
        self._session = self._hop_session = None

    def _headers(self, who: Identity) -> dict[str, str]:
        headers = {SECRET_HEADER: self.secret, SUBJECT_HEADER: who.subject, ACCOUNT_HEADER: who.account,
                   ROLE_HEADER: who.role, FROM_HEADER: self.registry.node, "X-Client-ID": who.client_id,
                   "X-Priority": who.priority, "Content-Type": "application/json"}
        if who.key_id:
            headers[KEY_HEADER] = who.key_id
        if who.resolution:
            headers["X-Resolution"] = who.resolution
        return headers

    async def relay(self, request: web.Request, rt: ModelService, model: str, body: bytes,
                    who: Identity) -> web.StreamResponse:
        """Send the request to a host that serves `rt` and pass its answer on as it comes."""
        hosts = self.candidates(rt.name)
        if not hosts:
            await self.registry.refresh()  # the last heartbeat's view may be a beat old
            hosts = self.candidates(rt.name)
        if not hosts:
            raise ApiError(503, f"Model {model} is not served by any live host of the fleet (not on this host "
                                f"{self.registry.node}, nor healthy on another); retry when a host serves it",
                           {"Retry-After": "5"})
        failures = []
        for index, host in enumerate(hosts[:TRIES]):
            last = index == min(TRIES, len(hosts)) - 1
            try:
                resp = await self._client().post(
                    host.address.rstrip("/") + PATH, data=body, headers=self._headers(who),
                    ssl=self._ssl if host.address.startswith("https:") else True)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Not connected: nothing was sent, so the next host may take it.
                failures.append(f"{host.node} at {host.address}: {str(exc) or type(exc).__name__}")
                logs.event("relay_unreachable", level=logging.WARNING, node=host.node, reason=failures[-1])
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Sent and perhaps accepted there: never sent again.
                logs.event("relay_failed", level=logging.WARNING, node=host.node, reason=str(exc))
                raise ApiError(502, f"host {host.node} that serves {model} did not answer: "
                                    f"{str(exc) or type(exc).__name__}") from None
            try:
                if resp.status == 503 and "X-Request-Id" not in resp.headers and not last:
                    # Refused before it was accepted there (queue full, model stopped meanwhile; an accepted
                    # request's answer names its id, even a failed one's): the next host may take it.
                    failures.append(f"{host.node} answered 503")
                    continue
                logs.event("request_relayed", logging.DEBUG, node=host.node, status=resp.status,
                           request_id=resp.headers.get("X-Request-Id"))
                return await self._pass_on(request, resp, host)
            finally:
                resp.close()  # at once, cancelled included: the other host sees the client gone
        raise ApiError(502 if len(failures) == len(hosts[:TRIES]) else 503,
                       f"no host that serves {model} could be reached: {'; '.join(failures)}; retry later",
                       {"Retry-After": "5"})

    def is_hop(self, request: web.Request) -> bool:
        """Whether another host of the fleet passed this call on (it is answered here, never passed again)."""
        return secret_matches(self.secret, request.headers.get(SECRET_HEADER))

    async def pass_to(self, request: web.Request, node: str, what: str, body: bytes | None) -> web.StreamResponse:
        """Send the client's call as it came (its own credentials, which every host checks against the shared
        accounts) to the host `node` that keeps `what`, and pass its answer on (a Batch API call for a file or
        batch kept on another host's disk). Once sent, never sent again."""
        host = next((h for h in self.registry.hosts() if h.node == node), None)
        if host is None or host.state(self.registry.lost_after_s) != LIVE:
            raise ApiError(503, f"{what} is kept on host {node}, which is not live now; retry when it is back",
                           {"Retry-After": "30"})
        headers = {SECRET_HEADER: self.secret, **{k: request.headers[k] for k in _HOP_HEADERS if k in request.headers}}
        try:
            # Never to another address: a redirect would carry the fleet secret there.
            resp = await self._hop_client().request(
                request.method, host.address.rstrip("/") + request.path_qs, data=body, headers=headers,
                allow_redirects=False, ssl=self._ssl if host.address.startswith("https:") else True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logs.event("hop_failed", level=logging.WARNING, node=node, reason=str(exc) or type(exc).__name__)
            raise ApiError(502, f"{what} is kept on host {node}, which did not answer: "
                                f"{str(exc) or type(exc).__name__}; retry later", {"Retry-After": "5"}) from None
        try:
            return await self._pass_on(request, resp, host)
        finally:
            resp.close()

    @staticmethod
    async def _pass_on(request: web.Request, resp: aiohttp.ClientResponse, host: Host) -> web.StreamResponse:
        out = web.StreamResponse(status=resp.status, headers={k: resp.headers[k] for k in _PASSED_HEADERS
                                                              if k in resp.headers})
        out.headers[SERVED_BY_HEADER] = host.node
        try:
            await out.prepare(request)
            # Bounded: the next chunk is read only once this one is written to the client.
            while chunk := await resp.content.readany():
                await out.write(chunk)
        except ConnectionError:  # the client went away: closing the hop cancels the request there
            return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            logs.event("relay_cut", level=logging.WARNING, node=host.node, reason=reason)
            if not out.prepared or out.content_type != "text/event-stream":
                if request.transport is not None:  # a cut answer must not pass as a whole one
                    request.transport.close()
                return out
            # A stream ends as a local one that failed: with an error event.
            error = {"error": {"message": f"host {host.node} that ran the request stopped answering: {reason}",
                               "type": "server_error", "param": None, "code": 502}}
            with contextlib.suppress(ConnectionError):
                await out.write(f"data: {json.dumps(error)}\n\n".encode())
                await out.write_eof()
            return out
        await out.write_eof()
        return out


def _load(row: dict[str, object]) -> float:
    load = row.get("load")
    if isinstance(load, int | float):
        return float(load)
    waiting = row.get("waiting")
    return float(waiting) if isinstance(waiting, int | float) else 0.0
