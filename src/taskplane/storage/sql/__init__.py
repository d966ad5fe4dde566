"""The SQL task store: SQLAlchemy Core over a sync engine, one transaction per call, in worker threads."""
