"""The launcher's files: a private base directory, per-run directories, and locks.

Everything lives under one directory per user, `$TRELLIS_RUNTIME_DIR`, else
`$XDG_RUNTIME_DIR/trellis`, else `/tmp/trellis-<uid>`, which must be a real
directory owned by the user and closed to others (mode 0700):

- `ports/<port>.lock`: held (flock) by the launcher that allocated the port;
- `workloads/<control plane>-<namespace>.<name>.lock`: held by the launcher
  running that workload, so two launchers on one machine cannot run it twice;
- `run-<namespace>.<name>-<random suffix>/`: one per launch (0700), with the join token
  (0600) and the sidecar's log; its `lock` is held while the launch lives.

Locks are `flock`s on open files: the kernel drops them when their process
ends, however it ends, so a crash leaves no lock behind. A run directory
whose lock is free belongs to a launcher that died; the next launch removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trellis.platform.spec import LaunchError, WorkloadSpec
from trellis.runtime.files import write_file_atomically

RUN_PREFIX = "run-"
STALE_SCAN_LIMIT = 200


def runtime_base(environ: dict[str, str] | None = None) -> Path:
    """The per-user base directory (created 0700 if missing, checked if present)."""
    env = os.environ if environ is None else environ
    if env.get("TRELLIS_RUNTIME_DIR"):
        base = Path(env["TRELLIS_RUNTIME_DIR"])
    elif env.get("XDG_RUNTIME_DIR") and Path(env["XDG_RUNTIME_DIR"]).is_dir():
        base = Path(env["XDG_RUNTIME_DIR"]) / "trellis"
    else:
        base = Path(tempfile.gettempdir()) / f"trellis-{os.getuid()}"
    return private_dir(base)


def private_dir(path: Path) -> Path:
    """`path` as a directory only this user can use: created 0700, or checked."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=False)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise LaunchError(f"{path}: expected a directory (not a symlink or file)")
    if info.st_uid != os.getuid():
        raise LaunchError(f"{path}: owned by uid {info.st_uid}, not by this user")
    if info.st_mode & 0o077:
        raise LaunchError(
            f"{path}: open to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            "make it 0700 or set TRELLIS_RUNTIME_DIR"
        )
    return path


def try_lock(path: Path, *, create: bool = True) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None if another has it."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    """Drop a lock taken with `try_lock` (closing the descriptor releases the flock)."""
    with contextlib.suppress(OSError):
        os.close(fd)


def _server_key(server: str) -> str:
    return hashlib.sha256(server.rstrip("/").encode()).hexdigest()[:12]


def lock_workload(base: Path, server: str, spec: WorkloadSpec) -> int:
    """Hold the machine-wide lock of this workload name at this control plane.

    Raises LaunchError naming the launcher that runs it already.
    """
    folder = private_dir(base / "workloads")
    path = folder / f"{_server_key(server)}-{spec.namespace}.{spec.name}.lock"
    fd = try_lock(path)
    if fd is None:
        try:
            holder = path.read_text().strip() or "?"
        except OSError:
            holder = "?"
        raise LaunchError(
            f"workload {spec.namespace}/{spec.name} is already running on this machine "
            f"(trellis run, pid {holder}); stop it or choose another --name"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass(frozen=True, slots=True)
class RunDir:
    """One launch's private directory, locked while the launch lives."""

    path: Path
    lock_fd: int

    @classmethod
    def create(cls, base: Path, spec: WorkloadSpec) -> RunDir:
        """A new directory, locked before it gets the name the stale-directory scan looks at."""
        label = f"{spec.namespace}.{spec.name}-"
        new = Path(tempfile.mkdtemp(prefix=f".new-{label}", dir=base))
        fd = try_lock(new / "lock")
        assert fd is not None  # nobody else knows the new directory yet
        path = base / f"{RUN_PREFIX}{label}{new.name.rsplit('-', 1)[-1]}"
        try:
            new.rename(path)
        except OSError:
            release(fd)
            shutil.rmtree(new, ignore_errors=True)
            raise
        return cls(path, fd)

    @property
    def token_file(self) -> Path:
        return self.path / "join-token"

    @property
    def sidecar_log(self) -> Path:
        return self.path / "sidecar.log"

    def write_token(self, token: str) -> None:
        """Replace the join token file atomically (0600): the proxy reads it on every request."""
        write_file_atomically(self.token_file, (token + "\n").encode())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        release(self.lock_fd)


def remove_stale_run_dirs(base: Path) -> list[Path]:
    """Remove the run directories of launchers that died (their lock is free)."""
    removed = []
    for path in sorted(base.glob(f"{RUN_PREFIX}*"))[:STALE_SCAN_LIMIT]:
        if not path.is_dir() or path.is_symlink():
            continue
        try:
            fd = try_lock(path / "lock", create=False)
        except OSError:
            continue  # no lock file: not a run directory
        if fd is None:
            continue  # a live launch
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            release(fd)
    return removed
