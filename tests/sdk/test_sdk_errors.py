"""Non-2xx responses and transport failures become the ``taskplane.errors`` classes."""

from __future__ import annotations

import httpx
import pytest

from taskplane.errors import (
    ConflictError,
    ForbiddenError,
    IdempotencyConflictError,
    InternalError,
    InvalidRequestError,
    InvalidTransitionError,
    MalformedRequestError,
    NotFoundError,
    PayloadTooLargeError,
    TaskplaneError,
    UnauthenticatedError,
    UnavailableError,
    UnschedulableError,
)
from taskplane.sdk import Client
from tests.sdk.fakes import FakeApi, problem


def client(api: FakeApi) -> Client:
    return Client("http://tp.test", transport=api.transport)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "malformed_request", MalformedRequestError),
        (422, "invalid_request", InvalidRequestError),
        (422, "unschedulable", UnschedulableError),
        (413, "payload_too_large", PayloadTooLargeError),
        (404, "not_found", NotFoundError),
        (409, "invalid_state", InvalidTransitionError),
        (409, "idempotency_key_reused", IdempotencyConflictError),
        (503, "unavailable", UnavailableError),
        (500, "internal", InternalError),
    ],
)
def test_problem_code_picks_the_class(api: FakeApi, status: int, code: str, expected: type[TaskplaneError]) -> None:
    api.on("GET", "/platform/tasks/t-1", problem(status, code, "it went wrong"))

    with pytest.raises(expected) as info:
        client(api).get("t-1")

    error = info.value
    assert type(error) is expected
    assert error.code == code
    assert error.detail == "it went wrong"
    assert str(error) == "it went wrong"
    assert error.status == status  # type: ignore[attr-defined]
    assert error.problem["code"] == code  # type: ignore[attr-defined]


def test_extension_members_are_kept(api: FakeApi) -> None:
    api.on(
        "PUT",
        "/platform/tasks/t-1/cancel",
        problem(409, "invalid_state", "task is already succeeded", state="succeeded"),
    )

    with pytest.raises(InvalidTransitionError) as info:
        client(api).cancel("t-1")

    assert info.value.extra == {"state": "succeeded"}


def test_field_errors_are_kept(api: FakeApi) -> None:
    errors = [{"loc": ["body", "resources", "cpu"], "msg": "not a CPU quantity"}]
    api.on("POST", "/platform/tasks", problem(422, "invalid_request", "invalid task", errors=errors))

    with pytest.raises(InvalidRequestError) as info:
        client(api).submit(command=["true"])

    assert info.value.extra["errors"] == errors


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidRequestError),
        (401, UnauthenticatedError),
        (403, ForbiddenError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, InvalidRequestError),
        (500, UnavailableError),
        (502, UnavailableError),
    ],
)
def test_unknown_or_missing_code_falls_back_on_status(
    api: FakeApi, status: int, expected: type[TaskplaneError]
) -> None:
    api.on("GET", "/platform/tasks/t-1", problem(status, "brand_new_code", "newer server"))

    with pytest.raises(expected) as info:
        client(api).get("t-1")

    assert type(info.value) is expected
    assert info.value.code == "brand_new_code"  # the server's code survives for callers that know it


def test_a_plain_text_error_names_status_and_url(api: FakeApi) -> None:
    api.on("GET", "/platform/tasks/t-1", httpx.Response(502, text="<html>Bad gateway</html>"))

    with pytest.raises(UnavailableError) as info:
        client(api).get("t-1")

    assert info.value.detail == "HTTP 502 Bad Gateway from http://tp.test/platform/tasks/t-1: <html>Bad gateway</html>"
    assert info.value.code == "unavailable"
    assert info.value.problem is None  # type: ignore[attr-defined]


def test_a_framework_style_json_error_uses_its_detail(api: FakeApi) -> None:
    api.on("GET", "/platform/nothing", httpx.Response(405, json={"detail": "Method Not Allowed"}))
    api.on("GET", "/platform/tasks/t-1", httpx.Response(405, json={"detail": "Method Not Allowed"}))

    with pytest.raises(InvalidRequestError, match="Method Not Allowed"):
        client(api).get("t-1")


def test_connection_refused_is_unavailable_naming_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    tp = Client("http://127.0.0.1:1", transport=httpx.MockTransport(refuse))

    with pytest.raises(UnavailableError) as info:
        tp.get("t-1")

    assert str(info.value) == "cannot reach the taskplane server at http://127.0.0.1:1: [Errno 111] Connection refused"
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.status is None  # type: ignore[attr-defined]


def test_a_timeout_is_unavailable() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(UnavailableError, match=r"timed out talking to the taskplane server at http://tp\.test"):
        Client("http://tp.test", transport=httpx.MockTransport(hang)).capacity()


def test_a_real_refused_connection() -> None:
    # Port 1 on localhost is closed on any sane machine; no mock involved.
    with pytest.raises(UnavailableError, match=r"http://127\.0\.0\.1:1"):
        Client("http://127.0.0.1:1", timeout=2).health()
