"""redis-py's pure-Python RESP3 parser, minus two copies of every big bulk string.

redis-py (without hiredis) turns each bulk string into ``(tail + data)[:-2]``: two more
copies of what ``StreamReader.readexactly`` already copied out of the socket buffer, and it
keeps ``data`` alive until the whole reply is parsed anyway. For bulk strings of at least
``VIEW_MIN_BYTES`` (weight chunks; nothing else we read is that big) this parser returns a
``memoryview`` of ``data`` instead: the same bytes, no copy, and half the memory while a
batch of chunks is in flight. Smaller replies stay ``bytes``, so every redis-py code path
that compares or decodes them is unaffected.

It relies on two private names of redis-py 8 (``_AsyncRESP3Parser``, its default parser for
its default protocol, and the ``_read`` it inherits);
``parser_options()`` falls back to redis-py's own parser if they change, and when hiredis is
installed (redis-py's C parser is faster still). A test checks that the lean parser is the
one in use, so an upgrade that breaks it fails loudly.
"""

from __future__ import annotations

VIEW_MIN_BYTES = 64 * 1024


def _lean_class():
    try:
        from redis._parsers import _AsyncRESP3Parser
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return None
    if HIREDIS_AVAILABLE or not callable(getattr(_AsyncRESP3Parser, "_read", None)):
        return None

    class LeanRESP3Parser(_AsyncRESP3Parser):
        async def _read(self, length: int):
            want = length + 2
            if length < VIEW_MIN_BYTES or self._pos < len(self._buffer):
                return await super()._read(length)  # small, or (re)parsing what was read before
            assert self._stream is not None  # the connection is open while a reply is parsed
            data = await self._stream.readexactly(want)
            self._chunks.append(data)  # as redis-py does: a cancelled reply is parsed again from these
            self._pos += want
            return memoryview(data)[:-2]

    return LeanRESP3Parser


LEAN_PARSER = _lean_class()


def parser_options() -> dict:
    """Keyword arguments for ``redis.asyncio.from_url``: the lean parser where it applies."""
    return {"parser_class": LEAN_PARSER} if LEAN_PARSER is not None else {}
