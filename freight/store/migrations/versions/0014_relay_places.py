"""Which node of a cluster holds each of the relay's listeners, code offers
and connections (``relay_places``), so that the second end of a connection
is sent to the node where the first one waits.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relay_places",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False, index=True),
        sa.Column("since", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("relay_places")
