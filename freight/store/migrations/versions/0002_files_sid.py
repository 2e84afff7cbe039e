"""Remember which stream published a file, so a sender whose final
acknowledgement was lost can be told "already complete" instead of
sending the whole file again.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("sid", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("sid")
