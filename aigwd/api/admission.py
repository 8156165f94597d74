"""The one way in for every submission route: /api/chat, /api/ocr and /v1/chat/completions.

Each step runs in this order for all of them, so a refusal is the same whichever route was used:
the caller's identity (already checked by the middleware) and its headers, parsed once into
RequestHeaders; the rate limits, before the body is read, so a client over its limit costs no upload;
the store's availability (503 while its database cannot be reached); the body's checks; the choice of
backend (404 for an unknown model, 400 for the wrong kind); then the gateway, which applies the waiting
bound and the subject's share of it. The daily quotas of the user, API key and client are checked once the
backend is known, before a PDF is opened or anything is queued. The OpenAI route learns the kind (chat or
OCR) from the model, so it reads X-Resolution only once the body has named an OCR model.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from ..auth.apikeys import ApiKey
from ..errors import ApiError, bad_request
from ..gateway import Live
from ..headers import RequestHeaders
from ..pdf.document import Prepared
from ..pdf.documents import pdf_of
from ..priority import Priority
from ..service import ModelService
from ..usage import Meter, ask_for_usage
from . import validation
from .context import SERVICES, Services
from .middleware import API_KEY, CLAIMS, ROLE, read_body


def read_headers(headers: Mapping[str, str], key: ApiKey | None) -> RequestHeaders:
    """X-Client-ID and X-Priority, within what an API key allows (its first client, and the less urgent of
    normal and its highest class, are the defaults)."""
    if key is None:
        return RequestHeaders(validation.client_id(headers), validation.priority(headers))
    client_id = validation.client_id(headers) if "X-Client-ID" in headers or not key.client_ids \
        else key.client_ids[0]
    if key.client_ids and client_id not in key.client_ids:
        raise ApiError(403, f"This API key may not send as client {client_id}; allowed: {', '.join(key.client_ids)}")
    highest = key.max_priority
    priority = validation.priority(headers) if "X-Priority" in headers else min(Priority.NORMAL, highest)
    if priority > highest:
        raise ApiError(403, f"This API key may send at most {highest.label} priority")
    return RequestHeaders(client_id, priority)


def with_resolution(parsed: RequestHeaders, headers: Mapping[str, str], default: str) -> RequestHeaders:
    """The OCR mode asked for (X-Resolution), or the configured default."""
    return replace(parsed, resolution=validation.resolution(headers, default))


async def rate_limit(request: web.Request, services: Services, client_id: str) -> None:
    subject = request[CLAIMS].sub
    wait, scope = await services.limiter.take(subject, client_id)
    if wait > 0:
        services.gateway.metrics.rejected("-", 429)
        retry = max(1, math.ceil(wait))
        if scope == "subject":
            detail = (f"Rate limit exceeded for subject {subject}, all its client IDs together "
                      f"(rate_limit.subject_per_minute); retry in {retry} s")
        else:
            detail = f"Rate limit exceeded for client {client_id}; retry in {retry} s"
        raise ApiError(429, detail, {"Retry-After": str(retry)})


@dataclass(eq=False, slots=True)
class Admission:
    """A submission that passed every check, ready for the gateway. Its later steps (the meter, the body
    asking for usage, an opened PDF) are set in place: a copy of every field per step is a measurable part
    of a request's CPU."""

    kind: str  # "chat" or "ocr"
    model: str
    body: dict[str, Any]
    raw: bytes  # the body as sent: what the model server receives
    backend: ModelService
    headers: RequestHeaders
    subject: str
    account: str  # the account id that owns the request (a user's id, or an API key's account)
    pdf: bool = False  # the image slot holds a PDF: opened by open_document before the gateway takes it
    document: Prepared | None = None  # a PDF, opened and within its bounds: its pages are OCR'd one by one
    meter: Meter = field(default_factory=Meter)  # its accounting, and what it holds against quotas
    # Fleet mode: another host runs it (this one does not serve its model); checked here, charged there.
    elsewhere: bool = False

    def submit(self, services: Services, *, sync: bool = False, stream: bool = False) -> Coroutine[Any, Any, Live]:
        """The gateway's submit, not yet awaited: a route holding the connection shields it."""
        submitting = services.gateway.submit(self.backend, subject=self.subject, headers=self.headers,
                                             model=self.model, payload=self.raw, sync=sync, stream=stream,
                                             account=self.account, document=self.document, meter=self.meter)
        # Only a request that holds part of a quota needs a step to give it back if it is not accepted.
        return submitting if self.meter.release is None else _released_if_refused(submitting, self.meter)


async def _released_if_refused(submitting: Coroutine[Any, Any, Live], meter: Meter) -> Live:
    try:
        return await submitting
    except BaseException:
        release_quota(meter)  # not accepted: it holds nothing
        raise


def release_quota(meter: Meter) -> None:
    if meter.release is not None:
        meter.release()
        meter.release = None


