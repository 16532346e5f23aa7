"""Consecutive failed walks per room, and seen ids readable per room.

``failed_walks`` bounds a room's first-poll phase (see ``poll.py``) and makes a
room that cannot complete a walk visible; the index lets a poller load the
ids it already holds for one room instead of scanning every event.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(
            sa.Column("failed_walks", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_index(op.f("ix_events_room_id"), "events", ["room_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_events_room_id"), table_name="events")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("failed_walks")
