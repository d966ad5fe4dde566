"""Codec and cursor invariants, over generated values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given
from hypothesis import strategies as st

from taskplane.domain.audit import AuditEntry, compute_chain, verify_chain
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import Resources, extended_of
from taskplane.domain.task import (
    FailureClass,
    HostAccess,
    Mount,
    PendingReason,
    RetryPolicy,
    Task,
    TaskSpec,
    TaskState,
    Timeouts,
)
from taskplane.domain.tenant import Quota, Tenant, TenantPolicy
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
    resources=st.builds(
        Resources,
        st.integers(0, 10**9),
        st.integers(0, 2**60),
        st.integers(0, 1024),
        st.dictionaries(text, st.integers(-5, 10**6), max_size=3).map(extended_of),
    ),
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
    pool=text,
    node_selector=st.dictionaries(text, text, max_size=3),
    reservation=st.none() | text,
    simulated_duration=st.none() | st.floats(0, 1e7),
    host=st.builds(
        HostAccess,
        privileged=st.booleans(),
        host_network=st.booleans(),
        host_pid=st.booleans(),
        network=st.booleans(),
        mounts=st.lists(st.builds(Mount, text, text, st.booleans()), max_size=3).map(tuple),
        read_only_root=st.booleans(),
        user=st.none() | text,
    ),
    owner=st.none() | text,
)


@given(specs)
def test_specs_round_trip_through_json(spec: TaskSpec) -> None:
    assert codec.spec_from_json(codec.spec_to_json(spec)) == spec


@given(st.builds(PendingReason, code=text, message=text, resource=st.none() | text, until=st.none() | aware))
def test_pending_reasons_round_trip_through_json(reason: PendingReason) -> None:
    assert codec.reason_from_json(codec.reason_to_json(reason)) == reason


def test_old_spec_rows_read_with_defaults() -> None:
    assert codec.spec_from_json('{"command": ["true"]}') == TaskSpec(command=("true",))
    old = '{"command": ["true"], "resources": {"millicpu": 5, "memory": 6, "gpu": 7}}'
    assert codec.spec_from_json(old) == TaskSpec(command=("true",), resources=Resources(5, 6, 7))


def test_host_access_and_owner_are_stored_only_when_set() -> None:
    plain = orjson.loads(codec.spec_to_json(TaskSpec(command=("true",))))
    asking = TaskSpec(command=("true",), host=HostAccess(network=True, mounts=(Mount("/a", "/b"),)), owner="key:k")

    assert "host" not in plain and "owner" not in plain
    assert orjson.loads(codec.spec_to_json(asking))["host"] == {
        "network": True,
        "mounts": [{"source": "/a", "target": "/b", "read_only": True}],
    }


def test_the_default_tenant_policy_is_stored_as_null() -> None:
    assert codec.policy_to_json(TenantPolicy()) is None
    assert codec.policy_from_json(None) == TenantPolicy()
    assert codec.policy_from_json('{"allow_network": true}') == TenantPolicy(allow_network=True)


def test_extended_resources_are_stored_only_when_present() -> None:
    assert "extended" not in codec.resources_to_doc(Resources(1, 2, 3))
    assert codec.resources_to_doc(Resources(extended=(("a/b", 2),)))["extended"] == {"a/b": 2}


def test_task_rows_copy_pool_and_requests_into_columns() -> None:
    spec = TaskSpec(command=("x",), pool="gpu", resources=Resources(1500, 2048, 2))
    row = codec.task_insert_row(Task("t", spec, TaskState.PENDING, from_micros(0), from_micros(0)), 1, None)

    assert (row["pool"], row["millicpu"], row["memory"], row["gpu"]) == ("gpu", 1500, 2048, 2)


optional_int = st.none() | st.integers(0, 2**62)
tenants = st.builds(
    Tenant,
    name=text,
    quota=st.builds(Quota, optional_int, optional_int, optional_int, optional_int, optional_int),
    weight=st.floats(0.001, 1e6),
    pools=st.none() | st.lists(text, max_size=3).map(tuple),
    priority_min=st.integers(-1000, 0),
    priority_max=st.integers(0, 1000),
    borrowing=st.booleans(),
    policy=st.builds(TenantPolicy, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    created_at=aware,
    updated_at=aware,
)


@given(tenants)
def test_tenants_round_trip_through_rows(tenant: Tenant) -> None:
    row = codec.tenant_row(tenant)
    assert codec.tenant_from_row([row[name] for name in codec.TENANT_FIELDS]) == tenant


reservations = st.builds(
    Reservation,
    id=text,
    tenant=text,
    pool=text,
    resources=specs.map(lambda spec: spec.resources),
    count=st.integers(1, 1000),
    state=st.sampled_from(ReservationState),
    created_at=aware,
    updated_at=aware,
    priority=st.integers(-1000, 1000),
    duration=st.none() | st.floats(0, 1e7),
    expires_at=st.none() | aware,
    activated_at=st.none() | aware,
    ended_at=st.none() | aware,
    nodes=st.lists(text, max_size=4).map(tuple),
    seq=st.integers(1, 2**62),
    message=st.none() | text,
)


@given(reservations)
def test_reservations_round_trip_through_rows(reservation: Reservation) -> None:
    row = codec.reservation_row(reservation, reservation.seq)
    assert codec.reservation_from_row([row[name] for name in codec.RESERVATION_FIELDS]) == reservation


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
audit_entries = st.builds(
    AuditEntry,
    at=aware,
    request_id=text,
    principal=text,
    tenant=st.none() | text,
    action=text,
    resource=text,
    outcome=text,
    status=st.none() | st.integers(100, 599),
    source=text,
    detail=st.dictionaries(text, json_values | aware, max_size=4),
)


@given(st.lists(audit_entries, min_size=1, max_size=4))
def test_audit_records_read_back_verify(entries: list[AuditEntry]) -> None:
    written = compute_chain(0, "0" * 64, entries)
    read = [codec.audit_from_row([codec.audit_row(r)[name] for name in codec.AUDIT_FIELDS]) for r in written]

    assert [r.hash for r in read] == [r.hash for r in written]
    assert verify_chain(read, None) == (len(entries), None)
