"""Hand the heap's free pages back to the kernel every few seconds (glibc's `malloc_trim`).

A sidecar's connections come and go. What a TLS connection allocates (uvloop's
256 KiB read buffer, OpenSSL's handshake state) is freed when it closes, but
glibc keeps the freed pages resident inside its heap, and the next connections
are placed elsewhere in it: under churn the resident set climbs towards the
heap's reserved size without one live object more (measured in bench/README.md,
"Connection churn"). `malloc_trim(0)` gives those pages back (MADV_DONTNEED);
every few seconds it costs well under a millisecond. With another C library
(musl, macOS) there is no such call and nothing is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("trellis.proxy")

HEAP_TRIM_INTERVAL = 5.0


def malloc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim(0)` as a function; None without glibc."""
    import ctypes  # noqa: PLC0415 - loaded only by the proxy process that trims

    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already uses
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


async def trim_heap_forever(interval: float = HEAP_TRIM_INTERVAL) -> None:
    """Trim the heap every `interval` seconds until cancelled."""
    trim = malloc_trim()
    if trim is None:
        log.debug("no malloc_trim in this C library: the heap is not trimmed")
        return
    while True:
        await asyncio.sleep(interval)
        trim()
