"""Files found by their digest: the sweep of a bucket's content
(freight.hub.blobfiles.sweep) asks which digests a file still names.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_files_digest", "files", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_files_digest", table_name="files")
