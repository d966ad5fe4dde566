"""Submission checks: the new spec fields, who may submit where (tenant, pool, reservation, priority), limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from taskplane.domain.pool import Node, Pool
from taskplane.domain.reservation import Reservation, ReservationState
from taskplane.domain.resources import Resources
from taskplane.domain.tenant import Quota, Tenant, default_tenant
from taskplane.errors import InvalidRequestError, LimitExceededError, NotFoundError, UnschedulableError
from taskplane.services.specs import (
    SpecLimits,
    build_spec,
    check_pending_limits,
    default_pool,
    naming,
    parse_resources,
    resolve_access,
)
from taskplane.wire import ResourcesIn, TaskSubmit

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LIMITS = SpecLimits(default_resources=Resources(1000, 256 << 20), max_argv_bytes=1 << 16, max_env_bytes=1 << 16)


@dataclass(frozen=True)
class Counts:
    pending: int


@dataclass
class FakeDirectory:
    """What the engine would answer: tenants, pools, live reservations, pending counts."""

    tenants: dict[str, Tenant] = field(default_factory=lambda: {"default": default_tenant()})
    pools: dict[str, Pool] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)

    def tenant(self, name: str) -> Tenant | None:
        return self.tenants.get(name)

    def pool(self, name: str) -> Pool | None:
        return self.pools.get(name)

    def reservation(self, reservation_id: str) -> Reservation | None:
        return self.reservations.get(reservation_id)

    def pool_names(self) -> list[str]:
        return list(self.pools)

    def tenant_counts(self, name: str) -> Counts:
        return Counts(self.pending.get(name, 0))


def pool(name: str, cores: int = 4, executor: str = "simulated") -> Pool:
    return Pool(name, executor, nodes=(Node(f"{name}-0", name, Resources(cores * 1000, 8 << 30), 100),))


def reservation(rid: str, tenant: str, pool_name: str) -> Reservation:
    return Reservation(rid, tenant, pool_name, Resources(1000, 1 << 30), 2, ReservationState.ACTIVE, NOW, NOW)


@pytest.fixture
def directory() -> FakeDirectory:
    d = FakeDirectory()
    d.pools = {"default": pool("default"), "gpu": pool("gpu"), "batch": pool("batch")}
    d.tenants["team-a"] = Tenant("team-a", pools=("batch", "gpu"), priority_min=-10, priority_max=10)
    d.tenants["team-b"] = Tenant("team-b", quota=Quota(max_pending=3))
    d.reservations["r-a"] = reservation("r-a", "team-a", "gpu")
    d.reservations["r-b"] = reservation("r-b", "team-b", "default")
    return d


def spec_of(**fields: object):
    sub = TaskSubmit.model_validate({"command": ["true"], **fields})
    return build_spec(sub, LIMITS, NOW), sub.pool


# -- the new fields ---------------------------------------------------------------------------------------------


def test_new_fields_are_carried_into_the_spec() -> None:
    spec, _ = spec_of(
        pool="gpu",
        node_selector={"zone": "a", "disk": "ssd"},
        reservation="r-1",
        simulated_duration="90s",
        resources={"cpu": "500m", "gpu": 1, "extended": {"example.com/fpga": 2, "example.com/none": 0}},
    )

    assert spec.pool == "gpu"
    assert spec.node_selector == {"zone": "a", "disk": "ssd"}
    assert spec.reservation == "r-1"
    assert spec.simulated_duration == 90.0
    assert spec.resources == Resources(500, 256 << 20, 1, (("example.com/fpga", 2),))


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"resources": {"extended": {"cpu": 1}}}, "resources.extended"),
        ({"resources": {"extended": {"bad name!": 1}}}, "resources.extended"),
        ({"node_selector": {"bad key!": "x"}}, "node_selector"),
        ({"node_selector": {"zone": "x" * 300}}, "node_selector"),
        ({"pool": ""}, "pool"),
        ({"pool": " padded "}, "pool"),
        ({"reservation": "x" * 300}, "reservation"),
    ],
)
def test_malformed_new_fields_name_the_field(fields: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        spec_of(**fields)
    assert info.value.code == "invalid_field"
    assert info.value.extra["field"] == where


@pytest.mark.parametrize(
    "fields",
    [
        {"resources": {"extended": {"example.com/fpga": -1}}},
        {"resources": {"extended": {"example.com/fpga": 10**9}}},
        {"simulated_duration": 0},
        {"simulated_duration": "forever"},
    ],
)
def test_bad_amounts_and_durations_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        spec_of(**fields)


def test_parse_resources_defaults_only_what_is_missing() -> None:
    default = Resources(1000, 1 << 30)
    assert parse_resources(None, default) == default
    assert parse_resources(ResourcesIn(cpu=2), default) == Resources(2000, 1 << 30)


def test_naming_turns_a_refusal_into_invalid_field() -> None:
    with pytest.raises(InvalidRequestError) as info, naming("ttl"):
        raise InvalidRequestError("ttl must be greater than zero")
    assert (info.value.code, info.value.extra["field"]) == ("invalid_field", "ttl")


# -- access -------------------------------------------------------------------------------------------------------


def test_pool_defaults_to_the_tenants_first_pool(directory: FakeDirectory) -> None:
    spec, given = spec_of(tenant="team-a")
    assert resolve_access(spec, given, directory).pool == "batch"
    spec, given = spec_of()
    assert resolve_access(spec, given, directory).pool == "default"
    assert default_pool(directory.tenants["team-a"], directory) == "batch"


def test_a_reservation_gives_its_pool(directory: FakeDirectory) -> None:
    spec, given = spec_of(tenant="team-a", reservation="r-a")
    assert resolve_access(spec, given, directory).pool == "gpu"
    spec, given = spec_of(tenant="team-a", reservation="r-a", pool="gpu")
    assert resolve_access(spec, given, directory).pool == "gpu"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"tenant": "nobody"}, "tenant_not_found"),
        ({"pool": "nowhere"}, "pool_not_found"),
        ({"tenant": "team-a", "pool": "default"}, "pool_not_found"),  # exists, but not for team-a
        ({"reservation": "r-missing"}, "reservation_not_found"),
        ({"tenant": "team-a", "reservation": "r-b"}, "reservation_not_found"),  # another tenant's
        ({"tenant": "team-a", "reservation": "r-a", "pool": "batch"}, "reservation_not_found"),  # another pool
    ],
)
def test_what_the_tenant_may_not_use_looks_missing(
    directory: FakeDirectory, fields: dict[str, object], code: str
) -> None:
    spec, given = spec_of(**fields)
    with pytest.raises(NotFoundError) as info:
        resolve_access(spec, given, directory)
    assert info.value.code == code


def test_priority_outside_the_tenants_range(directory: FakeDirectory) -> None:
    spec, given = spec_of(tenant="team-a", priority=11)
    with pytest.raises(InvalidRequestError) as info:
        resolve_access(spec, given, directory)
    assert info.value.code == "priority_not_allowed"
    assert (info.value.extra["min"], info.value.extra["max"]) == (-10, 10)
    spec, given = spec_of(tenant="team-a", priority=-10)
    assert resolve_access(spec, given, directory).priority == -10


def test_a_request_larger_than_every_node_is_refused(directory: FakeDirectory) -> None:
    spec, given = spec_of(resources={"cpu": 64, "gpu": 8})
    with pytest.raises(UnschedulableError) as info:
        resolve_access(spec, given, directory)
    assert info.value.code == "unschedulable"
    assert info.value.extra["resource"] == "cpu,gpu"


def test_a_selector_no_node_matches_is_refused(directory: FakeDirectory) -> None:
    spec, given = spec_of(resources={"cpu": 1}, node_selector={"zone": "nowhere"})
    with pytest.raises(UnschedulableError):
        resolve_access(spec, given, directory)


def test_a_request_that_fits_a_node_but_not_now_is_accepted(directory: FakeDirectory) -> None:
    spec, given = spec_of(resources={"cpu": 4})  # the whole node: fits only when it is empty
    assert resolve_access(spec, given, directory).resources.millicpu == 4000


def test_without_a_default_pool_work_goes_to_the_first_configured_one() -> None:
    only = FakeDirectory(pools={"batch": pool("batch"), "gpu": pool("gpu")})
    spec, given = spec_of()
    assert resolve_access(spec, given, only).pool == "batch"


# -- pending limit ------------------------------------------------------------------------------------------------


def test_pending_limit_counts_the_request_and_work_in_flight(directory: FakeDirectory) -> None:
    directory.pending["team-b"] = 1
    check_pending_limits({"team-b": 2}, directory)
    with pytest.raises(LimitExceededError) as info:
        check_pending_limits({"team-b": 3}, directory)
    assert info.value.code == "pending_limit"
    assert (info.value.extra["limit"], info.value.extra["pending"]) == (3, 1)
    with pytest.raises(LimitExceededError):
        check_pending_limits({"team-b": 1}, directory, {"team-b": 2})


def test_no_pending_limit_without_max_pending(directory: FakeDirectory) -> None:
    directory.pending["default"] = 10**6
    check_pending_limits({"default": 1000}, directory)
