"""Each room's polling pace as the instance polling it set it (session-aware polling), so
that ``poller status`` can say it: the interval, why, and until when it is active.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from poller.store.models import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("pace_interval", sa.Float(), nullable=True))
        batch.add_column(sa.Column("pace_reason", sa.String(16), nullable=True))
        batch.add_column(sa.Column("active_until", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("active_until")
        batch.drop_column("pace_reason")
        batch.drop_column("pace_interval")
