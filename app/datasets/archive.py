"""Zip archives taken apart safely: the central directory is checked before anything is written (paths that
stay inside the folder, no links, how many members, how many bytes, the compression ratio), then each member
is extracted with a running byte count."""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from app.datasets.upload import TooLarge, copy_at_most

__all__ = ["IGNORED", "MAX_MEMBERS", "MAX_RATIO", "check_size", "unpack"]

MAX_MEMBERS = 100_000
"""Members one archive may hold; Omniglot's two sets hold 32,460 images."""
MAX_RATIO = 100
"""Most unpacked bytes per packed byte: images barely compress, numbers seldom pass 10:1, bombs 1000:1."""
IGNORED = "__MACOSX"
"""The folder of resource forks that macOS's Finder adds to a zip: not data, never extracted."""


def check_size(archive: zipfile.ZipFile, max_bytes: int) -> None:
    """At most ``MAX_MEMBERS`` members, unpacking to at most ``max_bytes`` by the central directory."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"file: the archive has {len(members)} members; at most {MAX_MEMBERS} are taken")
    unpacked = sum(member.file_size for member in members)
    if unpacked > max_bytes:
        raise ValueError(f"file: the archive unpacks to {unpacked} bytes; the limit is {max_bytes}")


def unpack(path: Path, into: Path, max_bytes: int) -> int:
    """Extract the zip at ``path`` into the new folder ``into`` once every member passes the checks, and
    return the bytes written. A folder that holds everything (as in Omniglot's ``images_background.zip``)
    is unwrapped, so ``into`` holds the classes, or the alphabets, themselves."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"file: not a zip archive ({error})") from None
    with archive:
        check_size(archive, max_bytes)
        _check_ratio(archive.infolist())
        files = [m for m in archive.infolist() if _inside(m).parts[:1] != (IGNORED,) and not m.is_dir()]
        into.mkdir()
        written = 0
        for member, relative in zip(files, _unwrapped([_inside(m) for m in files]), strict=True):
            written += _extract(archive, member, into.joinpath(*relative.parts), max_bytes - written)
    return written


def _check_ratio(members: list[zipfile.ZipInfo]) -> None:
    """The whole archive compressed no more than ``MAX_RATIO``:1, by the central directory."""
    unpacked, packed = sum(m.file_size for m in members), sum(m.compress_size for m in members)
    if unpacked > MAX_RATIO * max(packed, 1):
        raise ValueError(
            f"file: the archive unpacks {packed} bytes to {unpacked}, a compression ratio over {MAX_RATIO}:1 "
            "as in zip bombs; upload images, which barely compress"
        )


def _inside(member: zipfile.ZipInfo) -> PurePosixPath:
    """The member's path, refused unless it stays inside the folder it is extracted into and is no link."""
    path = PurePosixPath(member.filename)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(
            f"file: member {member.filename!r} points outside the archive's folder (absolute or '..')"
        )
    if stat.S_ISLNK(member.external_attr >> 16):
        raise ValueError(f"file: member {member.filename!r} is a symbolic link; links are refused")
    return path


def _unwrapped(paths: list[PurePosixPath]) -> list[PurePosixPath]:
    """``paths`` less their top folder when every one lies in the same folder."""
    if len({p.parts[0] for p in paths}) == 1 and all(len(p.parts) > 1 for p in paths):
        return [PurePosixPath(*p.parts[1:]) for p in paths]
    return paths


def _extract(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Write one member to ``target``, at most ``budget`` bytes of it; the bytes written."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as source:
            return copy_at_most(source, target, budget)
    except TooLarge:
        raise ValueError(
            f"file: member {member.filename!r} unpacks to more than its archive declares"
        ) from None
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"file: member {member.filename!r} clashes with another member's path") from None
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error) as error:
        raise ValueError(f"file: member {member.filename!r} cannot be read ({error})") from None
