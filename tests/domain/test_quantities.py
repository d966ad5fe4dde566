import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskplane.domain import quantities as q
from taskplane.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("value", "millis"), [(2, 2000), (0.5, 500), ("500m", 500), ("1.5", 1500), ("0", 0), (0, 0), ("250m", 250)]
)
def test_cpu_forms(value, millis):
    assert q.parse_millicpu(value) == millis


@pytest.mark.parametrize("value", [-1, "-1", "abc", True, None, float("nan"), float("inf"), "1e3", 10**9, "0.0001"])
def test_cpu_rejects(value):
    with pytest.raises(InvalidRequestError):
        q.parse_millicpu(value)


@pytest.mark.parametrize(
    ("value", "amount"),
    [(1024, 1024), ("256Mi", 256 << 20), ("1G", 10**9), ("1.5Gi", 3 << 29), (1024.0, 1024), ("0", 0)],
)
def test_memory_forms(value, amount):
    assert q.parse_bytes(value) == amount


@pytest.mark.parametrize("value", [1e30, -1, "1e30", "12XB", True, 1.5, "2Ei", float("inf")])
def test_memory_rejects(value):
    with pytest.raises(InvalidRequestError):
        q.parse_bytes(value)


@pytest.mark.parametrize(
    ("value", "seconds"), [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5", 1.5)]
)
def test_duration_forms(value, seconds):
    assert q.parse_duration(value) == seconds


@pytest.mark.parametrize("value", [0, -1, "0s", "", "5x", "m5", True, "1h 30m", 10**9])
def test_duration_rejects(value):
    with pytest.raises(InvalidRequestError):
        q.parse_duration(value)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_bytes_roundtrip_through_format(amount):
    text = q.format_bytes(amount)
    if "." not in text:
        assert q.parse_bytes(text) == amount


@given(st.integers(min_value=0, max_value=10**7))
def test_millicpu_roundtrip_through_format(millis):
    assert q.parse_millicpu(q.format_millicpu(millis)) == millis
