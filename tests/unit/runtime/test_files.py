"""`write_file_atomically`: the whole new content with the asked mode, nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trellis.runtime.files import write_file_atomically


def test_replaces_the_file_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "token"
    target.write_text("old")
    target.chmod(0o644)
    write_file_atomically(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_file_atomically(str(target), b"newer", 0o640)
    assert (target.read_bytes(), stat.S_IMODE(target.stat().st_mode)) == (b"newer", 0o640)
    assert sorted(os.listdir(tmp_path)) == ["token"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "token"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_file_atomically(target, "not bytes", 0o600)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["token"]
