"""The schema is made by migrations alone, and they agree with the models."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from whatsdesk.config import Config
from whatsdesk.db import Base, get_engine


def test_migrations_and_models_agree(config: Config) -> None:
    with get_engine(config.database_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrations_create_every_table(config: Config) -> None:
    tables = set(inspect(get_engine(config.database_url)).get_table_names())
    assert set(Base.metadata.tables) <= tables
