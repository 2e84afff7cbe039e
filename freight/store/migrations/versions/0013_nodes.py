"""Several hub nodes on one database: each node's row (its address, its
last heartbeat, whether an admin is draining it), and which node receives
each push (``streams.owner``) until when (``streams.lease``), so two nodes
never write the same partial file; the node an agent is attached to
(``agents.node``).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("incarnation", sa.String(32), nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("seen", sa.Float, nullable=False),
        sa.Column("clients", sa.Integer, nullable=False, server_default="0"),
        sa.Column("transfers", sa.Integer, nullable=False, server_default="0"),
        sa.Column("draining", sa.Integer, nullable=False, server_default="0"),
    )
    op.add_column("streams", sa.Column("owner", sa.String(64), nullable=False, server_default=""))
    op.add_column("streams", sa.Column("lease", sa.Float, nullable=False, server_default="0"))
    op.add_column("agents", sa.Column("node", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("node")
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("lease")
        batch.drop_column("owner")
    op.drop_table("nodes")
