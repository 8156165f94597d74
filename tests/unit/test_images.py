"""Image recognition by bytes, and strict data: URL decoding."""

from __future__ import annotations

import base64
import random
import struct
import zlib
from pathlib import Path

import pytest

from aigwd.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    SNIFF_PREFIX_CHARS,
    ImageInfo,
    decode_data_url,
    inspect_data_url,
    size_problem,
    sniff,
)

EXAMPLE_PNG = Path(__file__).resolve().parents[2] / "examples" / "document.png"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int, height: int) -> bytes:
    """A complete, decodable 8-bit greyscale PNG."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(width)) for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def make_jpeg(width: int, height: int, sof: int = 0xC0, fill: bool = False) -> bytes:
    """A baseline JFIF header up to and past the frame header, the way encoders lay it out."""
    app0 = segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    # An EXIF-like segment whose payload contains a fake SOF marker: it must be skipped by length.
    app1 = segment(0xE1, b"Exif\x00\x00" + b"\xff\xc0\x00\x11\x08\x00\x01\x00\x01" + b"\x00" * 8)
    dqt = segment(0xDB, b"\x00" + bytes(range(1, 65)))
    dht = segment(0xC4, b"\x00" + b"\x00" * 16)  # C4 sits in the SOF range but is not a frame
    frame = segment(sof, struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01")
    if fill:
        frame = b"\xff\xff\xff" + frame
    sos = segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00")
    return b"\xff\xd8" + app0 + app1 + dqt + dht + frame + sos + b"\x12\x34\xff\x00\x56" + b"\xff\xd9"


def riff(kind: bytes, payload: bytes) -> bytes:
    chunk = kind + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def make_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | (height - 1) << 14 | 1 << 28  # alpha hint set, version 0
    return riff(b"VP8L", b"\x2f" + struct.pack("<I", bits) + b"\x00" * 12)


def make_vp8(width: int, height: int) -> bytes:
    # Key frame tag (bit 0 clear), start code, then 14-bit sizes with scale bits set above them.
    tag = b"\x50\x02\x00"
    return riff(b"VP8 ", tag + b"\x9d\x01\x2a" + struct.pack("<HH", width | 0x4000, height | 0x8000)
                + b"\x00" * 16)


def make_vp8x(width: int, height: int) -> bytes:
    payload = b"\x10\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return riff(b"VP8X", payload) + b"ALPH" + struct.pack("<I", 2) + b"\x00\x00"


@pytest.mark.parametrize(("data", "expected"), [
    (make_png(3, 2), ImageInfo("png", 3, 2)),
    (make_png(1, 1), ImageInfo("png", 1, 1)),
    (make_jpeg(640, 480), ImageInfo("jpeg", 640, 480)),
    (make_jpeg(17, 9, sof=0xC2), ImageInfo("jpeg", 17, 9)),  # progressive
    (make_jpeg(5, 4, sof=0xCF, fill=True), ImageInfo("jpeg", 5, 4)),
    (make_vp8l(1, 1), ImageInfo("webp", 1, 1)),
    (make_vp8l(16384, 300), ImageInfo("webp", 16384, 300)),
    (make_vp8(1000, 16383), ImageInfo("webp", 1000, 16383)),
    (make_vp8x(16777216, 2), ImageInfo("webp", 16777216, 2)),
])
def test_formats_and_sizes(data: bytes, expected: ImageInfo) -> None:
    assert sniff(data) == expected


def test_the_example_document() -> None:
    assert sniff(EXAMPLE_PNG.read_bytes()) == ImageInfo("png", 96, 32)


def test_jpeg_standalone_markers_before_the_frame() -> None:
    data = make_jpeg(8, 8)
    # TEM and RST markers carry no length and are stepped over.
    assert sniff(data[:2] + b"\xff\x01\xff\xd0" + data[2:]) == ImageInfo("jpeg", 8, 8)


@pytest.mark.parametrize("data", [make_png(4, 4), make_jpeg(320, 200), make_vp8l(9, 9), make_vp8(9, 9),
                                  make_vp8x(9, 9)])
def test_every_cut_off_header_is_none(data: bytes) -> None:
    full = sniff(data)
    assert full is not None
    # Find the shortest prefix that is enough, then check that everything shorter is refused.
    needed = next(i for i in range(len(data) + 1) if sniff(data[:i]) == full)
    assert needed > 8
    for i in range(needed):
        assert sniff(data[:i]) is None, i


def test_garbage_is_none_and_never_raises() -> None:
    rng = random.Random(1234)
    samples = [b"", b"\x00", b"GIF89a\x01\x00\x01\x00", b"%PDF-1.7\n", b"this is not an image",
               b"RIFF\x00\x00\x00\x00WAVEfmt ", b"RIFF\x10\x00\x00\x00WEBPVP8Z\x00\x00\x00\x00",
               b"\xff\xd8\xff\xd9", b"\xff\xd8\x00\x00", b"\xff\xd8\xff\xda\x00\x02"]
    samples += [rng.randbytes(rng.randrange(1, 64)) for _ in range(300)]
    # Valid magic followed by noise reaches deeper into each parser.
    for magic in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF....WEBPVP8L",
                  b"RIFF....WEBPVP8X"):
        samples += [magic + rng.randbytes(rng.randrange(0, 40)) for _ in range(300)]
    for data in samples:
        info = sniff(data)
        assert info is None or (info.width > 0 and info.height > 0)
    assert all(sniff(s) is None for s in samples[:10])


def test_damaged_headers_are_refused() -> None:
    png = bytearray(make_png(4, 4))
    png[17] ^= 0xFF  # width changed, CRC no longer matches
    assert sniff(bytes(png)) is None
    zero = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 4, 8, 0, 0, 0, 0))
    assert sniff(zero) is None
    assert sniff(make_jpeg(0, 10)) is None
    jpeg = make_jpeg(10, 10)
    assert sniff(jpeg[:2] + b"\x00" + jpeg[2:]) is None  # bytes between segments
    vp8 = bytearray(make_vp8(10, 10))
    vp8[23] = 0x00  # broken start code
    assert sniff(bytes(vp8)) is None
    assert sniff(make_vp8l(5, 5).replace(b"\x2f", b"\x2e", 1)) is None


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_decode_data_url() -> None:
    png = make_png(2, 2)
    assert decode_data_url(data_url(png), 10_000) == ("image/png", png)
    assert decode_data_url(data_url(png, "Image/PNG"), 10_000) == ("image/png", png)
    assert decode_data_url("data:image/png;name=a.png;base64," + base64.b64encode(png).decode(),
                           10_000) == ("image/png", png)
    assert decode_data_url(data_url(png), len(png)) == ("image/png", png)


def test_the_bytes_decide_not_the_label() -> None:
    png = make_png(6, 7)
    mime, data = decode_data_url(data_url(png, "image/jpeg"), 10_000)
    assert mime == "image/jpeg"
    assert sniff(data) == ImageInfo("png", 6, 7)


@pytest.mark.parametrize("url", [
    "https://example.com/cat.png", "", "data:", "data:image/png,iVBORw0KGgo=",
    "data:image/png;base64", "data:;base64,iVBORw0KGgo=", "data:image/png;utf8,abc",
    "data:text;base64,iVBORw0KGgo=", "data:image/png;bad param;base64,iVBORw0KGgo=",
    "file:///etc/passwd",
])
def test_not_a_base64_data_url(url: str) -> None:
    with pytest.raises(ValueError, match=r"data: URL"):
        decode_data_url(url, 10_000)


@pytest.mark.parametrize("payload", [
    "iVBORw0K Ggo=", "iVBORw0K\nGgo=", "iVBORw0KGgo", "iVBORw0KGgo==", "iVBORw0=KGgo", "iVBOR!w0KGgo=", "a-b_c-d_",
    "iVBORw0KGgo=é",
])
def test_bad_base64(payload: str) -> None:
    with pytest.raises(ValueError, match="not valid base64"):
        decode_data_url(f"data:image/png;base64,{payload}", 10_000)


def test_empty_payload() -> None:
    with pytest.raises(ValueError, match="no image data"):
        decode_data_url("data:image/png;base64,", 10_000)


def test_oversize_is_refused_with_the_limit_named() -> None:
    data = b"\x89PNG" + b"\x00" * 5000
    with pytest.raises(ValueError, match=r"over the limit of 4\.9 KiB"):
        decode_data_url(data_url(data), 5000)
    with pytest.raises(ValueError, match=r"5004 bytes|4\.9 KiB"):
        decode_data_url(data_url(data), 5003)
    big = b"\x00" * (3 * 1024 * 1024)
    with pytest.raises(ValueError, match=r"3\.0 MiB.*limit of 1\.0 MiB"):
        decode_data_url(data_url(big), 1024 * 1024)


def big_jpeg(app_bytes: int) -> bytes:
    """A JPEG whose frame header lies behind APP segments of app_bytes in all."""
    apps = b""
    while app_bytes > 0:
        n = min(app_bytes, 65000)
        apps += segment(0xE2, b"\x00" * n)
        app_bytes -= n
    head = make_jpeg(320, 200)
    return head[:2] + apps + head[2:]


@pytest.mark.parametrize("image", [
    make_png(3, 5), make_jpeg(640, 480), make_vp8(30, 40), make_vp8l(7, 9), make_vp8x(1000, 2000),
    EXAMPLE_PNG.read_bytes(), big_jpeg(200_000), b"\x00" * 5, b"GIF89a" + b"\x00" * 200_000,
    make_png(2, 2) + random.Random(1).randbytes(300_000),
], ids=["png", "jpeg", "vp8", "vp8l", "vp8x", "document", "jpeg-sof-far-in", "tiny", "gif", "png-large"])
def test_inspect_agrees_with_a_full_decode(image: bytes) -> None:
    url = data_url(image, "image/x-anything")
    mime, data = decode_data_url(url, 10_000_000)
    assert inspect_data_url(url, 10_000_000) == (mime, sniff(data), len(data))


def test_inspect_finds_a_jpeg_frame_header_beyond_the_prefix() -> None:
    image = big_jpeg(200_000)
    assert len(base64.b64encode(image)) > 2 * SNIFF_PREFIX_CHARS
    assert inspect_data_url(data_url(image), 10_000_000)[1] == ImageInfo("jpeg", 320, 200)


@pytest.mark.parametrize("payload", [
    "iVBORw0K Ggo=", "iVBORw0K\nGgo=", "iVBORw0KGgo", "iVBORw0KGgo==", "iVBORw0=KGgo", "iVBOR!w0KGgo=", "a-b_c-d_",
    "iVBORw0KGgo=é", "iVBORw0KGgo===", "====",
])
def test_inspect_refuses_bad_base64(payload: str) -> None:
    with pytest.raises(ValueError, match="not valid base64"):
        inspect_data_url(f"data:image/png;base64,{payload}", 10_000)


@pytest.mark.parametrize("where", [-6, -2])
def test_inspect_checks_the_whole_text_not_only_the_prefix(where: int) -> None:
    text = base64.b64encode(make_png(2, 2) + random.Random(2).randbytes(300_000)).decode()
    assert len(text) > 3 * SNIFF_PREFIX_CHARS
    broken = text[:where] + "!" + text[where + 1:]
    with pytest.raises(ValueError, match="not valid base64"):
        inspect_data_url(f"data:image/png;base64,{broken}", 10_000_000)


def test_inspect_refuses_oversize_with_the_exact_size() -> None:
    data = b"\x89PNG" + b"\x00" * 5000
    assert inspect_data_url(data_url(data), 5004)[2] == 5004
    with pytest.raises(ValueError, match=r"over the limit of 4\.9 KiB"):
        inspect_data_url(data_url(data), 5003)


def png_header(width: int, height: int) -> bytes:
    """Only a PNG's signature and IHDR: what the size is read from."""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


