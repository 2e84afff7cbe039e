"""Self-registration and approvals: an account's state (``active``;
``pending`` until an admin approves a registration; ``refused``), and the
application names hosts announce, each pending, approved or refused by an
admin (``freight hub --app-approval``).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("state", sa.String(16), nullable=False, server_default="active")
    )
    op.create_index("ix_users_state", "users", ["state"])
    op.create_table(
        "apps",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("requested", sa.Float, nullable=False),
        sa.Column("decided_by", sa.String(64), nullable=False, server_default=""),
        sa.Column("decided", sa.Float, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("apps")
    op.drop_index("ix_users_state", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("state")
