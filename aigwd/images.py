"""Recognise PNG, JPEG and WebP images by their bytes, and unpack base64 data: URLs.

Only the header is read: enough to name the format and the pixel size. A declared MIME type is
never trusted; clients mislabel images often, and the model server decodes whatever bytes arrive.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from dataclasses import dataclass

__all__ = ["ImageInfo", "decode_data_url", "inspect_data_url", "size_problem", "sniff"]


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png", "jpeg" or "webp"
    width: int
    height: int


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# Start-of-frame markers carry the image size. C4 (DHT), C8 (JPG extension) and CC (DAC) share the
# range but are not frames.
JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers with no length field after them: TEM, RST0-7, SOI.
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
JPEG_EOI, JPEG_SOS = 0xD9, 0xDA
PNG_MAX_DIM = 2**31 - 1
# Defaults of ocr.max_image_pixels and ocr.max_image_side; see their help in config.py.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 16_384


def sniff(data: bytes) -> ImageInfo | None:
    """The format and size of a PNG, JPEG or WebP image, or None for anything else or a cut-off header."""
    try:
        if data.startswith(PNG_SIGNATURE):
            return _png(data)
        if data.startswith(JPEG_SOI):
            return _jpeg(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except (IndexError, struct.error):
        # Every length is checked before reading; this is a last guard so garbage never raises.
        return None
    return None


def size_problem(info: ImageInfo, max_pixels: int, max_side: int) -> str | None:
    """Why an image's declared size is refused (what to send instead), or None when it is within bounds.

    The size comes from the header alone: a few kilobytes of compressed data can declare billions of
    pixels, which the model server's decoder would try to allocate."""
    if info.width > max_side or info.height > max_side:
        return (f"image is {info.width} x {info.height} pixels; each side may be at most {max_side} pixels "
                "(ocr.max_image_side): send a smaller image")
    pixels = info.width * info.height
    if pixels > max_pixels:
        return (f"image is {info.width} x {info.height} pixels ({pixels / 1e6:.1f} megapixels), over the limit "
                f"of {max_pixels / 1e6:g} megapixels (ocr.max_image_pixels): send a smaller image")
    return None


def _png(data: bytes) -> ImageInfo | None:
    # IHDR must be the first chunk: length 13, then width, height and five one-byte fields, then a CRC.
    if len(data) < 33:
        return None
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        return None
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(data[12:29]) != crc:
        return None
    width, height = struct.unpack(">II", data[16:24])
    if not (0 < width <= PNG_MAX_DIM and 0 < height <= PNG_MAX_DIM):
        return None
    return ImageInfo("png", width, height)


def _jpeg(data: bytes) -> ImageInfo | None:
    pos = 2
    n = len(data)
    while pos < n:
        if data[pos] != 0xFF:
            return None  # segments must follow each other back to back
        # Any number of 0xFF fill bytes may precede a marker.
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return None
        marker = data[pos]
        pos += 1
        if marker in JPEG_STANDALONE:
            continue
        if marker in (JPEG_EOI, JPEG_SOS, 0x00):
            # Image data or the end before any frame header: there is no size to report.
            return None
        if pos + 2 > n:
            return None
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        if length < 2:
            return None
        if marker in JPEG_SOF:
            # Frame header: length(2), precision(1), height(2), width(2), components...
            if length < 8 or pos + 7 > n:
                return None
            height, width = struct.unpack(">HH", data[pos + 3:pos + 7])
            # A zero height defers the size to a DNL segment after the scan; too rare to chase.
            if width == 0 or height == 0:
                return None
            return ImageInfo("jpeg", width, height)
        pos += length
    return None


