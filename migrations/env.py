"""Alembic environment: the database URL comes from pgrag's settings, never from a file."""

from alembic import context
from sqlalchemy import create_engine, pool

from pgrag.runtime.db import sqlalchemy_url

config = context.config


def run_migrations_online() -> None:
    url = config.attributes.get("url") or sqlalchemy_url()
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            version_table="alembic_version",
            version_table_schema="public",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
