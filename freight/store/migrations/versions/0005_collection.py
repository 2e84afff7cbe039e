"""Collection: policies, the catalogue of what agents hold, and content
the hub stores or wants.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("agents", sa.Text, nullable=False),
        sa.Column("include", sa.Text, nullable=False),
        sa.Column("exclude", sa.Text, nullable=False),
        sa.Column("max_size", sa.BigInteger, nullable=False),
        sa.Column("every", sa.Float, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "catalogue",
        sa.Column(
            "agent_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, index=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime", sa.Float, nullable=False),
        sa.Column("seen", sa.Float, nullable=False),
    )
    op.create_table(
        "content",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("source", sa.Integer, nullable=False, server_default="0"),
        sa.Column("command_id", sa.Integer, nullable=False, server_default="0"),
        sa.Column("issued", sa.Float, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("received", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("content")
    op.drop_table("catalogue")
    op.drop_table("policies")
