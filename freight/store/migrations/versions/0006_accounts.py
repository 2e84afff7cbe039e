"""Accounts: ids never reused (SQLite AUTOINCREMENT on users) and logins
bound to the identity key registered through them (tokens.key).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("key", sa.String(64), nullable=False, server_default=""))
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return  # PostgreSQL's sequence never hands an id out twice
    # SQLite reuses the largest id once its row is deleted unless the table
    # says AUTOINCREMENT, which only a rebuilt table can. The rebuild drops
    # the old table: with foreign keys on, that would delete every row that
    # refers to a user (Database.migrate turns them off for migrations).
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("rebuilding users needs foreign keys off during the migration")
    with op.batch_alter_table(
        "users", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("key")
