"""The exit code ``submit --wait`` ends with, for every way a task can finish."""

from __future__ import annotations

from typing import Any

import pytest

from taskplane.cli.exit_codes import exit_code_for
from taskplane.wire import TaskOut
from tests.sdk.fakes import task_json


def attempt(**fields: Any) -> dict[str, Any]:
    return {"number": 1, "state": "failed", "node": "n", "created_at": "2024-05-01T12:00:00Z", **fields}


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"state": "succeeded", "exit_code": 0}, 0),
        ({"state": "failed", "exit_code": 1}, 1),
        ({"state": "failed", "exit_code": 255}, 255),
        ({"state": "failed", "exit_code": 0}, 1),  # failed is never 0, whatever the process said
        ({"state": "failed", "exit_code": -9}, 137),
        ({"state": "failed", "attempts": [attempt(signal=11)]}, 139),
        ({"state": "failed", "attempts": [attempt()]}, 1),
        ({"state": "failed"}, 1),
        ({"state": "failed", "exit_code": 300}, 1),
        ({"state": "timed_out", "exit_code": None}, 124),
        ({"state": "cancelled"}, 130),
    ],
)
def test_exit_code_for(fields: dict[str, Any], code: int) -> None:
    assert exit_code_for(TaskOut.model_validate(task_json(**fields))) == code
