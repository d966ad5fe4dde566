"""External services for tests (PostgreSQL, Redis, podman...): skip when absent, fail when required.

``TASKPLANE_TEST_REQUIRE`` is a comma list of service names (``postgres,redis,podman``). A test needing a
service that is unreachable is skipped, unless the service is listed there: then it fails. CI lists what it
starts, so a broken service cannot turn into a green run of skipped tests.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def required_services() -> frozenset[str]:
    """The service names listed in ``TASKPLANE_TEST_REQUIRE``."""
    raw = os.environ.get("TASKPLANE_TEST_REQUIRE", "")
    return frozenset(part.strip().lower() for part in raw.split(",") if part.strip())


def require_service(name: str, reason: str) -> None:
    """Service ``name`` is unavailable for ``reason``: fail the test if it is required, else skip it."""
    if name.lower() in required_services():
        pytest.fail(f"{name} is required (TASKPLANE_TEST_REQUIRE) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"{name} unavailable: {reason} (set TASKPLANE_TEST_REQUIRE={name} to make this a failure)")


@functools.cache
def _postgres_problem(url: str) -> str | None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, connect_args={"connect_timeout": 3}, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect means "unavailable"
        return f"cannot connect to {engine.url.render_as_string(hide_password=True)}: {exc}"
    finally:
        engine.dispose()
    return None


def postgres_url() -> str:
    """The test PostgreSQL URL (``TASKPLANE_TEST_DATABASE_URL``), after checking it answers.

    Skips (or fails, when ``postgres`` is required) the calling test if it does not.
    """
    url = os.environ.get("TASKPLANE_TEST_DATABASE_URL", DEFAULT_POSTGRES_URL)
    problem = _postgres_problem(url)
    if problem is not None:
        require_service("postgres", problem)
    return url


@contextmanager
def scoped_schema(base: str, prefix: str) -> Iterator[str]:
    """A fresh, randomly named schema in the database at ``base``; yields a URL whose connections use it
    (``search_path``), then drops it. No pytest here: benchmarks use it too."""
    from sqlalchemy import create_engine, make_url, text

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def postgres_schema(prefix: str = "tp_test") -> Iterator[str]:
    """A fresh schema of the test PostgreSQL (skipping, or failing when required, if it is down).

    Tests running in parallel each get their own tables, sequences and ``alembic_version``.
    """
    with scoped_schema(postgres_url(), prefix) as url:
        yield url
