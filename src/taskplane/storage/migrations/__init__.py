"""Alembic migrations of the SQL schema, run in code by ``taskplane.storage.sql.migrate.upgrade_database``."""
