"""Fixtures of the SDK tests."""

from __future__ import annotations

import pytest

from tests.sdk.fakes import FakeApi


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKPLANE_URL", raising=False)
    monkeypatch.delenv("TASKPLANE_TOKEN", raising=False)
