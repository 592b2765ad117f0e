"""Child processes of the launcher: started, signalled and stopped by their own pids.

Children are started in their own process group, so a Ctrl-C at the terminal
reaches only the launcher, which decides who gets what when. On Linux they
also get SIGTERM if the launcher dies (`PR_SET_PDEATHSIG`), so a killed
launcher leaves no sidecar or application behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


def _death_signal_hook() -> Callable[[], None] | None:
    """A preexec hook asking the kernel for SIGTERM when the launcher dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the hook ran
            os._exit(1)

    return hook


async def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    cwd: Path | None = None,
) -> asyncio.subprocess.Process:
    """Start `command` in its own process group, tied to the launcher's life."""
    return await asyncio.create_subprocess_exec(
        *command,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        cwd=cwd,
        process_group=0,
        preexec_fn=_death_signal_hook(),
    )


def signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    """Send `signum` to the child's process group (the child and what it started)."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def stop(process: asyncio.subprocess.Process, grace: float, *, group: bool = True) -> int:
    """SIGTERM (to the group, or the child alone), then after `grace` seconds SIGKILL to
    the group; the exit status (see `exit_status`)."""
    if process.returncode is None:
        if group:
            signal_group(process, signal.SIGTERM)
        else:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            signal_group(process, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), 5.0)
    return exit_status(process.returncode)


def exit_status(returncode: int | None) -> int:
    """A shell's view of a child's end: its status, or 128 + N when signal N ended it."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int | None) -> str:
    """`status N`, or `killed by SIGNAME`, for messages."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"status {returncode}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def application_stdin() -> int | None:
    """The application's stdin: the launcher's (None), or /dev/null when that is a terminal.

    The application runs in its own process group, outside the terminal's
    foreground group, where reading the terminal would stop it (SIGTTIN).
    """
    stdin = sys.stdin
    if stdin is None:
        return asyncio.subprocess.DEVNULL
    try:
        return asyncio.subprocess.DEVNULL if os.isatty(stdin.fileno()) else None
    except (OSError, ValueError):
        return None
