"""Table definitions used by queries. Migrations in ``migrations/versions``
create and evolve the same tables; this module must match their head."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Ids are never handed out twice (SQLite AUTOINCREMENT; PostgreSQL's
# sequence): folders, caches and rows keyed by a deleted account's id must
# never come to belong to a new one.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("pw_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created", Float, nullable=False),
    Column("quota", BigInteger, nullable=False, default=0),  # bytes; 0: no quota
    # active; pending (registered, waits for an admin); refused (migration 0011)
    Column("state", String(16), nullable=False, server_default="active", index=True),
    sqlite_autoincrement=True,
)

# Application names hosts announce (``freight hub --app-approval``): the
# first announcement of an unknown name records it pending; an admin
# approves or refuses it (migration 0011).
apps = Table(
    "apps",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("state", String(16), nullable=False, index=True),  # pending|approved|refused
    Column("requested_by", String(64), nullable=False),  # the account that announced it first
    Column("requested", Float, nullable=False),
    Column("decided_by", String(64), nullable=False, server_default=""),
    Column("decided", Float, nullable=False, server_default="0"),
)

# Logins. ``key``: the identity key registered through this login (a
# device's), or an agent's login key; removing the key ends the login.
tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("key", String(64), nullable=False, default=""),
)

streams = Table(
    "streams",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("sid", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime", Float, nullable=False),
    Column("checkpoint", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    # The node receiving it, and until when that node holds it (renewed by
    # the node's heartbeat): another node takes it over only once it lapsed.
    Column("owner", String(64), nullable=False, default="", server_default=""),
    Column("lease", Float, nullable=False, default=0.0, server_default="0"),
)

files = Table(
    "files",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("name", Text, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("mtime", Float, nullable=False),
    Column("created", Float, nullable=False),
    Column("sid", String(64), nullable=False, server_default=""),
    Index("ix_files_digest", "digest"),  # a bucket's sweep: which digests are named
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("detail", Text, nullable=False),  # JSON
    # Taken from the detail when written (see eventcols), to filter on.
    Column("agent", String(64), nullable=False, server_default=""),
    Column("address", String(128), nullable=False, server_default=""),
    # Each filter in time order, and each sort (migration 0010); on SQLite
    # also events_fts, a full-text index over kind, actor and detail.
    Index("ix_events_ts_id", "ts", "id"),
    Index("ix_events_kind_ts", "kind", "ts", "id"),
    Index("ix_events_actor_ts", "actor", "ts", "id"),
    Index("ix_events_agent_ts", "agent", "ts", "id"),
    Index("ix_events_address_ts", "address", "ts", "id"),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Public Ed25519 identity keys of accounts: one per device that logged in
# (at most MAX_IDENTITY_KEYS), or an agent's one login key.
identity_keys = Table(
    "identity_keys",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("created", Float, nullable=False),
)

# One-time codes of `freight send`: the nameplate is the public number in
# front of the code; the words never reach the hub.
codes = Table(
    "codes",
    metadata,
    Column("nameplate", String(12), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("failures", Integer, nullable=False, default=0),
    # The claim that linked last: only its claimant may rejoin it, with this id.
    Column("claim_cid", String(64), nullable=True),
    Column("claimant_id", Integer, nullable=True),
    # 1 once a transfer under it finished: no longer counted as open.
    Column("finished", Integer, nullable=False, default=0, server_default="0"),
)

# One-time enrolment tokens for agents (hashed, like login tokens).
enrol_tokens = Table(
    "enrol_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

# What the hub knows of each enrolled agent (an account with role "agent").
agents = Table(
    "agents",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("enrolled", Float, nullable=False),
    Column("last_seen", Float, nullable=False, default=0.0),
    Column("version", String(64), nullable=False, default=""),
    Column("address", String(128), nullable=False, default=""),
    Column("cap", BigInteger, nullable=False, default=0),  # bytes/s, 0 = no cap
    # The cluster node its command channel is attached to ("": none).
    Column("node", String(64), nullable=False, default="", server_default=""),
)

# Durable commands for agents: queued → delivered → acked → done/failed, or
# cancelled by an admin while open.
commands = Table(
    "commands",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("agent_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("args", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("result", Text, nullable=False, default="null"),
    Column("requested_by", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("deliveries", Integer, nullable=False, default=0),  # times handed to the agent
)

# --- collection ---------------------------------------------------------------

policies = Table(
    "policies",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("agents", Text, nullable=False),  # glob on agent names
    Column("include", Text, nullable=False),  # JSON list of globs
    Column("exclude", Text, nullable=False),
    Column("max_size", BigInteger, nullable=False),
    Column("every", Float, nullable=False),  # seconds between scans
    Column("created", Float, nullable=False),
)

# Which agent holds which content where (one row per agent and path).
catalogue = Table(
    "catalogue",
    metadata,
    Column("agent_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("policy", String(64), nullable=False),
    Column("digest", String(64), nullable=False, index=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime", Float, nullable=False),
    Column("seen", Float, nullable=False),
)

# Content the hub holds (stored) or wants (a request is open).
content = Table(
    "content",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("state", String(16), nullable=False, index=True),  # wanted|issued|stored|failed
    Column("source", Integer, nullable=False, default=0),  # agent asked to upload it
    Column("command_id", Integer, nullable=False, default=0),
    Column("issued", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("received", BigInteger, nullable=False, default=0),  # bytes that crossed
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
)

# --- links --------------------------------------------------------------------

# Links to a stored file (``freight share``, by-reference jobs): the token
# is kept hashed only; the link serves the file only while its digest is
# the one it was made for. ``to_id``: the one account that may use it (or
# none: the link is the capability).
links = Table(
    "links",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("to_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("uses", Integer, nullable=False),  # whole deliveries allowed
    Column("used", Integer, nullable=False, default=0),  # whole deliveries made
    Column("served", BigInteger, nullable=False, default=0),  # bytes sent, ranges included
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False, index=True),
)

# --- nodes ----------------------------------------------------------------------

# The hub nodes sharing this database, each with its last heartbeat.
nodes = Table(
    "nodes",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("url", Text, nullable=False),  # where clients reach it
    Column("host", String(255), nullable=False),  # the machine and process
    Column("pid", Integer, nullable=False),
    Column("incarnation", String(32), nullable=False),  # one per start
    Column("started", Float, nullable=False),
    Column("seen", Float, nullable=False),  # its last heartbeat
    Column("clients", Integer, nullable=False, default=0, server_default="0"),
    Column("transfers", Integer, nullable=False, default=0, server_default="0"),
    Column("draining", Integer, nullable=False, default=0, server_default="0"),
    # It keeps a database session of its own (freight.store.watch).
    Column("watched", Integer, nullable=False, default=0, server_default="0"),
)

# Which node holds each listener (``l:USER/APP``), code offer (``o:NAMEPLATE``)
# and relayed connection (``c:CID``), so a request for one that reaches
# another node is sent to the node that holds it.
relay_places = Table(
    "relay_places",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("node", String(64), nullable=False, index=True),
    Column("since", Float, nullable=False),
)
