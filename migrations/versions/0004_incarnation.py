"""Each process's incarnation of an instance id, so that two live processes sharing an
id are told apart (the second refuses to start) instead of silently merging.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows of instances running an older version have none, and count as
    # another incarnation until they go stale.
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("incarnation", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("incarnation")
