"""Receiver protection: each webhook's stored state (pause, 410 disable, circuit breaker),
and which attempts used up a retry.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from poller.store.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False, server_default="active"),
        sa.Column("mode_reason", sa.Text(), nullable=True),
        sa.Column("mode_changed_at", UTCDateTime(), nullable=True),
        sa.Column("failing_since", UTCDateTime(), nullable=True),
        sa.Column("breaker_opened_at", UTCDateTime(), nullable=True),
        sa.Column("next_probe_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "mode IN ('active', 'paused', 'disabled')", name=op.f("ck_webhooks_mode")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_webhooks")),
    )
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(
            sa.Column("counted", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("counted")
    op.drop_table("webhooks")