@pytest.mark.parametrize(("data", "bound"), [
    (png_header(2**31 - 1, 2**31 - 1), "max_image_side"),
    (png_header(10_000, 10_000), "max_image_pixels"),  # 100 megapixels, each side allowed
    (png_header(16_385, 1), "max_image_side"),
    (make_jpeg(65_535, 65_535), "max_image_side"),
    (make_jpeg(8_000, 6_000, sof=0xC2), "max_image_pixels"),
    (make_vp8(16_383, 16_383), "max_image_pixels"),
    (make_vp8l(16_384, 16_384), "max_image_pixels"),
    (make_vp8x(16_777_216, 16_777_216), "max_image_side"),
    (make_vp8x(16_384, 3_000), "max_image_pixels"),
])
def test_declared_sizes_past_the_bounds_are_refused(data: bytes, bound: str) -> None:
    info = sniff(data)
    assert info is not None
    problem = size_problem(info, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE)
    assert problem is not None and bound in problem and f"{info.width} x {info.height}" in problem


@pytest.mark.parametrize("data", [png_header(6_000, 6_000), png_header(16_384, 2_000), make_jpeg(4_961, 7_016),
                                  make_vp8(16_383, 2_000), make_vp8l(1, 16_384), make_vp8x(5_000, 8_000)])
def test_sizes_within_the_bounds_pass(data: bytes) -> None:
    info = sniff(data)
    assert info is not None and size_problem(info, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE) is None


def test_the_bounds_are_the_given_ones() -> None:
    info = ImageInfo("png", 100, 50)
    assert size_problem(info, 5_000, 100) is None
    assert "max_image_pixels" in (size_problem(info, 4_999, 100) or "")
    assert "at most 99 pixels" in (size_problem(info, 5_000, 99) or "")