async def admit(request: web.Request, kind: str | None, *, relayed: bool = False) -> Admission:
    """Every check of a submission, in order; kind None is the OpenAI route (the model decides). A request
    `relayed` by another host of the fleet was rate limited there; one this host would relay (`elsewhere`)
    comes back after the body's checks, its quotas and usage left to the host that runs it."""
    services = request.app[SERVICES]
    claims = request[CLAIMS]
    key = request.get(API_KEY)
    parsed = read_headers(request.headers, key)
    if kind == "ocr":
        parsed = with_resolution(parsed, request.headers, services.cfg.ocr.default_resolution)
    if not relayed:
        await rate_limit(request, services, parsed.client_id)
    store_down = services.gateway.store.unavailable
    if store_down is not None:  # refused before the upload: nothing could be accepted anyway
        raise ApiError(503, f"The gateway cannot accept requests right now: {store_down}; retry later",
                       {"Retry-After": "5"})
    await read_body(request)
    raw = await request.read()
    admission = check_body(services, raw, parsed, request.headers, kind, admin=request[ROLE] == "admin",
                           subject=claims.sub, account=claims.uid)
    relay = services.relay
    if kind is None and not relayed and relay is not None and relay.wanted(admission.backend):
        admission.elsewhere = True
        return admission
    metered(services, admission, key.id if key is not None else "")
    stream = kind is None and bool(admission.body.get("stream"))
    try:
        if stream and not admission.pdf:
            # The final usage chunk is asked for, to count the tokens; passed on only when the client asked.
            admission.raw, admission.meter.client_wants_usage = ask_for_usage(admission.raw, admission.body)
        await open_document(services, admission, stream=stream)
    except BaseException:
        release_quota(admission.meter)
        raise
    return admission


def metered(services: Services, admission: Admission, api_key: str) -> None:
    """The quotas of the request's user, API key and client (429 when one is used up), and its meter."""
    admission.meter = services.gateway.usage.admit(
        admission.subject, api_key, admission.headers.client_id,
        _completion_bound(admission.body, admission.backend.cfg.max_tokens_limit))


def _completion_bound(body: dict[str, Any], limit: int) -> int:
    """The most completion tokens a request may produce: what it asks for, else the backend's bound."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return limit


def check_body(services: Services, raw: bytes, parsed: RequestHeaders, headers: Mapping[str, str],
               kind: str | None, *, admin: bool, subject: str, account: str) -> Admission:
    """The body's checks and the choice of backend: the same for a request on a route and a batch line."""
    body = validation.parse_json(raw)
    openai = kind is None
    model = validation.chat_body(body, allow_stream=openai)
    validation.forwarded_fields(body, admin=admin)
    if kind is None:
        name = services.gateway.model_index.get(model)
        kind = services.cfg.backends[name].kind if name else "chat"
        if kind == "ocr":
            parsed = with_resolution(parsed, headers, services.cfg.ocr.default_resolution)
    pdf = False
    if kind == "ocr":
        ocr = services.cfg.ocr
        pdf = validation.ocr_image(body, len(raw), max_pixels=ocr.max_image_pixels, max_side=ocr.max_image_side)
    elif validation.image_parts(body):
        raise bad_request(f"Model {model} takes text only; images go to the OCR model" if openai
                          else "Images go to /api/ocr; /api/chat takes text messages")
    rt = services.gateway.backend_for(model, kind, parsed.client_id, subject)
    validation.max_tokens_bound(body, model, rt.cfg.max_tokens_limit)
    return Admission(kind=kind, model=model, body=body, raw=raw, backend=rt, headers=parsed, subject=subject,
                     account=account, pdf=pdf)


async def open_document(services: Services, admission: Admission, *, stream: bool) -> None:
    """A PDF's pages, opened in its own render process off the event loop; 400 or 413 when it cannot or may
    not be. Anything else passes as it is."""
    if not admission.pdf:
        return
    data = pdf_of(admission.body)
    assert data is not None  # checked by check_body
    admission.document = await services.gateway.documents.prepare(data, admission.body, stream=stream,
                                                                  subject=admission.subject)


def batch_line_submitter(services: Services) -> Callable[[bytes, str, str, str], Awaitable[Live]]:
    """How a batch line enters: the checks of /v1/chat/completions (no rate limit: a batch feeds a bounded
    number of lines at a time), then the gateway at the lowest class, as background work."""

    async def submit(raw: bytes, subject: str, account: str, client_id: str) -> Live:
        parsed = RequestHeaders(client_id, Priority.LOW)
        admission = check_body(services, raw, parsed, {}, None, admin=False, subject=subject, account=account)
        if admission.body.get("stream"):
            raise bad_request("stream is not available in a batch; its answers go to the output file")
        if admission.pdf:
            raise bad_request("a PDF is not available in a batch line; send its pages as images, or the PDF "
                              "to /v1/chat/completions")
        metered(services, admission, "")  # a batch's lines count against its owner's quotas
        try:
            return await services.gateway.submit(admission.backend, subject=subject, headers=admission.headers,
                                                 model=admission.model, payload=raw, sync=True, account=account,
                                                 background=True, meter=admission.meter)
        except BaseException:
            release_quota(admission.meter)
            raise

    return submit
