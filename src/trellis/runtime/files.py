"""Files replaced whole: a reader sees the old content or the new, never a mix.

Only `os`: the proxy imports this, and stays without pathlib, tempfile and shutil.
"""

from __future__ import annotations

import contextlib
import itertools
import os

_SEQUENCE = itertools.count()


def write_file_atomically(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` with `mode`: a temporary file beside it (created with
    `mode`), fsync, rename over `path`, fsync the directory.

    A crash leaves the old file or the new one; the temporary file is removed on error.
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{next(_SEQUENCE)}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # left by a crashed process that had our pid
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; never wider than asked
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    folder = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
