"""Discovered rooms: where a room came from, when it left the app's listing, when it was
retired, and whether its events are all new (a room created after discovery began).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from poller.store.models import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("discovered_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("left_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("retired_at", UTCDateTime(), nullable=True))
        batch.add_column(
            sa.Column("backfill", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("backfill")
        batch.drop_column("retired_at")
        batch.drop_column("left_at")
        batch.drop_column("discovered_at")
