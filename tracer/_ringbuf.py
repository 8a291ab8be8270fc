"""A BPF ring buffer map read directly through mmap, without a ctypes callback per event.

The protocol is libbpf's (``src/ringbuf.c``, ``ringbuf_process_ring``) and the kernel's
(``kernel/bpf/ringbuf.c``): the map's fd maps a consumer page read-write at offset 0, then
read-only the producer page and the data pages, the data mapped twice in a row so that a
record wrapping around the end is contiguous. Each record is an 8-byte header (its length,
with ``BUSY_BIT`` while reserved and not yet submitted and ``DISCARD_BIT`` when discarded, then
a page offset) and the sample, rounded up to 8 bytes. The consumer reads records from its
position up to the producer's, stops at a busy one, and publishes its new position. Loads and
stores of aligned 8-byte words are single instructions on x86-64 and arm64 here, and x86-64's
ordering makes plain loads acquire and plain stores release; on arm64 CPython's mmap accesses
are not fenced, so this reader is used on x86-64 only (``supported()``).
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import select
import struct
from collections.abc import Callable
from typing import Any

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8

_HEADER = struct.Struct("<I")

#: Decodes the committed records of a chunk (whole records of the fixed size, header
#: included) into ``out``; stops at the first record whose header is not the plain event size
#: and returns how many it decoded.
BatchDecoder = Callable[[memoryview, list[Any]], int]


def supported() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def record_size(sample_size: int) -> int:
    """A record's size in the ring: header plus sample, rounded up to 8 bytes."""
    return (HEADER_SIZE + sample_size + 7) & ~7


class RingReader:
    """The ring buffer map ``map_fd`` of ``size`` data bytes (the map's max_entries).

    Every sample of this program is ``sample_size`` bytes; ``decode`` handles runs of them.
    Raises OSError or ValueError if the map cannot be mapped (then use BCC's callback path).
    """

    def __init__(self, map_fd: int, size: int, sample_size: int, decode: BatchDecoder) -> None:
        page = mmap.PAGESIZE
        if size <= 0 or size & (size - 1) or size % page:
            raise ValueError(f"ring buffer size {size} is not a power-of-two number of pages")
        self._consumer_map = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        try:
            self._data_map = mmap.mmap(
                map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._consumer_map.close()
            raise
        self._consumer = ctypes.c_uint64.from_buffer(self._consumer_map)
        self._view = memoryview(self._data_map)
        self._producer = self._view[:8].cast("Q")
        self._data = self._view[page:]
        self._mask = size - 1
        self._size = size
        self._sample_size = sample_size
        self._record = record_size(sample_size)
        self._decode = decode
        self._closed = False
        self._epoll = select.epoll()
        try:
            self._epoll.register(map_fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def drain(self, out: list[Any]) -> int:
        """Decodes every submitted record into ``out`` and releases their space; returns how
        many records it consumed (discarded ones included)."""
        consumed = 0
        consumer = self._consumer.value
        data, mask, record, decode = self._data, self._mask, self._record, self._decode
        # At most one ring's worth per call, so that a storm cannot keep poll() from returning.
        budget = self._size
        while budget >= record:
            producer = self._producer[0]
            if consumer >= producer:
                break
            offset = consumer & mask
            whole = min(producer - consumer, budget) // record * record
            if whole:
                # A run of plain records: one unpack per record, no per-record header read.
                done = decode(data[offset : offset + whole], out)
                if done:
                    consumer += done * record
                    consumed += done
                    budget -= done * record
                    self._consumer.value = consumer
                    continue
            # A busy, discarded or odd-sized record at the consumer position.
            (length,) = _HEADER.unpack_from(data, offset)
            if length & BUSY_BIT:
                break
            if length == self._sample_size:
                if whole:
                    continue  # submitted since decode saw it busy: decode it now
                break  # cannot happen (a whole record is there): leave it to the next drain
            # Discarded, or not one of ours (this program submits one size only): skipped.
            size = record_size(length & ~DISCARD_BIT)
            consumer += size
            consumed += 1
            budget -= size
            self._consumer.value = consumer
        return consumed

    def wait(self, timeout_ms: int) -> bool:
        """Waits up to ``timeout_ms`` for the kernel's wakeup (or data already waiting)."""
        return bool(self._epoll.poll(timeout_ms / 1000))

    def close(self) -> None:
        """Unmaps; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._epoll.close()
        for view in ("_producer", "_data", "_view"):
            getattr(self, view).release()
        del self._consumer  # the ctypes object exports the consumer page's buffer
        self._consumer_map.close()
        self._data_map.close()
