"""Alembic environment for pgseal's migration fixture.

The connection comes only from the libpq environment variables PGHOST,
PGPORT, PGUSER, PGDATABASE and (optionally) PGPASSWORD.  A PGHOST starting
with "/" is a unix-socket directory and goes into the `host` query parameter.
Offline mode (`alembic upgrade head --sql`) is supported.
"""
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import URL

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = None  # revisions are hand-written; no autogenerate

# One transaction per revision (set in alembic.ini; defaults to true).
TRANSACTION_PER_MIGRATION = (
    config.get_main_option("transaction_per_migration", "true").strip().lower()
    in ("1", "true", "yes", "on")
)


def build_url() -> URL:
    host = os.environ.get("PGHOST", "")
    port = os.environ.get("PGPORT")
    common = dict(
        drivername="postgresql+psycopg",
        username=os.environ.get("PGUSER"),
        password=os.environ.get("PGPASSWORD") or None,
        database=os.environ.get("PGDATABASE"),
    )
    if host.startswith("/"):
        query = {"host": host}
        if port:
            query["port"] = port
        return URL.create(query=query, **common)
    return URL.create(host=host or None, port=int(port) if port else None, **common)


def run_migrations_offline() -> None:
    context.configure(
        url=build_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=TRANSACTION_PER_MIGRATION,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(
        build_url(),
        poolclass=pool.NullPool,
        # May run through PgBouncer in transaction pooling mode.
        connect_args={"prepare_threshold": None},
    )
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=TRANSACTION_PER_MIGRATION,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
