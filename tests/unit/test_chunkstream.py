"""ChunkStream: bounded hand-over of streamed bytes with an end mark."""

from __future__ import annotations

import asyncio

import pytest

from aigwd.chunkstream import ChunkStream


async def test_chunks_in_order_then_none_after_close() -> None:
    s = ChunkStream(4)
    await s.put(b"a")
    await s.put(b"b")
    s.close()
    assert [await s.get(), await s.get(), await s.get(), await s.get()] == [b"a", b"b", None, None]


async def test_reader_waits_for_a_chunk() -> None:
    s = ChunkStream(4)
    reader = asyncio.ensure_future(s.get())
    await asyncio.sleep(0)
    assert not reader.done()
    await s.put(b"x")
    assert await asyncio.wait_for(reader, 5) == b"x"


async def test_close_wakes_a_waiting_reader() -> None:
    s = ChunkStream(4)
    reader = asyncio.ensure_future(s.get())
    await asyncio.sleep(0)
    s.close()
    assert await asyncio.wait_for(reader, 5) is None


async def test_full_stream_holds_the_writer_until_read() -> None:
    s = ChunkStream(2)
    await s.put(b"1")
    await s.put(b"2")
    writer = asyncio.ensure_future(s.put(b"3"))
    await asyncio.sleep(0)
    assert not writer.done()
    assert await s.get() == b"1"
    await asyncio.wait_for(writer, 5)
    assert [await s.get(), await s.get()] == [b"2", b"3"]


async def test_close_releases_a_blocked_writer_and_drops_its_chunk() -> None:
    s = ChunkStream(1)
    await s.put(b"1")
    writer = asyncio.ensure_future(s.put(b"2"))
    await asyncio.sleep(0)
    s.close()
    await asyncio.wait_for(writer, 5)
    assert [await s.get(), await s.get()] == [b"1", None]
    await s.put(b"late")  # after the end: dropped, never blocks
    assert await s.get() is None


async def test_get_times_out_and_a_later_chunk_is_not_lost() -> None:
    s = ChunkStream(4)
    with pytest.raises(TimeoutError):
        await s.get(0.01)
    await s.put(b"after")
    assert await s.get(0.01) == b"after"


async def test_cancelled_reader_loses_nothing() -> None:
    s = ChunkStream(4)
    reader = asyncio.ensure_future(s.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await s.put(b"kept")
    assert await s.get() == b"kept"


async def test_take_hands_over_everything_buffered_at_once() -> None:
    s = ChunkStream(4)
    await s.put(b"a")
    await s.put(b"b")
    await s.put(b"c")
    await s.put(b"d")
    writer = asyncio.ensure_future(s.put(b"e"))  # the stream is full: it waits
    await asyncio.sleep(0)
    assert not writer.done()
    assert await s.take() == b"abcd"
    await asyncio.wait_for(writer, 5)  # room again: the writer goes on
    s.close()
    assert [await s.take(), await s.take()] == [b"e", None]


async def test_take_waits_for_the_first_chunk() -> None:
    s = ChunkStream(4)
    with pytest.raises(TimeoutError):
        await s.take(0.01)
    reader = asyncio.ensure_future(s.take())
    await asyncio.sleep(0)
    assert not reader.done()
    await s.put(b"x")
    assert await asyncio.wait_for(reader, 5) == b"x"
