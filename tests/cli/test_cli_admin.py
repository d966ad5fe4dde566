"""``tenants``, ``resources``, ``reserve``, ``release``, ``reservations``, ``usage`` and placement flags of submit."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from typer.testing import Result

from tests.sdk.fakes import (
    FakeApi,
    problem,
    reservation_json,
    resources_report_json,
    task_json,
    tenant_json,
    usage_json,
)

Run = Callable[..., Result]


def sent(api: FakeApi) -> object:
    return json.loads(api.last.content)


# -- tenants ------------------------------------------------------------------------------------------------------


def test_tenants_create_sends_the_flags(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/admin/tenants", httpx.Response(201, json=tenant_json("team-a")))

    result = run(
        "tenants", "create", "team-a",
        "--cpu", "4", "--memory", "16Gi", "--max-pending", "100", "--gpu", "unlimited",
        "--weight", "2", "--pool", "default", "--pool", "gpu",
        "--priority-min", "-10", "--priority-max", "10", "--no-borrowing",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert sent(api) == {
        "name": "team-a",
        "quota": {"cpu": "4", "memory": "16Gi", "gpu": None, "max_pending": 100},
        "weight": 2.0,
        "pools": ["default", "gpu"],
        "priority_range": {"min": -10, "max": 10},
        "borrowing": False,
    }
    assert "team-a" in result.stdout and "pending 100" in result.stdout


def test_tenants_update_sends_only_what_changes(run: Run, api: FakeApi) -> None:
    api.on("PATCH", "/platform/admin/tenants/team-a", httpx.Response(200, json=tenant_json("team-a")))

    result = run("--json", "tenants", "update", "team-a", "--cpu", "unlimited", "--all-pools")

    assert result.exit_code == 0, result.output
    assert sent(api) == {"quota": {"cpu": None}, "pools": None}
    assert json.loads(result.stdout)["name"] == "team-a"


POLICY_FLAGS = [
    ("--allow-privileged", "allow_privileged"),
    ("--allow-host-network", "allow_host_network"),
    ("--allow-host-pid", "allow_host_pid"),
    ("--allow-host-mounts", "allow_host_mounts"),
    ("--allow-network", "allow_network"),
]


@pytest.mark.parametrize(("flag", "member"), POLICY_FLAGS)
@pytest.mark.parametrize("command", ["create", "update"])
def test_tenants_policy_flags_send_one_member(run: Run, api: FakeApi, command: str, flag: str, member: str) -> None:
    api.on("POST", "/platform/admin/tenants", httpx.Response(201, json=tenant_json("team-a")))
    api.on("PATCH", "/platform/admin/tenants/team-a", httpx.Response(200, json=tenant_json("team-a")))
    name = {"create": {"name": "team-a"}, "update": {}}[command]

    allowed = run("tenants", command, "team-a", flag)
    assert allowed.exit_code == 0, allowed.output
    assert sent(api) == {**name, "policy": {member: True}}

    refused = run("tenants", command, "team-a", "--no-" + flag.removeprefix("--"))
    assert refused.exit_code == 0, refused.output
    assert sent(api) == {**name, "policy": {member: False}}


def test_tenants_update_merges_policy_with_other_settings(run: Run, api: FakeApi) -> None:
    api.on("PATCH", "/platform/admin/tenants/team-a", httpx.Response(200, json=tenant_json("team-a")))

    result = run(
        "tenants", "update", "team-a", "--allow-network", "--allow-host-mounts", "--no-allow-privileged", "--cpu", "8"
    )

    assert result.exit_code == 0, result.output
    assert sent(api) == {
        "quota": {"cpu": "8"},
        "policy": {"allow_privileged": False, "allow_host_mounts": True, "allow_network": True},
    }


def test_tenants_restricted_resets_the_policy(run: Run, api: FakeApi) -> None:
    api.on("PATCH", "/platform/admin/tenants/team-a", httpx.Response(200, json=tenant_json("team-a")))

    result = run("tenants", "update", "team-a", "--restricted")

    assert result.exit_code == 0, result.output
    assert sent(api) == {"policy": None}


def test_tenants_without_policy_flags_send_no_policy(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/admin/tenants", httpx.Response(201, json=tenant_json("team-a")))

    result = run("tenants", "create", "team-a")

    assert result.exit_code == 0, result.output
    assert sent(api) == {"name": "team-a"}


@pytest.mark.parametrize(
    ("policy", "line"),
    [
        ({}, "none (restricted)"),
        ({"allow_network": True}, "allows network"),
        ({"allow_host_mounts": True, "allow_network": True}, "allows host mounts, network"),
        (
            {name: True for _, name in POLICY_FLAGS},
            "allows privileged, host network, host PID, host mounts, network",
        ),
    ],
)
def test_tenants_get_shows_the_policy(run: Run, api: FakeApi, policy: dict[str, bool], line: str) -> None:
    members = {name: policy.get(name, False) for _, name in POLICY_FLAGS}
    api.on("GET", "/platform/admin/tenants/team-a", httpx.Response(200, json=tenant_json("team-a", policy=members)))

    shown = run("tenants", "get", "team-a")

    assert shown.exit_code == 0, shown.output
    policy_lines = [
        row.removeprefix("Policy").strip() for row in shown.stdout.splitlines() if row.startswith("Policy ")
    ]
    assert policy_lines == [line]
    assert json.loads(run("tenants", "get", "--json", "team-a").stdout)["policy"] == members


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["tenants", "create", "x", "--cpu", "lots"], "--cpu"),
        (["tenants", "create", "x", "--max-running", "many"], "--max-running"),
        (["tenants", "update", "x", "--pool", "a", "--all-pools"], "--all-pools"),
        (["tenants", "update", "x"], "NAME"),
        (["tenants", "update", "x", "--restricted", "--allow-network"], "--restricted"),
        (["tenants", "create", "x", "--no-allow-pid"], "--no-allow-pid"),
    ],
)
def test_tenants_bad_flags_are_usage_errors(run: Run, api: FakeApi, args: list[str], flag: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert flag in result.stderr
    assert api.requests == []


def test_tenants_list_get_delete(run: Run, api: FakeApi) -> None:
    implicit = tenant_json("default", implicit=True, pools=None, quota={})
    api.on("GET", "/platform/admin/tenants", httpx.Response(200, json={"items": [implicit, tenant_json("team-a")]}))
    api.on("GET", "/platform/admin/tenants/team-a", httpx.Response(200, json=tenant_json("team-a")))
    api.on("DELETE", "/platform/admin/tenants/team-a", httpx.Response(204))
    api.on("DELETE", "/platform/admin/tenants/default", problem(409, "tenant_protected", "cannot delete default"))

    listed = run("tenants", "list")
    assert listed.exit_code == 0, listed.output
    header, first, second = listed.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "CPU", "MEMORY"]
    assert first.split()[:3] == ["default", "(implicit)", "-"]
    assert second.split()[:3] == ["team-a", "4", "16Gi"]

    shown = run("tenants", "get", "team-a")
    assert shown.exit_code == 0, shown.output
    assert "3 pending, 1 running" in shown.stdout

    assert run("tenants", "delete", "team-a").exit_code == 0
    refused = run("tenants", "delete", "default")
    assert refused.exit_code == 1
    assert "[tenant_protected]" in refused.stderr


# -- resources, reservations, usage ---------------------------------------------------------------------------------


def test_resources_table_and_json(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/resources", httpx.Response(200, json=resources_report_json()))

    result = run("resources")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["POOL", "NODE"]
    assert "sim-0" in lines[1] and "4 / 8" in lines[1]
    assert any(line.startswith("total") and "8 / 16" in line for line in lines)
    assert json.loads(run("resources", "--json").stdout) == resources_report_json()


def test_reserve_builds_the_request(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/resources/reserve", httpx.Response(201, json=reservation_json("rsv-1")))

    result = run(
        "reserve", "--tenant", "team-a", "--pool", "sim", "--cpu", "2", "--memory", "4Gi",
        "--extended", "example.com/fpga=1", "--count", "2", "--ttl", "1h", "--priority", "5",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert sent(api) == {
        "tenant": "team-a",
        "pool": "sim",
        "resources": {"cpu": "2", "memory": "4Gi", "extended": {"example.com/fpga": 1}},
        "count": 2,
        "ttl": "1h",
        "priority": 5,
    }
    assert "rsv-1" in result.stdout and "pending" in result.stdout


def test_reserve_refusals(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/resources/reserve", problem(422, "reservation_too_large", "pool sim holds 3 slots"))

    assert run("reserve", "--cpu", "1", "--ttl", "soon").exit_code == 2
    assert run("reserve", "--cpu", "1", "--count", "0", "--ttl", "1h").exit_code == 2
    assert api.requests == []
    result = run("reserve", "--cpu", "1", "--count", "9", "--ttl", "1h")
    assert result.exit_code == 1
    assert "[reservation_too_large]" in result.stderr


def test_release_and_reservations(run: Run, api: FakeApi) -> None:
    api.on("DELETE", "/platform/resources/rsv-1", httpx.Response(200, json=reservation_json("rsv-1", "released")))
    api.on("GET", "/platform/resources/rsv-1", httpx.Response(200, json=reservation_json("rsv-1", "active")))
    listing = {"items": [reservation_json("rsv-1", "active", nodes=["sim-0", "sim-0"])]}
    api.on("GET", "/platform/resources/reservations", httpx.Response(200, json=listing))

    released = run("release", "rsv-1")
    assert released.exit_code == 0, released.output
    assert released.stdout == "rsv-1 released\n"

    listed = run("reservations", "--live", "--tenant", "team-a")
    assert listed.exit_code == 0, listed.output
    assert api.last.url.params.multi_items() == [("tenant", "team-a"), ("live", "true")]
    row = listed.stdout.splitlines()[1].split()
    assert row[:6] == ["rsv-1", "team-a", "default", "active", "2", "cpu"]
    assert "sim-0" in listed.stdout

    shown = run("reservations", "rsv-1")
    assert shown.exit_code == 0 and "2 x cpu 2, memory 4Gi" in shown.stdout


def test_usage_table(run: Run, api: FakeApi) -> None:
    api.on("GET", "/platform/resources/usage", httpx.Response(200, json=usage_json()))

    result = run("usage", "--window", "1h")

    assert result.exit_code == 0, result.output
    assert api.last.url.params.multi_items() == [("window", "1h")]
    header, row = result.stdout.splitlines()[1:3]
    assert header.split()[:3] == ["TENANT", "POOL", "ATTEMPTS"]
    assert row.split() == ["team-a", "sim", "4", "2.00", "1.00", "0.00", "2", "1.00", "12.5"]
    assert run("usage", "--window", "eventually").exit_code == 2


# -- submit and get -------------------------------------------------------------------------------------------------


def test_submit_placement_flags(run: Run, api: FakeApi) -> None:
    api.on("POST", "/platform/tasks", httpx.Response(201, json=task_json("t-1")))

    result = run(
        "submit", "--pool", "sim", "--selector", "zone=a", "--selector", "disk=ssd", "--reservation", "rsv-1",
        "--gpu", "1", "--extended", "example.com/fpga=2", "--simulated-duration", "90s", "--", "true",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert sent(api) == {
        "command": ["true"],
        "resources": {"gpu": 1, "extended": {"example.com/fpga": 2}},
        "pool": "sim",
        "node_selector": {"zone": "a", "disk": "ssd"},
        "reservation": "rsv-1",
        "simulated_duration": "90s",
    }


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--extended", "example.com/fpga=two"], "--extended"),
        (["--extended", "example.com/fpga"], "--extended"),
        (["--selector", "zone"], "--selector"),
        (["--simulated-duration", "forever"], "--simulated-duration"),
    ],
)
def test_submit_bad_placement_flags(run: Run, api: FakeApi, args: list[str], flag: str) -> None:
    result = run("submit", *args, "--", "true")
    assert result.exit_code == 2, result.output
    assert flag in result.stderr
    assert api.requests == []


def test_get_shows_pool_reason_position_and_eta(run: Run, api: FakeApi) -> None:
    reason = {"code": "quota_exhausted", "message": "memory 3.5Gi of 4Gi used", "resource": "memory"}
    task = task_json(
        "t-1",
        pool="sim",
        node_selector={"zone": "a"},
        reservation="rsv-1",
        pending_reason=reason,
        queue_position=3,
        eta="2999-01-01T00:00:00Z",
    )
    api.on("GET", "/platform/tasks/t-1", httpx.Response(200, json=task))

    result = run("get", "t-1")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "quota_exhausted: memory 3.5Gi of 4Gi used" in out
    assert "Queue position   3" in out
    assert "Estimated start  2999-01-01 00:00:00Z (in" in out
    assert "Pool             sim" in out
    assert "Node selector    zone=a" in out
    assert "Reservation      rsv-1" in out
