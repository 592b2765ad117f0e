"""The proxy's heap trimming gives freed heap pages back to the kernel (glibc only)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from trellis.runtime.heap_trim import malloc_trim, trim_heap_forever

# Fill the heap with 8 KiB blocks (above pymalloc's 512 B: glibc's heap) and small
# ones between them that stay, free the big ones, and report the resident set
# before and after one trim (the kept blocks stop the heap from shrinking at its top).
_PROBE = """
import re, sys
sys.path[:0] = {path!r}
from trellis.runtime.heap_trim import malloc_trim

def rss_kib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

big, keep = [], []
for _ in range(4000):
    big.append(bytearray(8192))
    keep.append(bytearray(600))
del big
before = rss_kib()
malloc_trim()()
print(before - rss_kib())
"""


@pytest.mark.skipif(malloc_trim() is None, reason="no malloc_trim: not glibc")
def test_a_trim_gives_freed_heap_pages_back() -> None:
    probe = _PROBE.format(path=sys.path)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    freed_kib = int(done.stdout.strip())
    assert freed_kib > 8 * 1024, f"a trim gave back only {freed_kib} KiB of ~31 MiB freed"


@pytest.mark.skipif(malloc_trim() is None, reason="no malloc_trim: not glibc")
def test_the_trimming_task_runs_until_cancelled() -> None:
    async def main() -> bool:
        task = asyncio.get_running_loop().create_task(trim_heap_forever(0.01))
        await asyncio.sleep(0.05)
        running = not task.done()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return running
        return False

    assert asyncio.run(main())
