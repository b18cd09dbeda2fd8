"""Alembic environment: the database URL comes from whatsdesk's settings."""

from alembic import context

from whatsdesk import models  # noqa: F401  (registers the tables)
from whatsdesk.config import Config
from whatsdesk.db import Base, UTCDateTime, get_engine

target_metadata = Base.metadata


def database_url() -> str:
    # Tests and tools may pass a URL explicitly; everything else follows DATABASE_URL.
    return context.config.attributes.get("database_url") or Config.from_env().database_url


def render_item(type_: str, obj: object, _autogen_context: object) -> str | bool:
    """Migrations name plain SQLAlchemy types, so they never import application code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        render_item=render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with get_engine(database_url()).connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch migrations rebuild SQLite tables (copy, drop, rename): with foreign keys
            # enforced, dropping a table with rows pointing at it fails, or cascades and
            # deletes them. Off during the migration (it only works outside a transaction),
            # and checked once it is done.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            render_item=render_item,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            if broken:
                raise RuntimeError(f"the migration left rows with broken references: {broken}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
