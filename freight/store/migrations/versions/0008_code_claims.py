"""Codes remember their current claim (connection id and claimant), so that
after a hub restart only the two parties of a code can rejoin its connection.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("codes") as batch:
        batch.add_column(sa.Column("claim_cid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claimant_id", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("codes") as batch:
        batch.drop_column("claimant_id")
        batch.drop_column("claim_cid")
