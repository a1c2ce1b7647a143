"""Recycled receive buffers: a peer gets a payload of the same size from every neighbour every
round, so the reassembler takes its buffers from here instead of allocating fresh ones.

A fresh buffer costs a page fault per 4 KiB page the first time it is written; on the
virtual machines this runs on that is ~3.5 us a page, so a fresh 4 MB buffer costs ~3.5 ms
of CPU, more than everything else the receiver does with those 4 MB except the sha256
(``python -m bench exchange``, docs/benchmarks.md). A buffer is handed out again only once
nothing but the pool refers to it: the tensors that ``peers.wire.tensorbytes.parse`` builds on a
buffer hold a reference to it (through the buffer export), and so does a ``Completed`` that
somebody keeps, so a recycled buffer is never one that is still read.
"""

from __future__ import annotations

import sys

DEFAULT_MAX_BYTES = 256 << 20  # memory a pool may hold on to; bigger payloads are not pooled
MAX_BUFFERS = 16


class BufferPool:
    """Hands out ``bytearray`` buffers of an exact size, reusing ones nobody holds any more.

    A buffer it hands out stays in the pool while the pool's total stays within ``max_bytes``
    and ``max_buffers`` (idle buffers are dropped, oldest first, to make room), and is handed
    out again once nothing else refers to it. Buffers are not cleared between uses: the
    reassembler writes every byte before it hands a payload on.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_buffers: int = MAX_BUFFERS):
        self.max_bytes = int(max_bytes)
        self.max_buffers = int(max_buffers)
        self._buffers: list[bytearray] = []  # oldest first
        self._bytes = 0
        self.reused = 0  # buffers handed out again

    def _idle(self, i: int) -> bool:
        # References: the pool's list and getrefcount's own argument. Tensors parsed from the
        # buffer hold one through their buffer export, a kept Completed through its payload.
        return sys.getrefcount(self._buffers[i]) <= 2

    def take(self, size: int) -> bytearray:
        for i in range(len(self._buffers)):
            if len(self._buffers[i]) == size and self._idle(i):
                self.reused += 1
                return self._buffers[i]
        buffer = bytearray(size)
        if size <= self.max_bytes:
            self._make_room(size)
            if self._bytes + size <= self.max_bytes and len(self._buffers) < self.max_buffers:
                self._buffers.append(buffer)
                self._bytes += size
        return buffer

    def _make_room(self, size: int) -> None:
        i = 0
        while i < len(self._buffers) and (
            self._bytes + size > self.max_bytes or len(self._buffers) >= self.max_buffers
        ):
            if self._idle(i):
                self._bytes -= len(self._buffers.pop(i))
            else:
                i += 1

    @property
    def pooled_bytes(self) -> int:
        return self._bytes
