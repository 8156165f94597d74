"""What one request's accounting needs beyond its record: the API key it came with, the quota it holds, and
its token counts as the model server reported them (a streamed answer's final usage chunk included).

The admission (aigwd/api/admission.py) makes a Meter and hands it to the gateway's submit, which puts it in
the request's live state before the request can run; a request picked up again after a restart, or from
the fleet's queue, gets a fresh one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

# A stream's usage chunk is the only event with this key that is not null (vLLM leaves it out elsewhere).
_USAGE_KEY = b'"usage"'
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
# A chat completion ends with its usage object and a few short fields after it.
_RESULT_TAIL = 1024
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
# A stream's bytes are held until an event ends; a server that never ends one is not buffered past this.
MAX_EVENT_BYTES = 1 << 20


@dataclass(eq=False)
class Meter:
    api_key: str = ""  # the key's id; "" for a token
    client_wants_usage: bool = True  # a stream: False when the usage chunk was asked for on its behalf
    release: Callable[[], None] | None = None  # gives back what admission reserved against the quotas
    prompt_tokens: int = 0
    completion_tokens: int = 0
    has_usage: bool = False
    _pending: bytes = field(default=b"", repr=False)

    # --- a plain answer --------------------------------------------------------------------------

    def read_result(self, result: bytes) -> None:
        """Token counts from a chat completion's usage object (found near its end, without parsing it all)."""
        start = result.rfind(_USAGE_KEY, max(0, len(result) - _RESULT_TAIL))
        if start < 0:
            start = result.rfind(_USAGE_KEY)
        if start < 0:
            return
        tail = result[start:start + 400]
        prompt, completion = _PROMPT.search(tail), _COMPLETION.search(tail)
        if prompt is not None or completion is not None:
            self.count(int(prompt.group(1)) if prompt else 0, int(completion.group(1)) if completion else 0)

    def count(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.has_usage = True

    # --- a stream ----------------------------------------------------------------------------------

    def pass_chunk(self, chunk: bytes) -> bytes:
        """The bytes of a stream to pass on: whole events only, without the usage chunk when the client did
        not ask for it; its counts are kept here. Events without a usage key pass as they came."""
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            if len(data) > MAX_EVENT_BYTES:  # not SSE as vLLM writes it: passed on as it came, not held
                self._pending = b""
                return data
            self._pending = data
            return b""
        whole, self._pending = data[:end + 2], data[end + 2:]
        if _USAGE_KEY not in whole:
            return whole
        return b"".join(self._event(e + b"\n\n") for e in whole[:-2].split(b"\n\n"))

    def stream_end(self) -> bytes:
        """What is left of a stream that ended without a closing blank line."""
        rest, self._pending = self._pending, b""
        return self._event(rest) if rest else b""

    def _event(self, event: bytes) -> bytes:
        if _USAGE_KEY not in event:
            return event
        payload = event.strip()
        if not payload.startswith(b"data:"):
            return event
        try:
            obj = json.loads(payload[5:])
        except ValueError:
            return event
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict) or obj.get("choices"):
            return event
        self.count(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
        return event if self.client_wants_usage else b""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def ask_for_usage(raw: bytes, body: dict[str, object]) -> tuple[bytes, bool]:
    """A streamed request's body as sent upstream, asking for the usage chunk, and whether its client asked.
    The body was checked to be a JSON object; one without stream_options gets it without a re-encode."""
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return raw, True
    if "stream_options" not in body and raw.lstrip().startswith(b"{"):
        head = raw.index(b"{") + 1
        return raw[:head] + _INCLUDE_USAGE + raw[head:], False
    changed = dict(body)
    changed["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps(changed).encode(), False
