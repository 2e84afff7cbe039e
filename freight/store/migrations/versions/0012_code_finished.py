"""A code whose transfer finished (its connection closed normally after the
claim verified): it no longer counts against its sender's open codes, and
its owner may still offer it again until it expires.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("codes", sa.Column("finished", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("codes") as batch:
        batch.drop_column("finished")
