"""Atomic file writes: the whole new file or the old one, with fsyncs only when durability is asked for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from app.files import write_atomically


@pytest.mark.parametrize("durable", [True, False])
def test_a_write_replaces_the_file_whole_with_the_mode_asked(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "nested" / "session.safetensors"
    write_atomically(path, b"old", durable=durable)
    write_atomically(path, b"new contents", 0o640, durable=durable)
    assert path.read_bytes() == b"new contents"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(("durable", "count"), [(True, 2), (False, 0)])
def test_only_durable_writes_fsync_the_file_and_its_directory(
    tmp_path: Path, fsyncs: list[int], durable: bool, count: int
) -> None:
    write_atomically(tmp_path / "file", b"data", durable=durable)
    assert len(fsyncs) == count


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "file"
    write_atomically(path, b"old")

    def failing_replace(source: str, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
