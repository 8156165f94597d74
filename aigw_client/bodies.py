"""The JSON bodies of /api/chat and /api/ocr, and documents as data: URLs."""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CHAT_MODEL", "DEFAULT_OCR_MODEL", "DEFAULT_OCR_PROMPT", "Document", "chat_body",
           "data_url", "load_document", "ocr_body", "sniff_mime"]

DEFAULT_CHAT_MODEL = "gemma-3-4b-it"
DEFAULT_OCR_MODEL = "deepseek-ai/DeepSeek-OCR"
DEFAULT_OCR_PROMPT = "Free OCR."
DEFAULT_OCR_MAX_TOKENS = 2048

Document = str | os.PathLike[str] | bytes | bytearray | memoryview


def sniff_mime(data: bytes) -> str | None:
    """The type the bytes show: PNG, JPEG, WebP, GIF or PDF; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:5] == b"%PDF-":
        return "application/pdf"
    return None


def load_document(source: Document, max_bytes: int) -> tuple[bytes, str]:
    """A document's bytes and MIME type, from a path or from bytes. The bytes name the type (a PDF is
    application/pdf whatever its file name); a path's extension is the fallback."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        guess = None
    else:
        path = Path(source)
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{path} is {size} bytes, over the client's max_document_bytes of {max_bytes}")
        data = path.read_bytes()
        guess = mimetypes.guess_type(path.name)[0]
    if len(data) > max_bytes:
        raise ValueError(f"the document is {len(data)} bytes, over the client's max_document_bytes of {max_bytes}")
    if not data:
        raise ValueError("the document is empty")
    return data, sniff_mime(data) or guess or "application/octet-stream"


def data_url(data: bytes, mime: str) -> str:
    """`data:<mime>;base64,...`: how an image or a PDF travels in the image_url slot."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _messages(messages: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = [dict(m) for m in messages]
    if not out:
        raise ValueError("messages must hold at least one message")
    return out


def chat_body(messages: str | Sequence[Mapping[str, Any]], *, model: str, max_tokens: int | None,
              options: Mapping[str, Any]) -> dict[str, Any]:
    """A chat body; a plain string is one user message. `options` are further OpenAI fields
    (temperature, top_p, stop, ...), sent as given for the gateway to check."""
    body: dict[str, Any] = {"model": model, "messages": _messages(messages)}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(options)
    return body


def ocr_body(url: str, *, prompt: str, model: str, max_tokens: int | None,
             options: Mapping[str, Any]) -> dict[str, Any]:
    """An OCR body: one user message with the document's data: URL and the prompt, as in the API contract."""
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(options)
    return body
