"""Codec and cursor invariants, over generated values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from taskplane.domain.resources import Resources
from taskplane.domain.task import FailureClass, PendingReason, RetryPolicy, TaskSpec, Timeouts
from taskplane.storage.sql import codec
from taskplane.storage.sql.store import decode_cursor, encode_cursor
from taskplane.storage.sql.tables import from_micros, to_micros

offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
aware = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.one_of(st.just(UTC), offsets)
)
text = st.text(max_size=20)


@given(aware)
def test_timestamps_round_trip_exactly_through_microseconds(value: datetime) -> None:
    assert from_micros(to_micros(value)) == value


@given(aware, aware)
def test_microseconds_sort_like_the_instants(a: datetime, b: datetime) -> None:
    assert (to_micros(a) < to_micros(b)) == (a < b)


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_cursors_round_trip(seq: int) -> None:
    assert decode_cursor(encode_cursor(seq)) == seq


specs = st.builds(
    TaskSpec,
    command=st.lists(text, min_size=1, max_size=4).map(tuple),
    shell=st.booleans(),
    env=st.dictionaries(text, text, max_size=3),
    workdir=st.none() | text,
    image=st.none() | text,
    resources=st.builds(Resources, st.integers(0, 10**9), st.integers(0, 2**60), st.integers(0, 1024)),
    priority=st.integers(-(2**31), 2**31 - 1),
    tenant=text,
    labels=st.dictionaries(text, text, max_size=3),
    timeouts=st.builds(
        Timeouts,
        queue=st.none() | st.floats(0, 1e7),
        run=st.none() | st.floats(0, 1e7),
        deadline=st.none() | aware,
    ),
    retry=st.builds(
        RetryPolicy,
        max_attempts=st.integers(1, 100),
        backoff_initial=st.floats(0, 1e4),
        retry_on=st.frozensets(st.sampled_from(FailureClass)),
    ),
    name=st.none() | text,
)


@given(specs)
def test_specs_round_trip_through_json(spec: TaskSpec) -> None:
    assert codec.spec_from_json(codec.spec_to_json(spec)) == spec


@given(st.builds(PendingReason, code=text, message=text, resource=st.none() | text, until=st.none() | aware))
def test_pending_reasons_round_trip_through_json(reason: PendingReason) -> None:
    assert codec.reason_from_json(codec.reason_to_json(reason)) == reason


def test_old_spec_rows_read_with_defaults() -> None:
    assert codec.spec_from_json('{"command": ["true"]}') == TaskSpec(command=("true",))
