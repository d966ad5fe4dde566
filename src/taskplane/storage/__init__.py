"""Storage adapters: the SQL task store (SQLite and PostgreSQL, same code) and its schema migrations.

``bootstrap`` builds a store with ``create_task_store(url)`` after ``upgrade_database(url)``.
"""

from __future__ import annotations

from taskplane.storage.sql.migrate import upgrade_database
from taskplane.storage.sql.store import SqlTaskStore, create_task_store

__all__ = ["SqlTaskStore", "create_task_store", "upgrade_database"]
