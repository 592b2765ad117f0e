"""The launcher's private directories and locks (files only, no sockets)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trellis.platform.paths import (
    RunDir,
    lock_workload,
    private_dir,
    release,
    remove_stale_run_dirs,
    runtime_base,
    try_lock,
)
from trellis.platform.spec import LaunchError, WorkloadSpec

SPEC = WorkloadSpec(name="web", namespace="shop")


def test_runtime_base_is_private(tmp_path: Path) -> None:
    base = runtime_base({"TRELLIS_RUNTIME_DIR": str(tmp_path / "rt")})
    assert base == tmp_path / "rt"
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    assert runtime_base({"XDG_RUNTIME_DIR": str(xdg)}) == xdg / "trellis"


def test_a_shared_or_linked_base_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(LaunchError, match="open to other users"):
        private_dir(open_dir)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "rt-target", target_is_directory=True)
    (tmp_path / "rt-target").mkdir(mode=0o700)
    with pytest.raises(LaunchError, match="expected a directory"):
        private_dir(link)


def test_one_workload_name_runs_once(tmp_path: Path) -> None:
    held = lock_workload(tmp_path, "http://127.0.0.1:8080", SPEC)
    try:
        with pytest.raises(LaunchError, match=rf"already running .*pid {os.getpid()}"):
            lock_workload(tmp_path, "http://127.0.0.1:8080/", SPEC)
        # Another control plane (another test, another mesh) has its own names.
        other = lock_workload(tmp_path, "http://127.0.0.1:9090", SPEC)
        release(other)
    finally:
        release(held)
    release(lock_workload(tmp_path, "http://127.0.0.1:8080", SPEC))


def test_run_dir_holds_the_token_privately_and_goes_away(tmp_path: Path) -> None:
    run_dir = RunDir.create(tmp_path, SPEC)
    assert run_dir.path.name.startswith("run-shop.web-")
    assert stat.S_IMODE(run_dir.path.stat().st_mode) == 0o700
    run_dir.write_token("first")
    run_dir.write_token("second")
    assert run_dir.token_file.read_text() == "second\n"
    assert stat.S_IMODE(run_dir.token_file.stat().st_mode) == 0o600
    assert remove_stale_run_dirs(tmp_path) == []  # locked: a live launch
    run_dir.remove()
    assert not run_dir.path.exists()


def test_run_dirs_of_dead_launchers_are_removed(tmp_path: Path) -> None:
    live = RunDir.create(tmp_path, SPEC)
    dead = RunDir.create(tmp_path, WorkloadSpec(name="cart"))
    release(dead.lock_fd)  # what the kernel does when its launcher dies
    unrelated = tmp_path / "run-not-ours"
    unrelated.mkdir()  # no lock file: not a run directory
    assert remove_stale_run_dirs(tmp_path) == [dead.path]
    assert live.path.exists() and unrelated.exists()
    live.remove()


def test_locks_are_per_open_file(tmp_path: Path) -> None:
    first = try_lock(tmp_path / "x.lock")
    assert first is not None
    assert try_lock(tmp_path / "x.lock") is None
    release(first)
    again = try_lock(tmp_path / "x.lock")
    assert again is not None
    release(again)
