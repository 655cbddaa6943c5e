"""API keys, and the key that owns each session, dataset and job.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED = ("sessions", "datasets", "jobs")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
    )
    # Rows made before keys existed keep a null owner: only an admin key sees them.
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner", sa.String(length=32), nullable=True))
            batch.create_index(batch.f(f"ix_{table}_owner"), ["owner"])


def downgrade() -> None:
    for table in OWNED:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(batch.f(f"ix_{table}_owner"))
            batch.drop_column("owner")
    op.drop_table("api_keys")
