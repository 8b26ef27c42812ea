"""The write store's tables (SQLAlchemy Core). The schema is created on start, so a new user
runs no migration step. Every id column is as wide as the id rule allows (``MAX_ID_LEN``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()
_BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

templates = sa.Table(
    "templates", metadata,
    sa.Column("template_id", sa.String(200), primary_key=True),
    sa.Column("max_number", sa.Integer, nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
)
meta = sa.Table(
    "meta", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
requests = sa.Table(
    "requests", metadata,
    sa.Column("seq", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(200), nullable=False, unique=True),
    sa.Column("template_id", sa.String(200), nullable=False),
    sa.Column("max_number", sa.Integer, nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Added with return requests and deadlines (added to an older store on start).
    sa.Column("kind", sa.String(16), nullable=False, server_default=sa.text("'acquire'")),
    sa.Column("deadline_at", sa.Float, index=True),
    sa.Column("details", sa.Text),
)
machines = sa.Table(
    "machines", metadata,
    sa.Column("machine_id", sa.String(200), primary_key=True),
    sa.Column("request_id", sa.String(200), sa.ForeignKey("requests.request_id"),
              nullable=False, index=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("observed_at", sa.Float, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Added with return requests and deadlines (added to an older store on start).
    sa.Column("name", sa.String(256), index=True),
    sa.Column("return_request_id", sa.String(200), index=True),
    sa.Column("late", sa.Boolean, nullable=False, server_default=sa.false()),
)
commands = sa.Table(
    "commands", metadata,
    sa.Column("command_id", sa.String(200), primary_key=True),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("request_id", sa.String(200)),
    sa.Column("machine_id", sa.String(200)),
    sa.Column("correlation_id", sa.String(200)),
    sa.Column("recorded_at", sa.Float, nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
)
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("ttl_s", sa.Integer, nullable=False),
    sa.Column("seq", _BigInt, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    # When the row's document was written to the read cache; kept a while after (a cache
    # that lost writes is healed from what was projected since: maintenance.heal_cache).
    sa.Column("projected_at", sa.Float, index=True),
)
history = sa.Table(
    "history", metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(200), nullable=False, index=True),
    sa.Column("command_id", sa.String(200), nullable=False),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("machine_id", sa.String(200)),
    sa.Column("version_after", sa.Integer),
    sa.Column("at", sa.Float, nullable=False),
)
dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("id", _BigInt, primary_key=True, autoincrement=True),
    sa.Column("command_id", sa.String(200), unique=True),
    sa.Column("task", sa.String(200)),
    sa.Column("queue", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("first_at", sa.Float, nullable=False),
    sa.Column("last_at", sa.Float, nullable=False),
)


def create_schema(engine: Engine) -> None:
    """Create missing tables; several workers (and a worker's pool processes) may start at
    once. On PostgreSQL they queue on an advisory lock, in a READ COMMITTED transaction: under
    the engine's REPEATABLE READ the snapshot is taken by the lock's own statement, before the
    wait, so the tables the lock's last holder made stayed unseen and were created again
    ("relation already exists": four processes started together, three failed)."""
    with engine.connect() as opened:
        conn = (opened.execution_options(isolation_level="READ COMMITTED")
                if engine.dialect.name == "postgresql" else opened)
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            metadata.create_all(conn, checkfirst=True)
            _add_missing_columns(conn)


def _add_missing_columns(conn: sa.Connection) -> None:
    """A store made by an older version lacks the columns added since: add them (each is
    nullable or has a default) and their indexes. No migration tool for a handful of
    additive columns."""
    inspector = sa.inspect(conn)
    dialect = conn.dialect
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in present]
        for column in missing:
            ddl = (f"ALTER TABLE {table.name} ADD COLUMN {column.name} "
                   f"{column.type.compile(dialect=dialect)}")
            default = column.server_default
            if isinstance(default, sa.DefaultClause) and isinstance(default.arg, sa.ClauseElement):
                ddl += f" DEFAULT {default.arg.compile(dialect=dialect)}"
                ddl += "" if column.nullable else " NOT NULL"
            conn.exec_driver_sql(ddl)
        if missing:
            for index in table.indexes:
                index.create(conn, checkfirst=True)
