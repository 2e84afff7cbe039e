"""Limits: a disk quota per account, and how many times each agent
command was handed to its agent (a command that never gets an answer is
failed after a few deliveries instead of being sent forever).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Bytes of files and unfinished pushes an account may hold; 0: no quota.
    op.add_column("users", sa.Column("quota", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column(
        "commands", sa.Column("deliveries", sa.Integer, nullable=False, server_default="0")
    )


def downgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("deliveries")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("quota")
