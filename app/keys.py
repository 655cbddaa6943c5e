"""API keys in the ``api_keys`` table: made, listed, revoked and verified. A key reads ``ms_<id>_<secret>``;
only the sha256 of the whole key is stored, and a presented key is compared with it in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exc, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.tables import ApiKey, utc_now
from app.serving import NotFound

__all__ = ["ADMIN_KEY_FILE", "Caller", "create_key", "first_admin_key", "list_keys", "revoke_key", "verify"]

ADMIN_KEY_FILE = "admin-key"
"""The file in the data directory where the first start saves the admin key it made (mode 0600)."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = re.compile(r"ms_(?P<id>[0-9a-f]{16})_[A-Za-z0-9_-]{43}")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a key's id, name and admin flag; ``id`` is None with auth off."""

    id: str | None
    name: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The owner whose rows this caller may see: its own key's, or None (all) for an admin."""
        return None if self.admin else self.id


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(factory: sessionmaker[Session], name: str, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key named ``name`` (unique among all keys, revoked ones too): its row and the key itself, which
    is never stored and cannot be shown again."""
    if not NAME.fullmatch(name):
        raise ValueError(
            f"name: 1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit; got {name!r}"
        )
    key_id = secrets.token_hex(8)
    key = f"ms_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=key_id, name=name, hash=_hash(key), admin=admin)
    try:
        with factory.begin() as db:
            db.add(row)
    except exc.IntegrityError:
        raise ValueError(f"name: a key named {name!r} exists already") from None
    return row, key


def list_keys(factory: sessionmaker[Session]) -> list[ApiKey]:
    """Every key, oldest first, revoked ones too."""
    with factory() as db:
        return list(db.scalars(select(ApiKey).order_by(ApiKey.created, ApiKey.id)))


def revoke_key(factory: sessionmaker[Session], name_or_id: str) -> ApiKey:
    """Revoke the key with this name or id (again is harmless); ``NotFound`` when there is none."""
    with factory.begin() as db:
        row = db.scalar(select(ApiKey).where(or_(ApiKey.name == name_or_id, ApiKey.id == name_or_id)))
        if row is None:
            raise NotFound(f"no key named {name_or_id!r} or with that id")
        row.revoked_at = row.revoked_at or utc_now()
    return row


def verify(factory: sessionmaker[Session], key: str) -> Caller | None:
    """The caller ``key`` belongs to, or None when it is malformed, unknown or revoked."""
    found = _KEY.fullmatch(key)
    if found is None:
        return None
    with factory() as db:
        row = db.get(ApiKey, found["id"])
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.hash, _hash(key)):
        return None
    return Caller(row.id, row.name, row.admin)


def first_admin_key(factory: sessionmaker[Session], data_dir: Path, url: str) -> Path | None:
    """On a database without any key, make the admin key ``admin``, save it in ``data_dir/admin-key``
    readable by the owner only and log it once, with a link to the dashboard at ``url`` that carries it;
    the file's path, or None when keys existed (or another process sharing the database made it first)."""
    with factory() as db:
        if db.scalar(select(func.count()).select_from(ApiKey)):
            return None
    try:
        _, key = create_key(factory, "admin", admin=True)
    except ValueError:  # another process of the service made it between the count and the insert
        return None
    path = data_dir / ADMIN_KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)  # not made yet when the database is PostgreSQL
    path.unlink(missing_ok=True)  # a file left from an earlier database; O_EXCL then makes a fresh 0600 one
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f"{key}\n")
    # The fragment after '#' never leaves the browser: the dashboard stores the key and drops it from the URL.
    logger.warning(
        "made the admin API key (shown once, saved in %s, mode 0600): %s\n"
        "open the dashboard with it: %s/#key=%s",
        path,
        key,
        url,
        key,
    )
    return path
