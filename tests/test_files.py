"""Atomic file writes (the whole new file or the old one) and new files written under their name, with
fsyncs only when durability is asked for."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from app.files import write_atomically, write_new


@pytest.mark.parametrize("durable", [True, False])
def test_a_write_replaces_the_file_whole_with_the_mode_asked(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "nested" / "session.safetensors"
    write_atomically(path, b"old", durable=durable)
    write_atomically(path, b"new contents", 0o640, durable=durable)
    assert path.read_bytes() == b"new contents"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize("write", [write_atomically, write_new])
@pytest.mark.parametrize(("durable", "count"), [(True, 2), (False, 0)])
def test_only_durable_writes_fsync_the_file_and_its_directory(
    tmp_path: Path, fsyncs: list[int], write: Callable[..., None], durable: bool, count: int
) -> None:
    write(tmp_path / "file", b"data", durable=durable)
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


def test_a_new_file_is_written_under_its_name_with_the_mode_asked_and_never_over_another(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions" / "abc.safetensors"
    write_new(path, b"contents", 0o640)
    assert path.read_bytes() == b"contents" and stat.S_IMODE(path.stat().st_mode) == 0o640
    with pytest.raises(FileExistsError):
        write_new(path, b"other")
    assert path.read_bytes() == b"contents"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file on the way"


def test_a_failed_new_file_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_write(descriptor: int, data: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_new(tmp_path / "file", b"data")
    assert list(tmp_path.iterdir()) == []
