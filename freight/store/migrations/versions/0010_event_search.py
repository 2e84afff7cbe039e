"""Searching the event log: the agent and address of each event in their
own columns (taken from its detail; events written before are filled in
here), indexes that serve each filter in time order and each sort, and on
SQLite a full-text index (FTS5) over kind, actor and detail, kept by
triggers (PostgreSQL searches the text by a scan instead).

A later migration that rebuilds ``events`` (a batch ALTER on SQLite) must
create the triggers again.

Revision ID: 0010
Revises: 0009
"""

import json

import sqlalchemy as sa
from alembic import op

from freight.store.eventcols import event_address, event_agent

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BATCH = 5000

INDEXES = {
    "ix_events_ts_id": ("ts", "id"),
    "ix_events_kind_ts": ("kind", "ts", "id"),
    "ix_events_actor_ts": ("actor", "ts", "id"),
    "ix_events_agent_ts": ("agent", "ts", "id"),
    "ix_events_address_ts": ("address", "ts", "id"),
}

FTS = (
    "CREATE VIRTUAL TABLE events_fts USING fts5(kind, actor, detail, content='events', "
    "content_rowid='id', tokenize='unicode61 remove_diacritics 0')",
    "CREATE TRIGGER events_fts_insert AFTER INSERT ON events BEGIN "
    "INSERT INTO events_fts(rowid, kind, actor, detail) "
    "VALUES (new.id, new.kind, new.actor, new.detail); END",
    "CREATE TRIGGER events_fts_delete AFTER DELETE ON events BEGIN "
    "INSERT INTO events_fts(events_fts, rowid, kind, actor, detail) "
    "VALUES ('delete', old.id, old.kind, old.actor, old.detail); END",
    "INSERT INTO events_fts(events_fts) VALUES ('rebuild')",
)


def _has_fts5(bind: sa.Connection) -> bool:
    try:
        bind.exec_driver_sql("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
    except sa.exc.OperationalError:
        return False
    bind.exec_driver_sql("DROP TABLE temp.fts5_probe")
    return True


def _backfill(bind: sa.Connection) -> None:
    events = sa.table(
        "events",
        sa.column("id"),
        sa.column("kind"),
        sa.column("actor"),
        sa.column("detail"),
        sa.column("agent"),
        sa.column("address"),
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(events.c.id, events.c.kind, events.c.actor, events.c.detail)
            .where(events.c.id > last)
            .order_by(events.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        changes = []
        for r in rows:
            try:
                detail = json.loads(r.detail)
            except ValueError:
                continue
            if not isinstance(detail, dict):
                continue
            agent, address = event_agent(r.kind, r.actor, detail), event_address(detail)
            if agent or address:
                changes.append({"key": r.id, "agent": agent, "address": address})
        if changes:
            bind.execute(
                events.update()
                .where(events.c.id == sa.bindparam("key"))
                .values(agent=sa.bindparam("agent"), address=sa.bindparam("address")),
                changes,
            )


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("events", sa.Column("agent", sa.String(64), nullable=False, server_default=""))
    op.add_column("events", sa.Column("address", sa.String(128), nullable=False, server_default=""))
    _backfill(bind)
    op.drop_index("ix_events_ts", table_name="events")
    op.drop_index("ix_events_kind", table_name="events")
    for name, columns in INDEXES.items():
        op.create_index(name, "events", list(columns))
    if bind.dialect.name == "sqlite" and _has_fts5(bind):
        for statement in FTS:
            bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in (
            "DROP TRIGGER IF EXISTS events_fts_insert",
            "DROP TRIGGER IF EXISTS events_fts_delete",
            "DROP TABLE IF EXISTS events_fts",
        ):
            bind.exec_driver_sql(statement)
    for name in INDEXES:
        op.drop_index(name, table_name="events")
    op.create_index("ix_events_ts", "events", ["ts"])
    op.create_index("ix_events_kind", "events", ["kind"])
    with op.batch_alter_table("events") as batch:
        batch.drop_column("address")
        batch.drop_column("agent")