def _webp(data: bytes) -> ImageInfo | None:
    if len(data) < 20:
        return None
    kind = data[12:16]
    payload = data[20:]
    if kind == b"VP8 ":
        # Lossy: 3-byte frame tag (bit 0 clear on a key frame), start code, then 14-bit width/height.
        if len(payload) < 10 or payload[0] & 1 or payload[3:6] != b"\x9d\x01\x2a":
            return None
        w, h = struct.unpack("<HH", payload[6:10])
        width, height = w & 0x3FFF, h & 0x3FFF
        if width == 0 or height == 0:
            return None
        return ImageInfo("webp", width, height)
    if kind == b"VP8L":
        # Lossless: signature byte, then width-1 and height-1 as two 14-bit fields.
        if len(payload) < 5 or payload[0] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", payload[1:5])
        return ImageInfo("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":
        # Extended: flags, 3 reserved bytes, then canvas width-1 and height-1 as 24-bit fields.
        if len(payload) < 10:
            return None
        width = int.from_bytes(payload[4:7], "little") + 1
        height = int.from_bytes(payload[7:10], "little") + 1
        return ImageInfo("webp", width, height)
    return None


DATA_URL_HINT = "image_url must be a data: URL with base64 content, e.g. data:image/png;base64,..."
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_PARAM = re.compile(r"[A-Za-z0-9!#$&^_.+-]+=[^;,]*")


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


def _payload(url: str, max_bytes: int) -> tuple[str, str]:
    """(declared MIME type, base64 text) of `data:<mime>;base64,<payload>`, its size checked."""
    if url[:5].lower() != "data:":
        raise ValueError(DATA_URL_HINT)
    header, comma, payload = url[5:].partition(",")
    fields = header.split(";")
    if (not comma or len(fields) < 2 or fields[-1].lower() != "base64"
            or not _MIME.fullmatch(fields[0]) or not all(_PARAM.fullmatch(f) for f in fields[1:-1])):
        raise ValueError(DATA_URL_HINT)
    if not payload:
        raise ValueError("image_url data: URL has no image data after the comma")
    # Refuse before decoding so an oversized body is not expanded in memory first.
    estimate = len(payload) * 3 // 4 - payload[-2:].count("=")
    if estimate > max_bytes:
        raise ValueError(_too_large(estimate, max_bytes))
    return fields[0].lower(), payload


def _too_large(size: int, max_bytes: int) -> str:
    return (f"image is {_size(size)} after base64 decoding, over the limit of {_size(max_bytes)}; "
            "send a smaller or more compressed image")


_BAD_BASE64 = ("image_url data is not valid base64: use the standard alphabet (A-Z a-z 0-9 + /) with = padding "
               "and no spaces or line breaks")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Decoded for the sniff: 64 KiB holds every PNG and WebP header and nearly every JPEG frame header.
SNIFF_PREFIX_CHARS = 64 * 1024 // 3 * 4


def decode_data_url(url: str, max_bytes: int) -> tuple[str, bytes]:
    """(declared MIME type, decoded bytes) of `data:<mime>;base64,<payload>`.

    Raises ValueError with a message that tells the client what to send instead."""
    mime, payload = _payload(url, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(_BAD_BASE64) from None
    if len(data) > max_bytes:
        raise ValueError(_too_large(len(data), max_bytes))
    return mime, data


def inspect_data_url(url: str, max_bytes: int) -> tuple[str, ImageInfo | None, int]:
    """(declared MIME type, what the bytes are, decoded size) of a base64 data: URL image, with the same
    checks as decode_data_url but without decoding all of it: the alphabet and padding are checked on the
    text, and only a prefix is decoded for the sniff (all of it only for a JPEG whose frame header lies
    further in). A 2 MB image costs about a tenth of a full decode."""
    mime, payload = _payload(url, max_bytes)
    try:
        raw = payload.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(_BAD_BASE64) from None
    body = raw.rstrip(b"=")
    padding = len(raw) - len(body)
    if len(raw) % 4 or padding > 2 or body.translate(None, _B64_ALPHABET):
        raise ValueError(_BAD_BASE64)
    size = len(raw) // 4 * 3 - padding
    if size > max_bytes:
        raise ValueError(_too_large(size, max_bytes))
    try:
        info = sniff(base64.b64decode(raw[:SNIFF_PREFIX_CHARS], validate=True))
        if info is None and len(raw) > SNIFF_PREFIX_CHARS and raw.startswith(b"/9j/"):  # JPEG's SOI
            info = sniff(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):  # e.g. padding bits that are not zero: not what an encoder writes
        raise ValueError(_BAD_BASE64) from None
    return mime, info, size
